"""The PyTorch and onnxruntime backends behind one interface, and what an ONNX file must hold to be run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glae.checkpoint import CheckpointError, load_model, save_model
from glae.estimator import AgeEstimator
from glae.data.images import read_rgb
from glae.data.transforms import eval_transform
from glae.export import export_onnx
from glae.inference_backends import OnnxRoutedPredictor, RoutedPredictor, TorchRoutedPredictor, load_routed_predictor
from glae.models.glae import ModelConfig
from glae.predict_options import PredictOptions
from glae.routing import route

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MODEL_CONFIG = ModelConfig(backbone="resnet18", max_age=116, input_size=64)  # conftest.py's model_file


@pytest.fixture(scope="module")
def onnx_file(model_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest.py's tiny model, both heads trained, exported with routing."""
    model, info = load_model(model_file)
    path = tmp_path_factory.mktemp("backends") / "tiny.onnx"
    export_onnx(model, path, info)
    return path


def test_torch_predictor_is_route_in_channels_last(model_file: Path, utk_crops: list[Path]) -> None:
    model, _ = load_model(model_file)
    crops = torch.stack([eval_transform(model.config.input_size, model.normalization)(read_rgb(path)) for path in utk_crops[:8]])
    expected = route(model.predict_views(crops), "routing")
    ages, probs, used_balanced = TorchRoutedPredictor(model, "routing").predict_routed(crops)
    torch.testing.assert_close(ages, expected.ages, atol=1e-4, rtol=0)  # only the memory layout differs
    torch.testing.assert_close(probs, expected.probs, atol=1e-5, rtol=0)
    assert torch.equal(used_balanced, expected.used_balanced)


@pytest.mark.parametrize("precision, computed", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_precision_sets_the_networks_arithmetic_and_results_stay_float32(
    model_file: Path, utk_crops: list[Path], precision: str, computed: torch.dtype
) -> None:
    predictor = TorchRoutedPredictor.load(model_file, precision=precision)  # type: ignore[arg-type]
    convolutions = [m for m in predictor.routed.modules() if isinstance(m, torch.nn.Conv2d)]
    outputs: list[torch.dtype] = []
    for convolution in convolutions:
        convolution.register_forward_hook(lambda module, inputs, output: outputs.append(output.dtype))
    crops = torch.stack([eval_transform(64, predictor.normalization)(read_rgb(path)) for path in utk_crops[:4]])
    ages, probs, _ = predictor.predict_routed(crops)
    assert len(outputs) >= len(convolutions) and set(outputs) == {computed}
    assert ages.dtype == probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(4), atol=1e-5, rtol=0)


def test_an_estimator_refuses_options_whose_precision_its_model_was_not_loaded_with(model_file: Path) -> None:
    with pytest.raises(ValueError, match="--precision bfloat16, but the model was loaded to compute in float32"):
        AgeEstimator(load_routed_predictor(model_file), PredictOptions(precision="bfloat16"))
    assert AgeEstimator(load_routed_predictor(model_file, precision="bfloat16"), PredictOptions(precision="bfloat16")).predictor.precision == "bfloat16"


