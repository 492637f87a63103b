"""Model files (safetensors + config) and training states: round trips, safety, atomicity."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glae.checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    read_model_metadata,
    save_model,
    save_training_state,
    stores_half,
)
from glae.fileio import atomic_write, atomic_write_text
from glae.models.backbones import IMAGENET_INPUT, TF_INPUT
from glae.models.glae import PAPER_INPUT, AgeModel, ModelConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> AgeModel:
    torch.manual_seed(0)
    net = AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=64, head_options={"proj_depth": 1, "hidden_dim": 16}))
    # give BatchNorm non-default running statistics, so they are part of what must round-trip
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 64, 64), head="vanilla")
        net(torch.randn(4, 3, 64, 64), head="balanced")
    return net.eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_save_load_round_trip(tmp_path: Path, model: AgeModel) -> None:
    path = tmp_path / "model.safetensors"
    info = {"stages": [1, 2], "val": {"mae": 4.25}, "note": "ünïcode"}
    save_model(path, model, info=info)
    loaded, loaded_info = load_model(path)
    assert loaded_info == info
    assert not loaded.training
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    images = _images()
    expected = model.predict_views(images)
    got = loaded.predict_views(images)
    for head in ("vanilla", "balanced"):
        assert torch.equal(got[head], expected[head])
    assert read_model_metadata(path) == {"members": [model.config.to_dict()], "input": PAPER_INPUT, "calibration": None, "info": info}
    assert loaded.normalization == model.normalization == PAPER_INPUT
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_half_precision_file(tmp_path: Path, model: AgeModel) -> None:
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_model(full, model)
    save_model(half, model, half=True)
    from safetensors import safe_open

    with safe_open(str(half), framework="pt") as handle:
        weight = handle.get_tensor("heads.vanilla.rearrange.conv.weight")
        counter = next(k for k in handle.keys() if k.endswith("num_batches_tracked"))
        assert weight.dtype == torch.float16
        assert handle.get_tensor(counter).dtype == torch.int64  # integers stay integers
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert stores_half(half) and not stores_half(full)  # what glae calibrate keeps when it rewrites a file
    loaded, info = load_model(half)
    assert info == {}
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == model.state_dict()[name].dtype, name
    images = _images()
    expected = model.predict_views(images)["vanilla"]
    got = loaded.predict_views(images)["vanilla"]
    assert torch.allclose(got, expected, atol=2e-2)


def test_pretrained_setting_is_not_reused_when_loading(tmp_path: Path) -> None:
    config = ModelConfig(backbone="resnet18", max_age=3, input_size=32, pretrained=False)
    net = AgeModel(config)
    net.config = ModelConfig(**{**config.to_dict(), "pretrained": "/no/such/weights.pth"})
    path = tmp_path / "m.safetensors"
    save_model(path, net)
    loaded, _ = load_model(path)  # must not try to read the missing weights file
    assert loaded.config.pretrained is False


def test_non_glae_safetensors_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match=r"other\.safetensors.*not a GLAE model"):
        load_model(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(64) + b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"noise\.safetensors"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"absent\.safetensors.*does not exist"):
        load_model(tmp_path / "absent.safetensors")


def test_mismatched_weights_are_refused(tmp_path: Path, model: AgeModel) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, model)
    tensors = {"heads.vanilla.extra": torch.zeros(1)}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors.update({k: handle.get_tensor(k) for k in handle.keys() if not k.startswith("heads.balanced.")})
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"broken\.safetensors.*do not match"):
        load_model(broken)


def test_training_state_round_trip(tmp_path: Path, model: AgeModel) -> None:
    optimizer = torch.optim.SGD(model.heads["balanced"].parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loss = model(_images(), head="balanced")["logits"].sum()
    loss.backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": 17},
        "rng": torch.get_rng_state(),
        "history": [],
        "stage": 2,
        "epoch": 1,
        "step": 17,
        "best": {"mae": 4.5, "epoch": None},
    }
    path = tmp_path / "state.pt"
    save_training_state(path, state)
    loaded = load_training_state(path)
    assert (loaded["stage"], loaded["epoch"], loaded["step"], loaded["best"]) == (2, 1, 17, {"mae": 4.5, "epoch": None})
    for name, tensor in state["model"].items():
        assert torch.equal(loaded["model"][name], tensor), name
    restored = torch.optim.SGD(model.heads["balanced"].parameters(), lr=0.5)
    restored.load_state_dict(loaded["optimizer"])
    assert restored.param_groups[0]["lr"] == 0.1
    first = next(iter(optimizer.state.values()))["momentum_buffer"]
    assert torch.equal(next(iter(loaded["optimizer"]["state"].values()))["momentum_buffer"], first)


class _Payload:
    """Stands for any object a malicious pickle could smuggle in."""

    def __init__(self) -> None:
        self.command = "rm -rf /"


def test_training_state_refuses_arbitrary_classes(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_training_state(path)


def test_training_state_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match=r"noise\.pt"):
        load_training_state(path)
    with pytest.raises(CheckpointError, match=r"missing\.pt"):
        load_training_state(tmp_path / "missing.pt")


@pytest.mark.parametrize("content", [{"model": {"weight": torch.zeros(2)}}, [torch.zeros(2)]], ids=["state_dict", "list"])
def test_a_torch_file_that_is_no_training_state_is_refused_in_one_line(tmp_path: Path, content: object) -> None:
    """A bare state dict in checkpoints/last.pt would otherwise stop the resume with a KeyError."""
    path = tmp_path / "last.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=r"last\.pt: not a GLAE training state \(no .*history\)"):
        load_training_state(path)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("old contents")

    def failing(temp: str) -> None:
        Path(temp).write_text("half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_text() == "old contents"
    assert sorted(os.listdir(tmp_path)) == ["report.json"]  # no temporary file left


def test_atomic_write_replaces_and_creates_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "notes.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["notes.txt"]


def test_failed_save_keeps_previous_model(tmp_path: Path, model: AgeModel) -> None:
    path = tmp_path / "model.safetensors"
    save_model(path, model, info={"version": 1})
    with pytest.raises(TypeError):
        save_model(path, model, info={"bad": object()})  # not JSON-serializable
    assert load_model(path)[1] == {"version": 1}
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_atomic_write_gives_the_usual_file_mode(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1")
    finally:
        os.umask(mask)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644


def _with_metadata(source: Path, target: Path, record: object) -> Path:
    """A copy of ``source``'s tensors under the given (hostile) ``glae`` metadata."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    text = record if isinstance(record, str) else json.dumps(record)
    save_file(tensors, str(target), metadata={"glae": text})
    return target


