"""What a rerun of ``glae train`` may do with its run folder, and the training flip switch."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.checkpoint import load_training_state, save_training_state
from glae.cli import main
from glae.data.transforms import train_transform
from glae.models.glae import PAPER_INPUT
from glae.run_folder import run_lock


@pytest.mark.slow
def test_a_run_that_failed_at_start_accepts_the_corrected_command(utkface: Path, tmp_path: Path, overrides, capsys) -> None:
    """Nothing was trained, so the first attempt's settings must not lock the folder."""
    run = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny = overrides("stage1.epochs=1", "stage2.epochs=0")
    assert main(["train", "--data", str(empty), "--out", str(run), "--no-progress", *tiny]) == 2
    assert (run / "config.yaml").exists()
    assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *tiny]) == 0
    assert (run / "model.safetensors").exists()
    # Once trained, the folder is protected, but settings that only change speed may differ.
    assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *tiny, "--set", "data.cache=false",
                 "--set", "checkpoint_every=7", "--set", "eval_batch_size=16"]) == 0
    # The same dataset spelled another way (a trailing slash, a relative path) is the same run.
    relative = os.path.relpath(utkface, Path.cwd())
    assert main(["train", "--data", relative + "/", "--out", str(run), "--no-progress", *tiny]) == 0
    assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *tiny, "--set", "seed=5"]) == 2
    assert "holds a run with other settings (seed: 0 recorded, 5 now)" in capsys.readouterr().err


def test_a_model_file_without_a_run_record_is_never_trained_over(utkface: Path, tmp_path: Path, overrides, capsys) -> None:
    """--out pointing at a folder of models (or a run whose config.yaml is lost): refused, nothing replaced."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a user's model")
    assert main(["train", "--data", str(utkface), "--out", str(folder), "--no-progress", *overrides()]) == 2
    assert "holds a checkpoint or model file but no config.yaml" in capsys.readouterr().err
    assert (folder / "model.safetensors").read_bytes() == b"a user's model"
    assert not (folder / "config.yaml").exists()


def test_an_unreadable_run_record_is_one_line(utkface: Path, tmp_path: Path, overrides, capsys) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / "config.yaml").write_text("model: [unclosed\n  x: {")
    assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *overrides()]) == 2
    err = capsys.readouterr().err
    assert "config.yaml: not valid YAML" in err and err.count("\n") == 1


def test_a_folder_being_trained_is_refused_to_a_second_run(utkface: Path, tmp_path: Path, overrides, capsys) -> None:
    """Two processes training one folder would overwrite each other's checkpoints and logs."""
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other glae train holds it
        assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *overrides()]) == 2
    assert "is being trained by another process" in capsys.readouterr().err
    assert sorted(path.name for path in run.iterdir()) == [".train.lock"]


def test_the_lock_holder_removes_what_a_killed_run_left_mid_write(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    partial = [tmp_path / ".model.safetensors.x1.tmp", tmp_path / "checkpoints" / ".last.pt.x2.tmp"]
    for path in partial:
        path.write_bytes(b"half a file")
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"kept")
    with run_lock(tmp_path):
        assert not any(path.exists() for path in partial)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == b"kept"


@pytest.mark.slow
def test_resume_rewrites_the_log_and_refuses_weights_of_another_model_or_process_count(utkface: Path, tmp_path: Path, overrides, capsys) -> None:
    """A kill between the last checkpoint and metrics.jsonl loses no epoch; a foreign last.pt, or one
    written on another number of processes (another schedule and share of the data), is one line."""
    run = tmp_path / "run"
    args = ["train", "--data", str(utkface), "--out", str(run), "--no-progress", *overrides("stage1.epochs=1", "stage2.epochs=0")]
    assert main(args) == 0
    (run / "metrics.jsonl").write_text("")  # killed after checkpointing the epoch, before logging it
    assert main(args) == 0
    assert [(record["stage"], record["epoch"]) for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [(1, 1)]

    state = load_training_state(run / "checkpoints" / "last.pt")
    assert state["world_size"] == 1
    save_training_state(run / "checkpoints" / "last.pt", {**state, "world_size": 2})  # started with torchrun on two
    capsys.readouterr()
    assert main(args) == 2
    assert "was written by a run on 2 process(es); resume it on 2 (torchrun --nproc_per_node=2), not 1" in capsys.readouterr().err

    state["model"] = {name: tensor.reshape(-1)[:1] for name, tensor in state["model"].items()}
    save_training_state(run / "checkpoints" / "last.pt", state)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "last.pt: its weights do not fit the model of this run's config.yaml" in err and err.count("\n") == 1


def test_a_hand_written_config_inside_the_run_folder_is_never_replaced(tmp_path: Path, capsys) -> None:
    """``--config exp/config.yaml --out exp``: the run would record its settings over the user's file."""
    from glae.config import dump_config, load_config

    written = "# tuned by hand\nmodel:\n  backbone: resnet18  # small\n"
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "config.yaml").write_text(written)
    args = ["train", "--data", str(tmp_path / "missing"), "--no-progress"]
    assert main([*args, "--config", str(tmp_path / "exp" / "config.yaml"), "--out", str(tmp_path / "exp")]) == 2
    assert "is not a record glae train wrote" in capsys.readouterr().err
    assert (tmp_path / "exp" / "config.yaml").read_text() == written
    # Nor when the run takes its settings from elsewhere: the file in --out is still the user's.
    assert main([*args, "--out", str(tmp_path / "exp")]) == 2
    assert "is not a record glae train wrote" in capsys.readouterr().err
    assert (tmp_path / "exp" / "config.yaml").read_text() == written
    # A run's own record, passed back to rerun it, is what the run writes: accepted.
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(dump_config(load_config(None, [f"data.path={tmp_path / 'missing'}"])))
    assert main([*args, "--config", str(tmp_path / "run" / "config.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_record_written_before_a_setting_existed_is_still_the_runs_own(tmp_path: Path, capsys) -> None:
    """A run that failed at start under an older GLAE (its config.yaml lacks the settings added
    since, e.g. ``data.fold_seed``) is rerun, not refused as a hand-written file; one line changed
    by hand still is."""
    from glae.config import dump_config, load_config

    record = dump_config(load_config(None, [f"data.path={tmp_path / 'missing'}"]))
    older = "".join(line for line in record.splitlines(keepends=True) if not line.strip().startswith("fold_seed:"))
    assert older != record
    args = ["train", "--data", str(tmp_path / "missing"), "--no-progress", "--out", str(tmp_path / "run")]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(older)
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err  # the data, not the record, stops it
    (tmp_path / "run" / "config.yaml").write_text(older.replace("split_seed: 0", "split_seed: 0  # mine"))
    assert main(args) == 2
    assert "is not a record glae train wrote" in capsys.readouterr().err


def _left_half_white(size: int = 16) -> Image.Image:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:, : size // 2] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("flip, mirrored_share", [(False, 0.0), (True, 0.5)])
def test_training_flip_switch(flip: bool, mirrored_share: float) -> None:
    """train_flip=false (the paper's augmentations) never mirrors a face; true mirrors half of them."""
    transform = train_transform(16, PAPER_INPUT, augment=False, flip=flip)
    mirrored = 0
    for seed in range(200):
        torch.manual_seed(seed)
        image = transform(_left_half_white())
        mirrored += int(image[0, 0, 0] < image[0, 0, -1])
    assert mirrored / 200 == pytest.approx(mirrored_share, abs=0.1)
