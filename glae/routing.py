"""Adaptive Routing (Section III-D, Eq. 11): per image, trust the head that a flip disturbs least.

Pure and inference-only: it consumes the probabilities ``AgeModel.predict_views`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from .losses import expected_age, flip_kl

RoutingMode = Literal["routing", "vanilla", "balanced", "bigger"]
ROUTING_MODES: tuple[RoutingMode, ...] = get_args(RoutingMode)  # one list: add a mode to RoutingMode alone


def routing_mode(info: dict[str, Any]) -> RoutingMode:
    """The head choice a model file supports: routing needs a balanced head trained in stage 2."""
    return "routing" if info.get("balanced_trained") else "vanilla"


def heads_for(mode: RoutingMode) -> tuple[str, ...]:
    """The heads a mode reads: only ``vanilla`` needs no balanced head."""
    return ("vanilla",) if mode == "vanilla" else ("vanilla", "balanced")


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
    if mode not in ROUTING_MODES:
        raise ValueError(f"unknown routing mode {mode!r}; choose one of {ROUTING_MODES}")
    vanilla = views["vanilla"]
    if mode == "vanilla":
        return _prediction(vanilla.mean(0), vanilla.new_zeros(vanilla.shape[1], dtype=torch.bool))
    balanced = views["balanced"]
    if mode == "balanced":
        used_balanced = balanced.new_ones(balanced.shape[1], dtype=torch.bool)
    else:
        upsilon_vanilla = flip_kl(vanilla[0], vanilla[1])
        upsilon_balanced = flip_kl(balanced[0], balanced[1])
        used_balanced = upsilon_vanilla >= upsilon_balanced if mode == "routing" else upsilon_vanilla <= upsilon_balanced
    # A per-element select with no data-dependent branch, so the choice traces into an ONNX graph.
    return _prediction(torch.where(used_balanced[:, None], balanced.mean(0), vanilla.mean(0)), used_balanced)


def _prediction(probs: Tensor, used_balanced: Tensor) -> RoutedPrediction:
    return RoutedPrediction(probs=probs, ages=expected_age(probs), used_balanced=used_balanced)