@pytest.mark.parametrize(
    "record, message",
    [
        ("{not json", r" is not JSON"),
        ("[" * 100_000, r" is not JSON"),  # nesting that breaks the parser (RecursionError)
        ('{"model": {}, "info": {}, "n": ' + "9" * 5000 + "}", r" is not JSON"),  # digits past Python's int limit
        ({"model": {}, "info": {}, "calibration": {"temperature": 10**400, "coverage": 0.9, "faces": 10}}, r"key 'calibration': calibration temperature must be a number"),
        ({"model": {}, "input": {"mean": [10**400, 0, 0], "std": [1, 1, 1]}, "info": {}}, r"key 'input' must hold"),
        ("null", r" must be a JSON object, got NoneType"),
        ({"info": {}}, r"key 'model' must be a JSON object, found missing"),
        ({"model": None, "info": {}}, r"key 'model' must be a JSON object, found a NoneType"),
        ({"model": "resnet18", "info": {}}, r"key 'model' must be a JSON object, found a str"),
        ({"model": {"max_age": 10}, "info": []}, r"key 'info' must be a JSON object, found a list"),
        ({"model": {"max_age": "ten"}, "info": {}}, r"model\.max_age: expected an integer, got 'ten'"),
        ({"model": {"max_age": None}, "info": {}}, r"model\.max_age: expected an integer, got None"),
        ({"model": {"input_size": 0}, "info": {}}, r"model\.input_size must be an integer in 32\.\.1024, got 0"),
        ({"model": {"head": "mystery"}, "info": {}}, r"unknown head 'mystery'; choose one of"),
        ({"model": {"head_options": {"proj_depth": -1}}, "info": {}}, r"model\.head_options\.proj_depth must be an integer in 0\.\.8"),
        ({"model": {}, "input": {"mean": [0.5, 0.5], "std": [1, 1, 1]}, "info": {}}, r"key 'input' must hold 'mean' and 'std'"),
        ({"model": {}, "input": {"mean": [0, 0, 0], "std": [1, 0, 1]}, "info": {}}, r"key 'input' must hold .*std > 0"),
        ({"model": {}, "input": {"mean": [0, 0, "NaN"], "std": [1, 1, 1]}, "info": {}}, r"key 'input' must hold"),
        ({"model": {"colour": 1}, "info": {}}, r"unknown setting\(s\) model\.colour.*needs a newer GLAE than this 0\."),
        ({"model": {"upscale": 16, "head_options": [1, 2]}, "info": {}}, r"model\.head_options a mapping, got 'glae' and \[1, 2\]"),
        ({"model": {"upscale": 16, "head": ["glae"]}, "info": {}}, r"model\.head must be a name"),
    ],
)
def test_hostile_metadata_is_one_line_naming_file_and_key(tmp_path: Path, model: AgeModel, record: object, message: str) -> None:
    save_model(tmp_path / "good.safetensors", model)
    path = _with_metadata(tmp_path / "good.safetensors", tmp_path / "hostile.safetensors", record)
    with pytest.raises(CheckpointError, match=r"hostile\.safetensors: metadata 'glae'.*" + message) as caught:
        load_model(path)
    assert "\n" not in str(caught.value) and "not written by glae train" in str(caught.value)


