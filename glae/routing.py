"""Adaptive Routing (Section III-D, Eq. 11): per image, trust the head that a flip disturbs least.

Pure and inference-only: it consumes the probabilities ``AgeModel.predict_views`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .losses import expected_age, flip_kl

RoutingMode = Literal["routing", "vanilla", "balanced", "bigger"]
ROUTING_MODES: tuple[RoutingMode, ...] = ("routing", "vanilla", "balanced", "bigger")


@dataclass
class RoutedPrediction:
    """Per-image result of one routing mode.

    Attributes:
        probs: ``[B, K+1]`` flip-averaged distribution of the chosen head (the paper's test
            protocol averages an image and its flip, Section V-A).
        ages: ``[B]`` expectation of ``probs`` (Eq. 3).
        used_balanced: ``[B]`` bool, True where the balanced head was chosen.
    """

    probs: Tensor
    ages: Tensor
    used_balanced: Tensor


def route(views: dict[str, Tensor], mode: RoutingMode = "routing") -> RoutedPrediction:
    """Choose a head per image.

    Args:
        views: ``{"vanilla": [2, B, K+1], "balanced": [2, B, K+1]}`` probabilities of the
            original (index 0) and flipped (index 1) view; ``balanced`` may be absent for
            ``mode="vanilla"``.
        mode: ``routing`` picks the head with the smaller Υ = KL(p, p_flip), exactly as
            Algorithm 1 (vanilla if Υ1 < Υ2, otherwise balanced); ``bigger`` picks the larger
            Υ (Table IX's control row: vanilla if Υ1 > Υ2); ``vanilla`` / ``balanced`` always
            use one head.
    """
    vanilla = views["vanilla"]
    batch = vanilla.shape[1]
    if mode == "vanilla":
        used_balanced = torch.zeros(batch, dtype=torch.bool, device=vanilla.device)
    elif mode == "balanced":
        used_balanced = torch.ones(batch, dtype=torch.bool, device=vanilla.device)
    elif mode in ("routing", "bigger"):
        balanced = views["balanced"]
        upsilon_vanilla = flip_kl(vanilla[0], vanilla[1])
        upsilon_balanced = flip_kl(balanced[0], balanced[1])
        used_balanced = upsilon_vanilla >= upsilon_balanced if mode == "routing" else upsilon_vanilla <= upsilon_balanced
    else:
        raise ValueError(f"unknown routing mode {mode!r}; choose one of {ROUTING_MODES}")
    chosen = vanilla.mean(0)
    if used_balanced.any():
        chosen = torch.where(used_balanced[:, None], views["balanced"].mean(0), chosen)
    return RoutedPrediction(probs=chosen, ages=expected_age(chosen), used_balanced=used_balanced)
