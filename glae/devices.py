"""Where a model runs: the device ``--device auto`` means, and the model inside the wrappers
(DDP, ``torch.compile``) that training puts around it.

Inference (the estimator, model files) needs these and nothing else of the training loop.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .models.glae import AgeModel


def pick_device(preference: str = "auto") -> torch.device:
    """``auto``: a CUDA GPU when there is one, else the CPU; any other name as given."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def unwrap(model: nn.Module) -> AgeModel:
    """The model inside ``torch.compile`` and DDP wrappers; saving and inference always go through it."""
    inner: nn.Module = getattr(model, "_orig_mod", model)
    return cast(AgeModel, getattr(inner, "module", inner))