def test_metadata_that_disagrees_with_the_tensors_is_refused(tmp_path: Path, model: AgeModel) -> None:
    save_model(tmp_path / "good.safetensors", model)
    record = {"model": {**model.config.to_dict(), "max_age": 20}, "info": {}}  # the tensors hold 11 ages
    path = _with_metadata(tmp_path / "good.safetensors", tmp_path / "liar.safetensors", record)
    with pytest.raises(CheckpointError, match=r"liar\.safetensors: weights do not match the model its metadata describes") as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_metadata_of_a_huge_network_beside_tiny_weights_costs_no_memory(tmp_path: Path) -> None:
    """A file of a few hundred bytes must not make any command allocate gigabytes: the
    metadata below describes 4.5 G parameters (18 GB). Loading runs under a 6 GiB address-space
    limit, so building that network before looking at the tensors fails on memory instead."""
    record = {
        "model": {"backbone": "resnet18", "head": "glae", "max_age": 200, "input_size": 1024,
                  "head_options": {"proj_depth": 8, "embed_dim": 8192, "hidden_dim": 8192}},
        "info": {},
    }
    path = tmp_path / "bomb.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"glae": json.dumps(record)})
    assert path.stat().st_size < 1000
    script = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
        "from glae.checkpoint import CheckpointError, load_model\n"
        "try:\n"
        f"    load_model({str(path)!r})\n"
        "except CheckpointError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bomb.safetensors: weights do not match the model (missing" in result.stdout, result.stdout


def test_nan_weights_are_refused_when_loading(tmp_path: Path, model: AgeModel) -> None:
    diverged = AgeModel(model.config)
    diverged.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(diverged.heads["balanced"].parameters()).view(-1)[0] = float("nan")
    save_model(tmp_path / "nan.safetensors", diverged)
    with pytest.raises(CheckpointError, match=r"nan\.safetensors: weight heads\.balanced\..* holds NaN or infinity.*retrain"):
        load_model(tmp_path / "nan.safetensors")


