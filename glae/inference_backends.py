"""One small interface over the two ways to run a model: PyTorch or an exported ONNX file.

A predictor turns normalized images (``glae.data.transforms.eval_transform`` at
``input_size``) into routed ages; everything before (reading, aligning, resizing) and after
(reporting) is the same for both backends, so the caller holds a ``RoutedPredictor`` and
never asks which one it has. ``load_routed_predictor`` picks the backend from the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch
from torch import Tensor

from .calibration import IntervalCalibration
from .checkpoint import CheckpointError, diverged_weight, load_model
from .errors import MissingExtraError
from .export import METADATA_PREFIX
from .models.backbones import InputNormalization
from .models.glae import ModelConfig
from .models.pair import InferenceModel
from .models.routed import INPUT_NAME, ROUTED_OUTPUTS, RoutedAgeModel
from .routing import ROUTING_MODES, RoutingMode, routing_mode
from .typed import is_finite_number, parse_json

Precision = Literal["float32", "bfloat16"]
"""The arithmetic a PyTorch model computes in (``PredictOptions.precision``)."""
PRECISIONS: tuple[Precision, ...] = get_args(Precision)


class RoutedPredictor(Protocol):
    """What a caller needs from a model: its configuration (input size, age range), the pixel
    normalization it was trained with, and routed predictions."""

    config: ModelConfig
    normalization: InputNormalization
    calibration: IntervalCalibration | None
    precision: Precision

    def predict_routed(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Normalized ``[B, 3, S, S]`` -> ``(ages [B], probs [B, K+1], used_balanced [B] bool)``, on the CPU."""
        ...