def test_an_onnx_file_refuses_bfloat16_before_it_is_read(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--precision bfloat16 runs a PyTorch model file .*ONNX export runs in float32"):
        load_routed_predictor(tmp_path / "absent.onnx", precision="bfloat16")


def test_load_routed_predictor_picks_the_backend_from_the_file(model_file: Path, onnx_file: Path) -> None:
    predictors: list[RoutedPredictor] = [load_routed_predictor(model_file), load_routed_predictor(onnx_file)]
    assert [type(p) for p in predictors] == [TorchRoutedPredictor, OnnxRoutedPredictor]
    assert predictors[0].mode == predictors[1].mode == "routing"  # type: ignore[attr-defined]


def test_a_stage1_model_file_runs_its_vanilla_head_only(model_file: Path, tmp_path: Path, utk_crops: list[Path]) -> None:
    """No balanced head trained: PyTorch, like the ONNX export (test_export.py), never routes to the untrained head."""
    model, _ = load_model(model_file)
    save_model(tmp_path / "stage1.safetensors", model, {"balanced_trained": False})
    predictor = load_routed_predictor(tmp_path / "stage1.safetensors")
    assert predictor.mode == "vanilla"  # type: ignore[attr-defined]
    crops = torch.stack([eval_transform(model.config.input_size, model.normalization)(read_rgb(path)) for path in utk_crops[:8]])
    expected = route(model.predict_views(crops, ("vanilla",)), "vanilla")
    ages, probs, used_balanced = predictor.predict_routed(crops)
    assert not used_balanced.any()
    torch.testing.assert_close(probs, expected.probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ages, expected.ages, atol=1e-4, rtol=0)


def test_an_export_from_before_calibration_existed_reads_raw_quantiles(onnx_file: Path, tmp_path: Path) -> None:
    """Files exported before the interval was calibrated have no 'glae.calibration' entry: they still load."""
    path = _rewrite_onnx(onnx_file, tmp_path / "older.onnx", {"calibration": None})
    assert OnnxRoutedPredictor.load(path).calibration is None


def _rewrite_onnx(source: Path, target: Path, metadata: dict[str, str | None] | None = None, nan_weight: bool = False) -> Path:
    """A copy of an export with some ``glae.*`` entries replaced (None: removed) or one weight set to NaN."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(source))
    entries = {prop.key: prop.value for prop in graph.metadata_props}
    for key, value in (metadata or {}).items():
        entries.pop("glae." + key)
        if value is not None:
            entries["glae." + key] = value
    del graph.metadata_props[:]
    for key, value in entries.items():
        graph.metadata_props.add(key=key, value=value)
    if nan_weight:
        first = next(i for i in graph.graph.initializer if numpy_helper.to_array(i).dtype == np.float32)
        values = numpy_helper.to_array(first).copy()
        values.flat[0] = np.nan
        first.CopyFrom(numpy_helper.from_array(values, first.name))
    onnx.save(graph, str(target))
    return target


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("input_size", "0", r"'glae\.input_size' is 0 but the model's is 64"),
        ("input_size", "-5", r"'glae\.input_size' is -5"),
        ("model", json.dumps({**MODEL_CONFIG.to_dict(), "input_size": 0}), r"'glae\.model' is invalid \(model\.input_size must be"),
        ("pixel_mean", "[0.5, 0.5]", r"'glae\.pixel_mean' must hold 3 finite numbers"),
        ("pixel_std", "[0.2, 0.0, 0.2]", r"'glae\.pixel_std' must be > 0 for every channel"),
        ("pixel_std", '[0.2, "x", 0.2]', r"'glae\.pixel_std' must hold 3 finite numbers"),
        ("routing_mode", '"sideways"', r"'glae\.routing_mode' must be one of routing, vanilla"),
        ("max_age", "{", r"'glae\.max_age' is not JSON"),
        ("pixel_mean", f"[{10**400}, 0.5, 0.5]", r"'glae\.pixel_mean' must hold 3 finite numbers"),
        ("info", "[" * 100_000, r"'glae\.info' is not JSON"),
        ("max_age", "9" * 5000, r"'glae\.max_age' is not JSON"),
        ("calibration", json.dumps({"temperature": 10**400, "coverage": 0.9, "faces": 10}), r"'glae\.calibration' is invalid \(calibration temperature must be a number"),
        ("info", None, r"'glae\.info' is missing"),
    ],
)
def test_nonsense_onnx_metadata_is_refused(onnx_file: Path, tmp_path: Path, key: str, value: str | None, message: str) -> None:
    path = _rewrite_onnx(onnx_file, tmp_path / "hostile.onnx", {key: value})
    with pytest.raises(CheckpointError, match=r"hostile\.onnx: metadata " + message) as caught:
        OnnxRoutedPredictor.load(path)
    assert "\n" not in str(caught.value)


def test_onnx_with_nan_weights_is_refused(onnx_file: Path, tmp_path: Path) -> None:
    path = _rewrite_onnx(onnx_file, tmp_path / "diverged.onnx", nan_weight=True)
    with pytest.raises(CheckpointError, match=r"diverged\.onnx: weight .* holds NaN or infinity"):
        OnnxRoutedPredictor.load(path)