def test_a_nan_in_a_float8_weight_is_refused_in_one_line(tmp_path: Path, model: AgeModel) -> None:
    """float8 has no isfinite of its own: the check must still read a NaN stored that way."""
    from safetensors import safe_open

    save_model(tmp_path / "good.safetensors", model)
    with safe_open(str(tmp_path / "good.safetensors"), framework="pt") as handle:
        tensors, metadata = {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata()
    name = next(k for k in tensors if k.startswith("heads.balanced.") and tensors[k].is_floating_point())
    weight = tensors[name].float()
    weight.view(-1)[0] = float("nan")
    tensors[name] = weight.to(torch.float8_e4m3fn)
    save_file(tensors, str(tmp_path / "f8.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match=rf"f8\.safetensors: weight {re.escape(name)} holds NaN or infinity"):
        load_model(tmp_path / "f8.safetensors")


def test_a_backbone_that_refuses_the_files_settings_is_one_line(tmp_path: Path) -> None:
    """timm's models refuse settings in their own ways (here an AssertionError): still one line naming the file."""
    path = tmp_path / "odd.safetensors"
    record = {"model": {"backbone": "efficientvit_b0", "input_size": 64}, "info": {}}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"glae": json.dumps(record)})
    with pytest.raises(CheckpointError, match=r"odd\.safetensors: its model settings do not build a network \(AssertionError: "):
        load_model(path)


def test_refused_pickle_never_suggests_weights_only_false(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"payload": _Payload()}, path)
    with pytest.raises(CheckpointError) as caught:
        load_training_state(path)
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)
    assert "never loads" in str(caught.value)


class _FullDisk(io.RawIOBase):
    """A file on a full disk: every write fails with ENOSPC (no /dev/full in every container)."""

    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    """Files that ``module`` opens for writing are on a full disk."""
    monkeypatch.setattr(module, "open", lambda *_, **__: _FullDisk(), raising=False)


def test_full_disk_while_saving_a_training_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import glae.checkpoint

    _full_disk(monkeypatch, glae.checkpoint)
    with pytest.raises(OSError, match=r"no space left on device while writing .*last\.pt; free some space"):
        save_training_state(tmp_path / "last.pt", {"weights": torch.zeros(100_000)})
    assert os.listdir(tmp_path) == []


def test_full_disk_while_saving_a_model(tmp_path: Path, model: AgeModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import glae.fileio

    save_model(tmp_path / "model.safetensors", model, info={"version": 1})
    _full_disk(monkeypatch, glae.fileio)
    with pytest.raises(OSError, match=r"no space left on device while writing .*model\.safetensors"):
        save_model(tmp_path / "model.safetensors", model, info={"version": 2})
    monkeypatch.undo()
    assert load_model(tmp_path / "model.safetensors")[1] == {"version": 1}
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_normalization_travels_in_the_model_file(tmp_path: Path) -> None:
    """A model is used with the pixel normalization it was trained with, even where rebuilding
    it without its pretrained weights would pick another one."""
    torch.manual_seed(0)
    pretrained = AgeModel(ModelConfig(backbone="efficientnet_lite0", pretrained=True, max_age=10, input_size=64))
    assert pretrained.normalization == TF_INPUT  # "backbone": what the Lite0 ImageNet weights expect
    save_model(tmp_path / "lite0.safetensors", pretrained)
    loaded, _ = load_model(tmp_path / "lite0.safetensors")
    assert loaded.config.pretrained is False and loaded.normalization == TF_INPUT
    named = AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=32, normalization="imagenet"))
    assert named.normalization == IMAGENET_INPUT
    assert AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=32)).normalization == PAPER_INPUT  # from scratch


def test_model_files_from_before_head_options_and_normalization_load(tmp_path: Path, model: AgeModel) -> None:
    """Older files kept the head settings flat in the model record and no normalization: they
    load with the same network and the paper's normalization, which they were trained with."""
    save_model(tmp_path / "new.safetensors", model)
    config = model.config.to_dict()
    flat = {key: value for key, value in config.items() if key not in ("head_options", "normalization")}
    old = {**flat, **config["head_options"]}
    path = _with_metadata(tmp_path / "new.safetensors", tmp_path / "old.safetensors", {"model": old, "info": {}})
    loaded, _ = load_model(path)
    assert loaded.config.head_options == model.config.head_options
    assert loaded.config.normalization == "paper" and loaded.normalization == PAPER_INPUT
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
