"""Distillation (glae.distill, ``glae teach``, ``stages.N.distill_from``): the teacher's distribution
reaches the right face, a wrong file is refused before training, and the loss gains exactly the
weighted KL divergence towards the teacher; the epoch's per-face σ (``data.use_label_std``) too."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from glae.checkpoint import load_model
from glae.cli import main
from glae.config import load_config
from glae.data import AgeSample, DatasetError
from glae.distill import save_teacher_targets, teacher_targets_for
from glae.engine import EpochSettings, train_one_epoch
from glae.losses import compute_loss
from glae.models.glae import AgeModel, ModelConfig


def _samples(root: Path, names: list[str]) -> list[AgeSample]:
    return [AgeSample(path=root / name, age=30.0) for name in names]


def test_each_face_gets_its_own_row_whatever_the_files_order(tmp_path: Path) -> None:
    probabilities = torch.eye(3)  # row i is all mass on age i: which row a face got is visible
    save_teacher_targets(tmp_path / "t.safetensors", ["b.jpg", "sub/a.jpg", "c.jpg"], probabilities, ["m1", "m2"], "")
    targets = teacher_targets_for(tmp_path / "t.safetensors", _samples(tmp_path, ["sub/a.jpg", "c.jpg", "b.jpg"]), tmp_path, 3)
    assert targets.argmax(1).tolist() == [1, 2, 0]


def test_a_file_made_for_other_faces_or_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_teacher_targets(path, ["a.jpg", "b.jpg"], torch.full((2, 4), 0.25), ["m"], "")
    with pytest.raises(DatasetError, match="no teacher distribution for 1 training images, e.g. c.jpg"):
        teacher_targets_for(path, _samples(tmp_path, ["a.jpg", "c.jpg"]), tmp_path, 4)
    with pytest.raises(DatasetError, match="4 age classes, the model has 117"):
        teacher_targets_for(path, _samples(tmp_path, ["a.jpg"]), tmp_path, 117)


def test_a_file_not_written_by_glae_teach_is_refused(tmp_path: Path, model_file: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    for path in (garbage, model_file, tmp_path / "missing.safetensors"):
        with pytest.raises(DatasetError, match="teacher-targets file"):
            teacher_targets_for(path, _samples(tmp_path, ["a.jpg"]), tmp_path, 117)


@pytest.mark.parametrize("names, probabilities", [
    ('["a.jpg", "b.jpg"]', torch.full((1, 4), 0.25)),  # fewer rows than names
    ('["a.jpg"]', torch.full((4,), 0.25)),  # not one row per face
    ('{"a.jpg": 0}', torch.full((1, 4), 0.25)),  # names not a list
    ("[\"a.jpg\"", torch.full((1, 4), 0.25)),  # names not JSON
])
def test_a_damaged_teach_file_is_refused_in_one_line(tmp_path: Path, names: str, probabilities: torch.Tensor) -> None:
    """A file with glae teach's tag whose header and tensor disagree: a clear error, not an IndexError mid-training."""
    from safetensors.torch import save_file

    path = tmp_path / "damaged.safetensors"
    save_file({"probabilities": probabilities}, str(path), metadata={"format": "glae-teacher-targets/1", "names": names, "members": "[]"})
    with pytest.raises(DatasetError, match="damaged teacher-targets file"):
        teacher_targets_for(path, _samples(tmp_path, ["a.jpg"]), tmp_path, 4)


def test_distill_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"stages.0.distill_weight must be > 0"):
        load_config(None, ["stages.0.distill_weight=0"])


