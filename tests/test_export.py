"""ONNX export: onnxruntime reproduces PyTorch's routed prediction on real crops, from the file alone."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import pytest
import torch

from glae.checkpoint import CheckpointError, save_model
from glae.cli import main
from glae.data.images import read_rgb
from glae.data.transforms import eval_transform
from glae.models.glae import PAPER_INPUT
from glae.errors import MissingExtraError
from glae.export import DEFAULT_OPSET, MIN_OPSET, onnx_metadata
from glae.models.routed import ROUTED_OUTPUTS
from glae.inference_backends import OnnxRoutedPredictor
from glae.models.glae import AgeModel, ModelConfig
from glae.routing import route

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CONFIG = ModelConfig(backbone="resnet18", head="glae", max_age=116, input_size=64)
# With this seed the two independently initialized heads split the 8 crops below 4 / 4
# between them, each flip divergence at least 4% away from the other head's, far beyond
# float32 noise: the test covers both branches of the routing inside the graph.
SEED = 3


@pytest.fixture(scope="module")
def routed_model() -> AgeModel:
    torch.manual_seed(SEED)
    return AgeModel(CONFIG).eval()


@pytest.fixture(scope="module")
def exported(routed_model: AgeModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(model file, ONNX file)``, the ONNX one written by ``glae export``."""
    folder = tmp_path_factory.mktemp("export")
    checkpoint, onnx_file = folder / "model.safetensors", folder / "model.onnx"
    save_model(checkpoint, routed_model, info={"balanced_trained": True})
    assert main(["export", "--onnx", str(onnx_file), "--model", str(checkpoint)]) == 0
    return checkpoint, onnx_file


@pytest.fixture(scope="module")
def crops(utkface: Path) -> torch.Tensor:
    """The first 8 real UTKFace crops, preprocessed as ``glae eval`` does: ``[8, 3, 64, 64]``."""
    transform = eval_transform(CONFIG.input_size, PAPER_INPUT)
    return torch.stack([transform(read_rgb(path)) for path in sorted(utkface.glob("*.jpg"))[:8]])


@pytest.mark.parametrize("batch_size", [1, 5])
def test_onnxruntime_matches_pytorch_on_real_crops(
    routed_model: AgeModel, exported: tuple[Path, Path], crops: torch.Tensor, batch_size: int
) -> None:
    onnx_model = OnnxRoutedPredictor.load(exported[1])
    used = []
    for batch in crops.split(batch_size):  # batch size 5 also runs a last batch of 3
        expected = route(routed_model.predict_views(batch), "routing")
        ages, probs, used_balanced = onnx_model.predict_routed(batch)
        assert ages.shape == (len(batch),) and probs.shape == (len(batch), CONFIG.num_classes)
        torch.testing.assert_close(ages, expected.ages, atol=1e-4, rtol=0)
        torch.testing.assert_close(probs, expected.probs, atol=1e-4, rtol=0)
        assert used_balanced.dtype == torch.bool
        assert torch.equal(used_balanced, expected.used_balanced)
        used += used_balanced.tolist()
    assert 0 < sum(used) < len(used), "both heads must be chosen for some crops"


def test_graph_outputs_each_heads_flip_averaged_distribution(
    routed_model: AgeModel, exported: tuple[Path, Path], crops: torch.Tensor
) -> None:
    session = OnnxRoutedPredictor.load(exported[1]).session
    names = [output.name for output in session.get_outputs()]
    assert names == [*ROUTED_OUTPUTS, "vanilla_probs", "balanced_probs"]
    vanilla_probs, balanced_probs = session.run(["vanilla_probs", "balanced_probs"], {"images": crops.numpy()})
    views = routed_model.predict_views(crops)
    torch.testing.assert_close(torch.from_numpy(vanilla_probs), views["vanilla"].mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(balanced_probs), views["balanced"].mean(0), atol=1e-4, rtol=0)


