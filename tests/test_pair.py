"""``glae pair``: two trained models as one, the first on each image, the second on its mirror image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from glae.checkpoint import CheckpointError, load_model, read_model_metadata, save_model
from glae.cli import main
from glae.data.images import read_rgb
from glae.data.transforms import eval_transform
from glae.models import AgeModel, ModelConfig, ModelPair
from glae.routing import route

torch.set_num_threads(1)

CONFIG = ModelConfig(backbone="resnet18", head="glae", max_age=116, input_size=64, head_options={"proj_depth": 1, "hidden_dim": 16})


def _network(seed: int, config: ModelConfig = CONFIG) -> AgeModel:
    torch.manual_seed(seed)
    return AgeModel(config).eval()


def _saved(folder: Path, name: str, network: AgeModel, info: dict | None = None) -> Path:
    path = folder / name
    save_model(path, network, {"balanced_trained": True} if info is None else info)
    return path


@pytest.fixture(scope="module")
def crops(utkface: Path) -> torch.Tensor:
    """Six real UTKFace crops, preprocessed as ``glae eval`` does: ``[6, 3, 64, 64]``."""
    transform = eval_transform(CONFIG.input_size, _network(0).normalization)
    return torch.stack([transform(read_rgb(path)) for path in sorted(utkface.glob("*.jpg"))[:6]])


def test_first_member_reads_the_image_and_second_its_mirror(crops: torch.Tensor) -> None:
    first, second = _network(1), _network(2)
    views = ModelPair(first, second).predict_views(crops)
    for head in ("vanilla", "balanced"):
        assert views[head].shape == (2, len(crops), CONFIG.num_classes)
        torch.testing.assert_close(views[head][0], first.predict_probabilities(crops)[head])
        torch.testing.assert_close(views[head][1], second.predict_probabilities(crops.flip(-1))[head])
    # The two members' answers differ, so routing compares two models, not one model twice.
    assert not torch.allclose(views["vanilla"][0], views["vanilla"][1], atol=1e-3)


def test_a_model_paired_with_itself_predicts_as_the_model(crops: torch.Tensor) -> None:
    model = _network(1)
    pair = ModelPair(model, _network(1))
    alone, paired = route(model.predict_views(crops)), route(pair.predict_views(crops))
    torch.testing.assert_close(paired.probs, alone.probs)
    assert torch.equal(paired.used_balanced, alone.used_balanced)


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"input_size": 96}, "model.input_size (64 and 96)"), ({"max_age": 100}, "model.max_age (116 and 100)"),
     ({"normalization": "imagenet"}, "different pixel normalizations")],
)
def test_members_that_read_or_score_differently_are_refused(setting: dict, message: str) -> None:
    other = ModelConfig(**{**CONFIG.to_dict(), **setting})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelPair(_network(1), _network(2, other))


def test_glae_pair_writes_a_file_that_loads_and_predicts_the_same(tmp_path: Path, crops: torch.Tensor, capsys) -> None:
    first, second = _network(1), _network(2)
    paths = [_saved(tmp_path, "a.safetensors", first, {"balanced_trained": True, "data_format": "utkface", "epochs": 3}),
             _saved(tmp_path, "b.safetensors", second)]
    out = tmp_path / "pair.safetensors"
    assert main(["pair", str(paths[0]), str(paths[1]), "--out", str(out)]) == 0
    assert "routing mode" in capsys.readouterr().out
    loaded, info = load_model(out)
    assert isinstance(loaded, ModelPair) and loaded.calibration is None
    assert info["balanced_trained"] is True and info["data_format"] == "utkface"
    assert [member["file"] for member in info["pair_of"]] == [str(paths[0]), str(paths[1])]
    assert info["pair_of"][0]["epochs"] == 3
    assert (loaded.first.config, loaded.second.config) == (CONFIG, CONFIG)
    expected = ModelPair(first, second).predict_views(crops)
    got = loaded.predict_views(crops)
    for head in ("vanilla", "balanced"):
        assert torch.equal(got[head], expected[head])
    half = tmp_path / "half.safetensors"
    assert main(["pair", str(paths[0]), str(paths[1]), "--out", str(half), "--half"]) == 0
    assert half.stat().st_size < 0.6 * out.stat().st_size


def test_calibrated_pair_predicts_photos_with_glae_predict(tmp_path: Path, utkface: Path, capsys) -> None:
    paths = [_saved(tmp_path, name, _network(seed)) for seed, name in ((1, "a.safetensors"), (2, "b.safetensors"))]
    pair = tmp_path / "pair.safetensors"
    assert main(["pair", *map(str, paths), "--out", str(pair)]) == 0
    split = tmp_path / "split.json"
    files = sorted(utkface.glob("*.jpg"))
    split.write_text(json.dumps({"train": [], "val": [f.name for f in files[:40]], "test": []}))
    calibrated = tmp_path / "calibrated.safetensors"
    assert main(["calibrate", "--checkpoint", str(pair), "--data", str(utkface), "--split", str(split),
                 "--out", str(calibrated), "--workers", "0"]) == 0
    model, _ = load_model(calibrated)
    assert isinstance(model, ModelPair) and model.calibration is not None and model.calibration.faces == 40
    capsys.readouterr()
    assert main(["predict", str(files[100]), "--model", str(calibrated), "--aligned", "--json"]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert 0 <= prediction[0]["faces"][0]["age"] <= CONFIG.max_age


def test_glae_pair_refuses_what_it_cannot_pair_and_writes_nothing(tmp_path: Path, capsys) -> None:
    a = _saved(tmp_path, "a.safetensors", _network(1))
    vanilla_only = _saved(tmp_path, "v.safetensors", _network(2), {"balanced_trained": False})
    small = _saved(tmp_path, "s.safetensors", _network(3, ModelConfig(**{**CONFIG.to_dict(), "input_size": 96})))
    pair = tmp_path / "pair.safetensors"
    assert main(["pair", str(a), str(a), "--out", str(pair)]) == 0
    out = tmp_path / "new.safetensors"
    cases = [
        ([str(a), str(vanilla_only)], "trained balanced head"),
        ([str(a), str(small)], "model.input_size"),
        ([str(pair), str(a)], "already a pair"),
        ([str(a), str(tmp_path / "missing.safetensors")], "does not exist"),
    ]
    for arguments, message in cases:
        assert main(["pair", *arguments, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1
        assert not out.exists()
    before = a.read_bytes()
    assert main(["pair", str(a), str(small), "--out", str(a)]) == 2
    assert "is FIRST itself" in capsys.readouterr().err
    assert a.read_bytes() == before
    assert main(["pair", str(a), str(a), "--out", str(vanilla_only)]) == 2  # another run's trained model
    assert "is a GLAE model that glae pair did not write, so it is not replaced" in capsys.readouterr().err
    assert main(["pair", str(a), str(a), "--out", str(pair)]) == 0  # its own earlier output is replaced


def test_pair_file_with_other_than_two_members_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "three.safetensors"
    record = {"members": [CONFIG.to_dict()] * 3, "info": {}}
    save_file({"x": torch.zeros(1)}, str(path), metadata={"glae": json.dumps(record)})
    with pytest.raises(CheckpointError, match="'members' must list two JSON objects"):
        read_model_metadata(path)


def test_exported_pair_matches_pytorch(tmp_path: Path, crops: torch.Tensor) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from glae.inference_backends import OnnxRoutedPredictor

    pair = ModelPair(_network(1), _network(2))
    model_file, onnx_file = tmp_path / "pair.safetensors", tmp_path / "pair.onnx"
    save_model(model_file, pair, {"balanced_trained": True})
    assert main(["export", "--model", str(model_file), "--onnx", str(onnx_file)]) == 0
    onnx_model = OnnxRoutedPredictor.load(onnx_file)
    assert onnx_model.metadata["members"] == [CONFIG.to_dict(), CONFIG.to_dict()]
    expected = route(pair.predict_views(crops))
    ages, probs, used_balanced = onnx_model.predict_routed(crops)
    torch.testing.assert_close(ages, expected.ages, atol=1e-4, rtol=0)
    torch.testing.assert_close(probs, expected.probs, atol=1e-4, rtol=0)
    assert torch.equal(used_balanced, expected.used_balanced)


def test_a_stage_cannot_start_from_a_pair(tmp_path: Path) -> None:
    """``init_from`` copies one network's weights; a pair file holds two, so it is refused by name."""
    from glae.config import load_config
    from glae.train import init_source

    pair = tmp_path / "pair.safetensors"
    save_model(pair, ModelPair(_network(1), _network(2)), {"balanced_trained": True})
    config = load_config(None, ["model.backbone=resnet18", "model.max_age=116", "model.input_size=64",
                                "model.head_options={proj_depth: 1, hidden_dim: 16}", f"stage2.init_from={pair}"])
    with pytest.raises(ValueError, match=r"stages\.1\.init_from .* is a model pair"):
        init_source(AgeModel(config.model), config, 2)
