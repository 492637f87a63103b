"""Export a trained model to ONNX, Adaptive Routing included, for runtimes without PyTorch.

The graph takes what ``glae.data.transforms.eval_transform`` produces, normalized images
``[B, 3, S, S]`` with a dynamic batch ``B``, and does everything after it: the flip, one
backbone pass over image and flip, both heads, the per-image head choice (Eq. 11) and the
expected age (Eq. 3). It is captured from ``AgeModel.predict_views`` and ``route`` themselves,
so the file computes exactly what ``glae eval`` does, not a re-implementation of it.

The preprocessing a runtime must reproduce (input size, pixel normalization) and the
model's configuration travel in the file's ``metadata_props``; ``glae.inference_backends`` reads
them back.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import torch

from .errors import MissingExtraError
from .fileio import atomic_write
from .models.pair import InferenceModel, ModelPair
from .models.routed import INPUT_NAME, ROUTED_OUTPUTS, RoutedAgeModel
from .routing import RoutingMode, routing_mode

METADATA_PREFIX = "glae."
ONNX_EXTRA = "ONNX export needs onnx and onnxscript: pip install 'glae[onnx]'"
DEFAULT_OPSET = 18
"""The opset torch's exporter writes natively (its torchlib); its files (ONNX IR version 10) run
on onnxruntime 1.18 and later."""
MIN_OPSET = DEFAULT_OPSET
"""Below it torch converts the graph down and, when that fails (it does for this graph), logs
the failure and writes opset 18 anyway: refused up front instead."""


def onnx_metadata(model: InferenceModel, mode: RoutingMode, info: dict[str, Any]) -> dict[str, str]:
    """String key/values for ``metadata_props``: enough to preprocess and interpret outputs."""
    config = model.config
    values: dict[str, Any] = {
        "model": config.to_dict(),  # a pair's first member: input size and age range are both members'
        "info": info,
        "routing_mode": mode,
        "input_size": config.input_size,
        "max_age": config.max_age,
        # eval_transform: resize to S x S, RGB scaled to [0, 1], then (x - mean) / std per channel.
        "pixel_mean": list(model.normalization.mean),
        "pixel_std": list(model.normalization.std),
        # How the 90% interval is read from `probs` (glae.calibration); null: its raw quantiles.
        "calibration": None if model.calibration is None else model.calibration.to_dict(),
    }
    if isinstance(model, ModelPair):
        values["members"] = model.member_settings()
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()}


def check_opset(opset: int) -> None:
    """Refuse an opset this graph cannot be written in, before the export starts."""
    from torch.onnx._constants import ONNX_MAX_OPSET

    if not MIN_OPSET <= opset <= ONNX_MAX_OPSET:
        raise ValueError(f"--opset {opset}: GLAE's graph needs an ONNX opset in {MIN_OPSET}..{ONNX_MAX_OPSET} (default {DEFAULT_OPSET})")


def is_glae_export(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an ONNX graph that ``glae export`` wrote: the only file an export may replace."""
    if importlib.util.find_spec("onnx") is None:
        raise MissingExtraError(ONNX_EXTRA)
    import onnx

    try:
        graph = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # not protobuf, cut short, unreadable: in any case not our export
        return False
    return any(prop.key == METADATA_PREFIX + "model" for prop in graph.metadata_props)


def export_onnx(model: InferenceModel, path: str | os.PathLike, info: dict[str, Any], opset: int = DEFAULT_OPSET) -> RoutingMode:
    """Write ``model`` with routing and metadata to ``path``; returns the routing mode used.

    torch's recommended exporter is used (``dynamo=True``: ``torch.export`` captures the
    graph, onnxscript translates it). The weights are embedded, never written beside the
    file as external data, so the ``.onnx`` file alone is the model; GLAE's networks are far
    below the 2 GB that a single ONNX file can hold.
    """
    if importlib.util.find_spec("onnxscript") is None:  # torch imports it, and onnx, mid-export
        raise MissingExtraError(ONNX_EXTRA)
    check_opset(opset)
    mode = routing_mode(info)
    routed = RoutedAgeModel(model, mode).eval()
    output_names = [*ROUTED_OUTPUTS, *(f"{head}_probs" for head in routed.heads)]
    size = model.config.input_size
    # Batch 2: torch.export takes a size of 1 for a constant, never for the dynamic batch.
    example = torch.zeros(2, 3, size, size, device=next(model.parameters()).device)
    # verbose=False: no progress lines on stdout, which holds the command's result.
    program = torch.onnx.export(
        routed, (example,), input_names=[INPUT_NAME], output_names=output_names, opset_version=opset,
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
    )
    assert program is not None  # only the TorchScript exporter returns None
    program.model.metadata_props.update(onnx_metadata(model, mode, info))
    atomic_write(path, lambda temp: program.save(temp, external_data=False))
    return mode