class TorchRoutedPredictor:
    """The PyTorch backend: ``RoutedAgeModel`` on the model's device, results moved to the CPU.

    Weights and inputs use the channels-last layout, which oneDNN convolutions run about
    twice as fast on CPUs (``benchmarks/speed.py``) and which costs nothing on GPUs.
    ``precision="bfloat16"`` computes under bfloat16 autocast (routing and the outputs stay
    float32): about 2.5x the images/s on a CPU with bfloat16 instructions
    (``benchmarks/precision_speed.py``), slower on one without.
    """

    def __init__(self, model: InferenceModel, mode: RoutingMode, precision: Precision = "float32") -> None:
        self.routed = RoutedAgeModel(model.to(memory_format=torch.channels_last), mode).eval()
        self.config = model.config
        self.normalization = model.normalization
        self.calibration = model.calibration
        self.mode = mode
        self.precision = precision

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", precision: Precision = "float32") -> "TorchRoutedPredictor":
        """A ``.safetensors`` model file, routed when its balanced head was trained."""
        model, info = load_model(path, device)
        return cls(model, routing_mode(info), precision)

    def predict_routed(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        device = next(self.routed.parameters()).device
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        # Only bfloat16 builds an autocast: some devices (MPS before torch 2.5) refuse one even disabled.
        arithmetic = torch.autocast(device.type, dtype=torch.bfloat16) if self.precision == "bfloat16" else nullcontext()
        with arithmetic:
            ages, probs, used_balanced = self.routed(images)[: len(ROUTED_OUTPUTS)]
        return ages.cpu(), probs.cpu(), used_balanced.cpu()  # float32 under autocast too: the heads cast logits to float32 first


class OnnxRoutedPredictor:
    """The ONNX backend: a file written by ``glae export``, run by onnxruntime on the CPU.

    Everything needed to use the file comes from the file: ``config`` (the ``ModelConfig``),
    ``info`` (training facts), ``mode`` (the routing baked into the graph) and ``metadata``
    (all ``glae.*`` entries, pixel normalization included).
    """

    def __init__(self, session: Any, metadata: dict[str, Any]) -> None:
        self.session = session
        self.metadata = metadata
        self.config = ModelConfig.from_dict(metadata["model"])
        self.normalization = InputNormalization(tuple(metadata["pixel_mean"]), tuple(metadata["pixel_std"]))
        self.calibration: IntervalCalibration | None = metadata["calibration"]
        self.info: dict[str, Any] = metadata["info"]
        self.mode: RoutingMode = metadata["routing_mode"]
        self.precision: Precision = "float32"

    @classmethod
    def load(cls, path: str | os.PathLike) -> "OnnxRoutedPredictor":
        try:
            import onnxruntime
        except ImportError:
            raise MissingExtraError("running an ONNX model needs onnxruntime: pip install 'glae[onnx]'") from None
        if not Path(path).is_file():
            raise CheckpointError(f"ONNX model {path} " + ("is a folder, not a file" if Path(path).is_dir() else "does not exist"))
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise CheckpointError(f"{path} is not a readable ONNX model ({error})") from None
        stored = session.get_modelmeta().custom_metadata_map
        if METADATA_PREFIX + "model" not in stored:
            raise CheckpointError(f"{path} is an ONNX model but not one written by glae export (no '{METADATA_PREFIX}model' metadata)")
        metadata = _checked_metadata(path, stored)
        _check_graph_signature(path, session, metadata)
        _check_finite_weights(path)
        return cls(session, metadata)

    def predict_routed(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feed = {INPUT_NAME: images.detach().cpu().float().contiguous().numpy()}
        ages, probs, used_balanced = self.session.run(list(ROUTED_OUTPUTS), feed)
        return torch.from_numpy(ages), torch.from_numpy(probs), torch.from_numpy(used_balanced)


def _checked_metadata(path: str | os.PathLike, stored: dict[str, str]) -> dict[str, Any]:
    """The ``glae.*`` entries, parsed and checked: a runtime trusts them to preprocess and decode.

    Raises:
        CheckpointError: one line naming the file and the key that is missing, not JSON,
            or nonsense (a size <= 0, a mean or std without 3 values, a zero std, an
            unknown routing mode, a size or age range that disagrees with the model).
    """

    def fail(key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{path}: metadata '{METADATA_PREFIX}{key}' {problem}; export the model again with glae export")

    metadata: dict[str, Any] = {}
    for key in ("model", "info", "routing_mode", "input_size", "max_age", "pixel_mean", "pixel_std"):
        if METADATA_PREFIX + key not in stored:
            raise fail(key, "is missing")
        try:
            metadata[key] = parse_json(stored[METADATA_PREFIX + key])
        except ValueError as error:
            raise fail(key, str(error)) from None
    try:
        config = ModelConfig.from_dict(metadata["model"])
    except ValueError as error:
        raise fail("model", f"is invalid ({error})") from None
    if not isinstance(metadata["info"], dict):
        raise fail("info", "must be a JSON object")
    if metadata["routing_mode"] not in ROUTING_MODES:
        raise fail("routing_mode", f"must be one of {', '.join(ROUTING_MODES)}, got {metadata['routing_mode']!r}")
    for key in ("input_size", "max_age"):
        if metadata[key] != getattr(config, key):
            raise fail(key, f"is {metadata[key]!r} but the model's is {getattr(config, key)}")
    for key in ("pixel_mean", "pixel_std"):
        values = metadata[key]
        if not isinstance(values, list) or len(values) != 3 or not all(is_finite_number(v) for v in values):
            raise fail(key, f"must hold 3 finite numbers (R, G, B), got {values!r}")
    if min(metadata["pixel_std"]) <= 0:
        raise fail("pixel_std", f"must be > 0 for every channel, got {metadata['pixel_std']!r}")
    metadata["calibration"] = _checked_calibration(stored.get(METADATA_PREFIX + "calibration", "null"), fail)
    if METADATA_PREFIX + "members" in stored:  # a model pair's two networks (glae pair)
        metadata["members"] = _checked_members(stored[METADATA_PREFIX + "members"], fail)
    return metadata


def _checked_members(text: str, fail: Callable[[str, str], CheckpointError]) -> list[dict[str, Any]]:
    """A model pair's member settings: two valid ``ModelConfig`` records."""
    try:
        members = parse_json(text)
    except ValueError as error:
        raise fail("members", str(error)) from None
    if not (isinstance(members, list) and len(members) == 2):
        raise fail("members", "must list the two networks of a model pair")
    for settings in members:
        try:
            ModelConfig.from_dict(settings)
        except ValueError as error:
            raise fail("members", f"is invalid ({error})") from None
    return members


def _checked_calibration(text: str, fail: Callable[[str, str], CheckpointError]) -> IntervalCalibration | None:
    """The interval calibration of an export (absent in files exported before it existed: raw quantiles)."""
    try:
        value = parse_json(text)
    except ValueError as error:
        raise fail("calibration", str(error)) from None
    if value is None:
        return None
    try:
        return IntervalCalibration.from_dict(value)
    except ValueError as error:
        raise fail("calibration", f"is invalid ({error})") from None


def _check_graph_signature(path: str | os.PathLike, session: Any, metadata: dict[str, Any]) -> None:
    """Refuse a graph whose inputs or outputs are not the ones ``glae export`` writes for this
    metadata, at load rather than as an onnxruntime traceback at the first face."""
    inputs = [node.name for node in session.get_inputs()]
    outputs = [node.name for node in session.get_outputs()]
    if inputs != [INPUT_NAME] or outputs[: len(ROUTED_OUTPUTS)] != list(ROUTED_OUTPUTS):
        raise CheckpointError(
            f"{path}: graph inputs {inputs} and outputs {outputs} are not glae export's "
            f"([{INPUT_NAME!r}] -> {list(ROUTED_OUTPUTS)}, ...); export the model again with glae export"
        )
    size, classes = metadata["input_size"], metadata["max_age"] + 1
    expected = {INPUT_NAME: [3, size, size], "probs": [classes]}  # after the batch dimension
    for node in [*session.get_inputs(), *session.get_outputs()]:
        if node.name in expected:
            shape, wanted = list(node.shape), expected[node.name]
            if len(shape) != len(wanted) + 1 or any(isinstance(got, int) and got != want for got, want in zip(shape[1:], wanted)):
                raise CheckpointError(f"{path}: graph {node.name!r} has shape {shape}, but its metadata says [batch, "
                                      f"{', '.join(map(str, wanted))}]; export the model again with glae export")


def _check_finite_weights(path: str | os.PathLike) -> None:
    """Refuse NaN or infinite initializers, as ``load_model`` does for model files."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise MissingExtraError("checking an ONNX model's weights needs onnx: pip install 'glae[onnx]'") from None

    for initializer in onnx.load(str(path)).graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise diverged_weight(path, initializer.name)


def load_routed_predictor(path: str | os.PathLike, device: str | torch.device = "cpu", precision: Precision = "float32") -> RoutedPredictor:
    """``.onnx`` files run on onnxruntime (CPU, float32, ``device`` unused); model files on PyTorch."""
    if Path(path).suffix.lower() == ".onnx":
        if precision != "float32":
            raise ValueError(f"--precision {precision} runs a PyTorch model file (.safetensors); an ONNX export runs in float32")
        return OnnxRoutedPredictor.load(path)
    return TorchRoutedPredictor.load(path, device, precision)