def test_metadata_round_trip(routed_model: AgeModel, exported: tuple[Path, Path]) -> None:
    onnx_model = OnnxRoutedPredictor.load(exported[1])
    assert onnx_model.config == routed_model.config
    assert onnx_model.info == {"balanced_trained": True}
    assert onnx_model.mode == "routing"
    assert (onnx_model.config.input_size, onnx_model.config.max_age) == (64, 116)
    assert onnx_model.metadata["pixel_mean"] == list(routed_model.normalization.mean)
    assert onnx_model.metadata["pixel_std"] == list(routed_model.normalization.std)
    assert onnx_model.normalization == routed_model.normalization


def test_model_without_balanced_head_exports_vanilla(tmp_path: Path, crops: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = AgeModel(CONFIG).eval()
    checkpoint, onnx_file = tmp_path / "stage1.safetensors", tmp_path / "stage1.onnx"
    save_model(checkpoint, model, info={"balanced_trained": False})
    assert main(["export", "--onnx", str(onnx_file), "--model", str(checkpoint)]) == 0
    onnx_model = OnnxRoutedPredictor.load(onnx_file)
    assert onnx_model.mode == "vanilla"
    assert [output.name for output in onnx_model.session.get_outputs()] == [*ROUTED_OUTPUTS, "vanilla_probs"]
    expected = route(model.predict_views(crops, ("vanilla",)), "vanilla")
    ages, probs, used_balanced = onnx_model.predict_routed(crops)
    torch.testing.assert_close(ages, expected.ages, atol=1e-4, rtol=0)
    torch.testing.assert_close(probs, expected.probs, atol=1e-4, rtol=0)
    assert not used_balanced.any()


def test_missing_files_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.safetensors"
    assert main(["export", "--onnx", str(tmp_path / "out.onnx"), "--model", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="does not exist"):
        OnnxRoutedPredictor.load(tmp_path / "out.onnx")


def _identity_graph(path: Path, metadata: dict[str, str], inputs: list[str], outputs: list[str], size: int = 64) -> Path:
    """A tiny ONNX file with glae's metadata but the given graph inputs and outputs (each output a copy of the first input)."""
    from onnx import TensorProto, helper

    tensors = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, size, size]) for name in inputs + outputs]
    nodes = [helper.make_node("Identity", [inputs[0]], [name]) for name in outputs]
    graph = helper.make_graph(nodes, "foreign", tensors[: len(inputs)], tensors[len(inputs) :])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)], ir_version=10)
    helper.set_model_props(model, metadata)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [(["x"], ["y"]), (["images"], ["age", "probs"]), (["images", "extra"], [*ROUTED_OUTPUTS, "vanilla_probs"])],
)
def test_graph_that_glae_export_did_not_write_is_refused_at_load(
    routed_model: AgeModel, tmp_path: Path, inputs: list[str], outputs: list[str]
) -> None:
    """Metadata copied onto another graph: one line at load, not an onnxruntime traceback at the first face."""
    metadata = onnx_metadata(routed_model, "routing", {"balanced_trained": True})
    path = _identity_graph(tmp_path / "foreign.onnx", metadata, inputs, outputs)
    with pytest.raises(CheckpointError, match=r"foreign\.onnx: graph inputs .* are not glae export's") as caught:
        OnnxRoutedPredictor.load(path)
    assert "\n" not in str(caught.value)


def test_graph_of_another_input_size_than_its_metadata_is_refused_at_load(routed_model: AgeModel, tmp_path: Path) -> None:
    """glae's names on a 32 px graph whose metadata says 64 px: refused at load, not failed at every face."""
    metadata = onnx_metadata(routed_model, "routing", {"balanced_trained": True})
    path = _identity_graph(tmp_path / "resized.onnx", metadata, ["images"], list(ROUTED_OUTPUTS), size=32)
    with pytest.raises(CheckpointError, match=r"resized\.onnx: graph 'images' has shape \['batch', 3, 32, 32\], but its metadata says \[batch, 3, 64, 64\]"):
        OnnxRoutedPredictor.load(path)


