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
from safetensors.torch import load_file, save_file
from torch import nn

from .engine import unwrap
from .fileio import atomic_write
from .models.glae import AgeModel, ModelConfig

METADATA_KEY = "glae"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or not a GLAE file; the message names it."""


def save_model(path: str | os.PathLike, model: nn.Module, info: dict[str, Any] | None = None, half: bool = False) -> None:
    """Write weights + ``ModelConfig`` + ``info`` (JSON-safe facts: stages trained, metrics...)."""
    model = unwrap(model)  # DDP wraps the model; save what it wraps
    dtype = torch.float16 if half else None
    tensors = {
        name: (t.to(dtype) if dtype is not None and t.is_floating_point() else t).detach().cpu().contiguous()
        for name, t in model.state_dict().items()
    }
    metadata = {METADATA_KEY: json.dumps({"model": model.config.to_dict(), "info": info or {}})}
    atomic_write(path, lambda temp: save_file(tensors, temp, metadata=metadata))


def read_model_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``{"model": ..., "info": ...}`` record of a model file, without loading weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error})") from None
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a GLAE model (no '{METADATA_KEY}' metadata)")
    return json.loads(metadata[METADATA_KEY])


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[AgeModel, dict[str, Any]]:
    """Rebuild the network from a model file; returns ``(model in eval mode, info)``."""
    record = read_model_metadata(path)
    config = ModelConfig.from_dict({**record["model"], "pretrained": False})
    model = AgeModel(config)
    state = load_file(str(path))
    reference = model.state_dict()
    state = {name: tensor.to(reference[name].dtype) if name in reference else tensor for name, tensor in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), record["info"]


def save_training_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    atomic_write(path, lambda temp: torch.save(state, temp))


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: cannot read training state ({error})") from None