class _Logits(nn.Module):
    """Fixed logits for every image: the loss of a batch is known by hand."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, images: torch.Tensor, head: str) -> dict[str, torch.Tensor]:
        return {"logits": self.logits.expand(len(images), -1)}

    def log_probabilities(self, outputs: dict[str, torch.Tensor], head: str) -> torch.Tensor:
        return outputs["logits"].log_softmax(-1)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_a_distilling_batch_adds_the_weighted_kl_to_the_teacher(weight: float) -> None:
    classes = 5
    logits = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0])
    ages = torch.tensor([2.0, 3.0])
    teacher = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    settings = EpochSettings(head="vanilla", loss="base", sigma=1.0, use_label_std=False, device=torch.device("cpu"),
                             amp=False, channels_last=False, max_steps=1, description="", show_progress=False,
                             distill_weight=weight)

    def epoch_loss(*extra: torch.Tensor) -> float:
        model = _Logits(logits.clone())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        data = TensorDataset(torch.zeros(2, 3, 4, 4), ages, torch.full((2,), math.nan), *extra)
        return train_one_epoch(model, DataLoader(data, batch_size=2), optimizer, scheduler, settings)["loss"]

    p = torch.softmax(logits, 0)
    by_hand = [sum(t * math.log(t / q) for t, q in zip(row.tolist(), p.tolist()) if t > 0) for row in teacher]
    base = compute_loss("base", {"logits": logits.expand(2, classes)}, ages, 1.0).item()
    assert epoch_loss() == pytest.approx(base)
    assert epoch_loss(teacher) == pytest.approx(base + weight * sum(by_hand) / 2)


def test_use_label_std_trains_each_face_with_its_own_sigma_and_falls_back_to_sigma() -> None:
    """stds [2, nan, 0]: face 0 gets sigma 2, faces 1 and 2 (unknown, degenerate) the configured 1."""
    logits = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0])
    ages = torch.tensor([1.0, 2.0, 3.0])
    stds = torch.tensor([2.0, math.nan, 0.0])

    def epoch_loss(use_label_std: bool) -> float:
        settings = EpochSettings(head="vanilla", loss="base", sigma=1.0, use_label_std=use_label_std, device=torch.device("cpu"),
                                 amp=False, channels_last=False, max_steps=1, description="", show_progress=False)
        model = _Logits(logits.clone())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        data = TensorDataset(torch.zeros(3, 3, 4, 4), ages, stds)
        return train_one_epoch(model, DataLoader(data, batch_size=3), optimizer, scheduler, settings)["loss"]

    outputs = {"logits": logits.expand(3, -1)}
    per_face = compute_loss("base", outputs, ages, torch.tensor([2.0, 1.0, 1.0])).item()
    plain = compute_loss("base", outputs, ages, 1.0).item()
    assert per_face != pytest.approx(plain)
    assert epoch_loss(True) == pytest.approx(per_face)
    assert epoch_loss(False) == pytest.approx(plain)


def test_a_head_whose_scores_are_no_softmax_distills_through_its_own_distribution() -> None:
    """The ordinal head gives K rank scores, not K+1 logits: the KL must use its age distribution."""
    torch.manual_seed(0)
    model = AgeModel(ModelConfig(backbone="resnet18", head="ordinal", max_age=4, input_size=32, pretrained=False)).train()
    images, ages = torch.randn(2, 3, 32, 32), torch.tensor([1.0, 3.0])
    teacher = torch.tensor([[0.1, 0.6, 0.3, 0.0, 0.0], [0.0, 0.0, 0.2, 0.5, 0.3]])
    settings = EpochSettings(head="vanilla", loss="corn", sigma=1.0, use_label_std=False, device=torch.device("cpu"),
                             amp=False, channels_last=False, max_steps=1, description="", show_progress=False,
                             distill_weight=1.0)
    with torch.no_grad():  # in training mode, as the epoch runs it: BatchNorm uses the batch's statistics
        outputs = model(images, head="vanilla")
        p = model.probabilities(outputs)
    by_hand = [sum(t * math.log(t / q) for t, q in zip(row.tolist(), probs.tolist()) if t > 0) for row, probs in zip(teacher, p)]
    corn = compute_loss("corn", outputs, ages, 1.0).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    data = TensorDataset(images, ages, torch.full((2,), math.nan), teacher)
    loss = train_one_epoch(model, DataLoader(data, batch_size=2), optimizer, scheduler, settings)["loss"]
    assert loss == pytest.approx(corn + sum(by_hand) / 2, rel=1e-5)


@pytest.mark.slow
def test_teach_then_train_a_student_on_its_targets(utkface: Path, tmp_path: Path, overrides) -> None:
    """The whole path a user takes: train a teacher, ``glae teach`` its distributions of the
    run's training faces, train a student with ``distill_from``; a rerun of teach replaces its
    own file but never another kind of file."""
    args = ["train", "--data", str(utkface), "--no-progress"]
    teacher_run = tmp_path / "teacher"
    assert main([*args, "--out", str(teacher_run), *overrides("stage2.epochs=0")]) == 0
    targets = tmp_path / "targets.safetensors"
    teach = ["teach", str(teacher_run / "model.safetensors"), "--data", str(utkface),
             "--split", str(teacher_run / "split.json"), "--workers", "0"]
    assert main([*teach, "--out", str(targets)]) == 0
    assert main([*teach, "--out", str(targets)]) == 0
    config_text = (teacher_run / "config.yaml").read_text()
    assert main([*teach, "--out", str(teacher_run / "config.yaml")]) == 2
    assert (teacher_run / "config.yaml").read_text() == config_text

    student_run = tmp_path / "student"  # the same settings give the same seeded split
    assert main([*args, "--out", str(student_run), *overrides(f"stage1.distill_from={targets}")]) == 0
    _, info = load_model(student_run / "model.safetensors")
    assert info["balanced_trained"]

    other_faces = tmp_path / "other"
    assert main([*args, "--out", str(other_faces), *overrides("data.limit=80", f"stage1.distill_from={targets}")]) == 2


def test_held_out_teach_labels_each_face_only_with_models_that_never_trained_on_it(
        utkface: Path, tmp_path: Path, model_file: Path, capsys) -> None:
    """``glae teach --held-out``: a face's target is the mean of exactly the models whose run
    never trained on it (their split.json), and a face that every model saw is refused."""
    import json
    import shutil

    from safetensors.torch import load_file

    from glae.checkpoint import save_model
    from glae.models.glae import AgeModel

    faces = sorted(path.name for path in utkface.iterdir())[:4]
    first, _ = load_model(model_file)
    torch.manual_seed(1)
    runs = {"a": faces[1:2], "b": faces[0:2]}  # the faces each run trained on
    for name, trained_on in runs.items():
        (tmp_path / name).mkdir()
        if name == "a":
            shutil.copy(model_file, tmp_path / name / "model.safetensors")
        else:
            save_model(tmp_path / name / "model.safetensors", AgeModel(first.config), {"balanced_trained": True})
        (tmp_path / name / "split.json").write_text(json.dumps({"train": trained_on, "val": [], "test": []}))

    def teach(models: list[str], student_train: list[str], *extra: str, test: list[str] | None = None) -> dict[str, torch.Tensor] | int:
        """Run glae teach; a member is a run's name or the path of an earlier teach file."""
        split = tmp_path / "student.json"
        split.write_text(json.dumps({"train": student_train, "val": [], "test": test or []}))
        out = tmp_path / f"targets_{len(list(tmp_path.glob('targets_*')))}.safetensors"
        command = ["teach", *(m if m.endswith(".safetensors") else str(tmp_path / m / "model.safetensors") for m in models),
                   "--data", str(utkface), "--split", str(split), "--workers", "0", "--out", str(out), *extra]
        code = main(command)
        return {**load_file(str(out)), "file": out} if code == 0 else code  # type: ignore[dict-item]

    student = [faces[0], faces[2], faces[3]]  # 0: unseen by a only; 2 and 3: unseen by both
    alone = {m: teach([m], student) for m in runs}
    capsys.readouterr()
    held_out = teach(["a", "b"], student, "--held-out")
    assert "the 2 teachers, each face by the models that never trained on it, for 3 of 3 training faces" in capsys.readouterr().out
    assert isinstance(held_out, dict) and all(isinstance(t, dict) for t in alone.values())
    a, b = (alone[m]["probabilities"] for m in ("a", "b"))  # type: ignore[index]
    got = held_out["probabilities"]
    assert not torch.allclose(a[0], b[0], atol=1e-4)  # the two models tell apart which one labelled a face
    torch.testing.assert_close(got[0], a[0])
    torch.testing.assert_close(got[1:], (a[1:] + b[1:]) / 2)

    assert teach(["a", "b"], [faces[1], faces[2]], "--held-out") == 2  # faces[1]: both trained on it
    split = tmp_path / "student.json"
    for extra in ((), ("--held-out",)):  # a teacher that trained on a student's test face would leak its label
        out = tmp_path / f"leak{len(extra)}.safetensors"
        split.write_text(json.dumps({"train": [faces[2], faces[3]], "val": [], "test": [faces[0]]}))
        command = ["teach", str(tmp_path / "b" / "model.safetensors"), "--data", str(utkface), "--split", str(split),
                   "--workers", "0", "--out", str(out), *extra]
        assert main(command) == 2 and not out.exists()
        assert f"trained on 1 of the student's val/test faces, e.g. {faces[0]}" in capsys.readouterr().err

    # Each fold's held-out labels on their own (--partial), merged later without the models, give the same targets.
    assert teach(["b"], student, "--held-out") == 2  # faces[0]: b trained on it, and no other teacher
    folds = [teach([m], student, "--held-out", "--partial") for m in ("a", "b")]
    assert isinstance(folds[0], dict) and isinstance(folds[1], dict)
    assert len(folds[0]["probabilities"]) == 3 and len(folds[1]["probabilities"]) == 2  # b labels faces 2 and 3 only
    merged = teach([str(fold["file"]) for fold in folds], student)
    assert isinstance(merged, dict)
    torch.testing.assert_close(merged["probabilities"], got)
    # A fold file checked against other val/test faces may come from a model that trained on this student's.
    other = teach(["a"], student[1:], "--held-out", "--partial", test=[faces[0]])
    assert isinstance(other, dict) and teach([str(other["file"])], student[1:]) == 2
    assert "made for a split with other val/test faces" in capsys.readouterr().err

    (tmp_path / "a" / "split.json").unlink()
    assert teach(["a", "b"], student, "--held-out") == 2  # no run folder: which faces it saw is unknown


def test_a_missing_teacher_file_of_a_later_stage_fails_before_the_first_stage_trains(
        utkface: Path, tmp_path: Path, overrides, capsys) -> None:
    """A typo in stage 2's ``distill_from`` must not cost stage 1's hours."""
    run = tmp_path / "run"
    command = ["train", "--data", str(utkface), "--no-progress", "--out", str(run),
               *overrides(f"stage2.distill_from={tmp_path / 'typo.safetensors'}")]
    assert main(command) == 2
    assert "not a readable teacher-targets file" in capsys.readouterr().err
    assert not (run / "checkpoints").exists() and not list(run.glob("*.safetensors"))
