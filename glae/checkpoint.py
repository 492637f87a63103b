"""Safe, atomic, self-describing checkpoints.

Two kinds of file:

* a **model file** (``.safetensors``): weights plus the ``ModelConfig`` and facts about the
  training in the safetensors metadata, so ``load_model`` rebuilds the network from the
  file alone, and loading can never run code;
* a **training state** (``.pt``): model, optimizer, scheduler and progress counters for
  resume, written with ``torch.save`` and read with ``torch.load(weights_only=True)``,
  which refuses anything but tensors and plain containers.

Every write goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target: a ``kill -9`` at any moment leaves the previous file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from . import __version__
from .calibration import IntervalCalibration
from .devices import unwrap
from .errors import MissingExtraError
from .fileio import atomic_write, atomic_write_bytes
from .models.backbones import InputNormalization
from .models.glae import PAPER_INPUT, AgeModel, ModelConfig
from .models.pair import InferenceModel, ModelPair
from .typed import is_finite_number, parse_json

METADATA_KEY = "glae"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or not a GLAE file; the message names it."""


def save_model(path: str | os.PathLike, model: nn.Module, info: dict[str, Any] | None = None, half: bool = False) -> None:
    """Write weights + ``ModelConfig`` (a pair: each member's) + ``info`` (JSON-safe facts: stages trained, metrics...)."""
    if not isinstance(model, ModelPair):
        model = unwrap(model)  # DDP wraps the model; save what it wraps
    dtype = torch.float16 if half else None
    tensors = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in model.state_dict().items()
    }
    settings: dict[str, Any] = (
        {"members": model.member_settings()}
        if isinstance(model, ModelPair) else {"model": model.config.to_dict()}
    )
    record = {**settings, "input": model.normalization._asdict(), "info": info or {}}
    if model.calibration is not None:
        record["calibration"] = model.calibration.to_dict()
    metadata = {METADATA_KEY: json.dumps(record)}
    # Serialized in memory, then written by Python: a full disk is then an OSError (ENOSPC),
    # where safetensors' own file writer can report success on a short write.
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


def stores_half(path: str | os.PathLike) -> bool:
    """Whether a model file stores float16 weights (the shipped one does), so a rewrite keeps its size."""
    with safe_open(str(path), framework="pt") as handle:
        return any(handle.get_slice(name).get_dtype() == "F16" for name in handle.keys())


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The validated ``{"members", "input", "calibration", "info"}`` record of a model file, without loading weights.

    ``members`` holds the settings of each network: one, or two for a ``ModelPair`` (whose
    file stores them under ``members`` instead of ``model``, so an older GLAE refuses it).

    ``input`` is the pixel normalization the network was trained with (``mean``, ``std``
    per RGB channel of [0, 1] pixels); files written before it was recorded used the paper's.
    ``calibration`` is the ``IntervalCalibration`` of its 90% interval, or None (raw quantiles).

    This is the one place a model file's metadata is checked: every command that reads a
    model (eval, predict, serve, export, stage 2's init_from) gets one line naming the file
    and the key that is missing, null, of the wrong type or out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} " + ("is a folder, not a file" if path.is_dir() else "does not exist"))
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except PermissionError:
        raise CheckpointError(f"cannot read model file {path}: permission denied; make it readable (chmod +r)") from None
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a GLAE model (no '{METADATA_KEY}' metadata)")
    return _parse_record(path, metadata[METADATA_KEY])


def _parse_record(path: Path, text: str) -> dict[str, Any]:
    """Check the JSON record's shape and every model setting, naming the bad key."""
    where = f"{path}: metadata '{METADATA_KEY}'"
    # An unknown setting is most often a newer GLAE's: the advice says so, with this version.
    advice = f"the file is damaged, was not written by glae train, or needs a newer GLAE than this {__version__}"
    try:
        record = parse_json(text)
    except ValueError as error:
        raise CheckpointError(f"{where} {error}; {advice}") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} must be a JSON object, got {type(record).__name__}; {advice}")
    members = _member_settings(record, where, advice)
    if not isinstance(record.get("info"), dict):
        found = "missing" if "info" not in record else f"a {type(record['info']).__name__}"
        raise CheckpointError(f"{where}: key 'info' must be a JSON object, found {found}; {advice}")
    for settings in members:
        try:
            ModelConfig.from_dict(settings)
        except ValueError as error:
            raise CheckpointError(f"{where}: {error}; {advice}") from None
    normalization = _parse_normalization(record.get("input", PAPER_INPUT._asdict()))
    if normalization is None:
        raise CheckpointError(f"{where}: key 'input' must hold 'mean' and 'std', three finite numbers each (std > 0); {advice}")
    calibration = None
    if record.get("calibration") is not None:
        try:
            calibration = IntervalCalibration.from_dict(record["calibration"])
        except ValueError as error:
            raise CheckpointError(f"{where}: key 'calibration': {error}; {advice}") from None
    return {"members": members, "input": normalization, "calibration": calibration, "info": record["info"]}


