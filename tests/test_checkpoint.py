"""Model files (safetensors + config) and training states: round trips, safety, atomicity."""

from __future__ import annotations

import os
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
)
from glae.fileio import atomic_write, atomic_write_text
from glae.models.glae import AgeModel, ModelConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> AgeModel:
    torch.manual_seed(0)
    net = AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=64, proj_depth=1, hidden_dim=16))
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
    assert read_model_metadata(path) == {"model": model.config.to_dict(), "info": info}
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