def test_missing_onnx_package_is_a_missing_extra_error(exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'glae\[onnx\]'"):
        OnnxRoutedPredictor.load(exported[1])


def test_glae_predict_runs_on_the_onnx_file(exported: tuple[Path, Path], utkface: Path, capsys) -> None:
    files = [str(path) for path in sorted(utkface.glob("*.jpg"))[:4]]
    results = {}
    for model_file in exported:
        assert main(["predict", "--model", str(model_file), "--aligned", "--json", *files]) == 0
        results[model_file.suffix] = json.loads(capsys.readouterr().out)
    for torch_result, onnx_result in zip(results[".safetensors"], results[".onnx"]):
        assert onnx_result["error"] is None and len(onnx_result["faces"]) == 1
        torch_face, onnx_face = torch_result["faces"][0], onnx_result["faces"][0]
        assert onnx_face["age"] == pytest.approx(torch_face["age"], abs=1e-4)
        assert onnx_face["head"] == torch_face["head"]


def test_export_never_overwrites_the_model_file(exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(exported[0].read_bytes())
    before = model.read_bytes()
    assert main(["export", "--onnx", str(model), "--model", str(model)]) == 2
    assert "is the model file itself" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    other.write_bytes(before)
    assert main(["export", "--onnx", str(other), "--model", str(model)]) == 2
    assert "ending in .onnx" in capsys.readouterr().err
    assert model.read_bytes() == before and other.read_bytes() == before


def test_export_replaces_an_earlier_export_but_no_other_onnx_file(exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from glae.export import is_glae_export

    foreign = tmp_path / "detector.onnx"
    _identity_graph(foreign, {}, ["x"], ["y"])  # another tool's model
    before = foreign.read_bytes()
    assert main(["export", "--onnx", str(foreign), "--model", str(exported[0])]) == 2
    assert f"--onnx {foreign} exists and is not a GLAE export, so it is not replaced" in capsys.readouterr().err
    assert foreign.read_bytes() == before
    (tmp_path / "notes.onnx").write_text("my notes")
    assert not is_glae_export(tmp_path / "notes.onnx")
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(exported[1].read_bytes())
    assert is_glae_export(earlier)
    assert main(["export", "--onnx", str(earlier), "--model", str(exported[0])]) == 0


@pytest.mark.parametrize("opset", ["5", "17", "99"])  # 17: what torch can no longer write this graph in
def test_unusable_opset_is_one_line(exported: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], opset: str) -> None:
    assert main(["export", "--onnx", str(tmp_path / "old.onnx"), "--model", str(exported[0]), "--opset", opset]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --opset {opset}: GLAE's graph needs an ONNX opset in {MIN_OPSET}..") and err.count("\n") == 1
    assert not (tmp_path / "old.onnx").exists()


def _opset(onnx_file: Path) -> int:
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def test_export_is_quiet_self_contained_and_in_the_opset_asked(
    exported: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """torch's current exporter, not the deprecated TorchScript one; weights inside the one file."""
    assert _opset(exported[1]) == DEFAULT_OPSET
    caplog.set_level(logging.INFO)
    onnx_file = tmp_path / "newer.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", "--onnx", str(onnx_file), "--model", str(exported[0]), "--opset", str(DEFAULT_OPSET + 1)]) == 0
    deprecations = [
        f"{warning.filename}: {warning.message}" for warning in caught
        if issubclass(warning.category, (DeprecationWarning, FutureWarning))
        and ("TorchScript" in str(warning.message) or "onnx" in str(warning.message).lower() or "torch/onnx" in warning.filename.replace("\\", "/"))
    ]
    assert not deprecations
    assert capsys.readouterr().out == f"ONNX model (routing mode): {onnx_file}\n"
    assert not [record.getMessage() for record in caplog.records if record.name.startswith(("onnxscript", "onnx_ir"))]
    assert [path.name for path in tmp_path.iterdir()] == ["newer.onnx"], "weights must not be written as external data"
    assert _opset(onnx_file) == DEFAULT_OPSET + 1
    assert OnnxRoutedPredictor.load(onnx_file).mode == "routing"