def _member_settings(record: dict[str, Any], where: str, advice: str) -> list[dict[str, Any]]:
    """``[model]`` of a single network's file, or the two ``members`` of a pair's."""
    if "members" in record:
        members = record["members"]
        if not (isinstance(members, list) and len(members) == 2 and all(isinstance(m, dict) for m in members)):
            raise CheckpointError(f"{where}: key 'members' must list two JSON objects (a model pair); {advice}")
        return members
    if not isinstance(record.get("model"), dict):
        found = "missing" if "model" not in record else f"a {type(record['model']).__name__}"
        raise CheckpointError(f"{where}: key 'model' must be a JSON object, found {found}; {advice}")
    return [record["model"]]


def _parse_normalization(value: Any) -> InputNormalization | None:
    """Three finite means and three positive finite stds, or None when the record is malformed."""
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        return None
    parts: list[tuple[float, float, float]] = []
    for key in ("mean", "std"):
        numbers = value[key]
        if not (isinstance(numbers, (list, tuple)) and len(numbers) == 3 and all(is_finite_number(x) for x in numbers)):
            return None
        parts.append((float(numbers[0]), float(numbers[1]), float(numbers[2])))
    if min(parts[1]) <= 0:
        return None
    return InputNormalization(parts[0], parts[1])



def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[InferenceModel, dict[str, Any]]:
    """Rebuild the network (or pair) from a model file; returns ``(model in eval mode, info)``.

    Weights that do not fit the configuration, or that hold NaN or infinity (a run that
    diverged), are refused here, so no command ever prints or serves a ``nan`` age.
    """
    path = Path(path)
    record = read_model_metadata(path)
    _check_shapes_match_file(path, _build(path, record, torch.device("meta")))
    model = _build(path, record, torch.device("cpu"))
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read its weights ({error}); the file is damaged") from None
    reference = model.state_dict()
    state = {name: tensor.to(reference[name].dtype) for name, tensor in state.items()}  # names and shapes checked above
    _check_finite(path, state)  # after the cast: a float8 weight has no isfinite of its own
    model.load_state_dict(state)
    model.calibration = record["calibration"]
    return model.to(device).eval(), record["info"]


def _build(path: Path, record: dict[str, Any], device: torch.device) -> InferenceModel:
    """The network (or pair) the metadata describes, without weights, its tensors on ``device``."""
    try:
        with device:
            networks = [AgeModel(ModelConfig.from_dict({**settings, "pretrained": False})) for settings in record["members"]]
        for network in networks:
            network.normalization = record["input"]  # what it was trained with, not what a rebuild without weights would pick
        return networks[0] if len(networks) == 1 else ModelPair(*networks)
    except MissingExtraError:
        raise
    except Exception as error:  # the metadata is the file's: any backbone it names may refuse it in its own way
        raise CheckpointError(f"{path}: its model settings do not build a network ({type(error).__name__}: {error})") from None


def _check_shapes_match_file(path: Path, skeleton: nn.Module) -> None:
    """Refuse a file whose tensors are not the network's before any memory is allocated for it.

    The skeleton lives on the meta device (shapes, no storage), and safetensors bounds the
    header's shapes by the file's size, so metadata describing a huge network next to a
    few bytes of weights costs nothing here instead of gigabytes of memory.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            stored = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: cannot read its weights ({error}); the file is damaged") from None
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, shape in expected.items():
        if stored[name] != shape:
            raise CheckpointError(
                f"{path}: weights do not match the model its metadata describes ({name}: the file holds "
                f"{list(stored[name])}, the model needs {list(shape)})"
            )


def _check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise diverged_weight(path, name)


def diverged_weight(path: str | os.PathLike, name: str) -> CheckpointError:
    """The refusal of a model (file or ONNX export) whose weight ``name`` holds NaN or infinity."""
    return CheckpointError(
        f"{path}: weight {name} holds NaN or infinity: the model diverged in training; "
        "retrain with a lower learning rate or with clip_grad_norm set"
    )


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    atomic_write(path, lambda temp: _torch_save(state, temp))


def _torch_save(state: dict[str, Any], temp: str) -> None:
    """``torch.save`` through a Python file: a full disk is an OSError, not a zip-writer RuntimeError."""
    with open(temp, "wb") as stream:
        torch.save(state, stream)


TRAINING_STATE_KEYS = ("stage", "epoch", "step", "model", "optimizer", "scheduler", "rng", "history")
"""What every training state holds, whatever the GLAE version that wrote it."""


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Tensors and plain containers only; torch's advice to lower that guard is never passed on.

    Any other torch file (a bare state dict, another tool's checkpoint) is refused in one
    line, before a resume would stop at its first missing key.
    """
    if not Path(path).is_file():
        raise CheckpointError(f"training state {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: holds objects other than tensors, which GLAE never loads; it is not a GLAE training state "
            "(move it away to restart the run)"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path}: cannot read training state ({detail}); move it away to restart the run") from None
    missing = [key for key in TRAINING_STATE_KEYS if key not in state] if isinstance(state, dict) else list(TRAINING_STATE_KEYS)
    if missing:
        raise CheckpointError(
            f"{path}: not a GLAE training state (no {', '.join(missing)}); move it away to restart the run"
        )
    return state
