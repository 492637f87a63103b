"""Age intervals: the quantiles of a predicted distribution, and how they are calibrated.

A model's raw "90% interval" (the 5% and 95% quantiles of its routed distribution) is
only as honest as the distribution is calibrated; the first shipped model's covered about
82% of held-out faces (docs/calibration.md). The calibration GLAE uses is a temperature
(``IntervalCalibration``, ``fit_temperature``), fitted on faces the model never trained on (the validation part):
the distribution is spread until its interval covers 90% of them. Split-conformal
widening (``conformal_quantile``) was the alternative measured against it
(``benchmarks/calibration.py``, docs/calibration.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .metrics import age_class
from .typed import is_finite_number


def quantile_interval(probs: Tensor, low: float, high: float) -> Tensor:
    """``[B, 2]`` quantiles of ``[B, K+1]`` distributions over ages, each age a 1-year bin.

    The CDF is interpolated linearly inside the bin of age ``k`` (``[k - 0.5, k + 0.5]``),
    so the bounds are not rounded to whole years.
    """
    cdf = probs.cumsum(-1)
    levels = torch.tensor([low, high], dtype=probs.dtype).expand(len(probs), 2).contiguous()
    index = torch.searchsorted(cdf, levels).clamp(max=probs.shape[-1] - 1)
    mass = probs.gather(1, index).clamp(min=1e-12)
    below = cdf.gather(1, index) - probs.gather(1, index)
    return (index - 0.5 + (levels - below) / mass).clamp(0, probs.shape[-1] - 1)


def conformal_quantile(scores: Tensor, level: float) -> float:
    """The ``ceil((n + 1) * level)``-th smallest of ``n`` scores: split-conformal's quantile.

    With it, a new exchangeable face's score is at most this value with probability at
    least ``level`` (Vovk et al.; Angelopoulos & Bates, 2021); ``inf`` when ``n`` is too
    small to promise that.

    Example:
        >>> conformal_quantile(torch.arange(1.0, 10.0), 0.9)  # n = 9: the 9th smallest
        9.0
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rank = math.ceil((len(scores) + 1) * level)
    if rank > len(scores):
        return math.inf
    return float(scores.flatten().sort().values[rank - 1])


class CalibrationError(ValueError):
    """No temperature makes the interval cover the level: the distributions are far off (an undertrained model)."""


INTERVAL_LEVEL = 0.9
"""The nominal coverage of the interval every prediction carries (``interval_90``)."""


@dataclass(frozen=True)
class IntervalCalibration:
    """How a model's 90% interval is read: from its distribution tempered by ``temperature``.

    ``softmax(log p / T)`` with T > 1 spreads the distribution (T = 1 leaves it as it is),
    so its 5%-95% quantile range widens until it covers 90% of faces the model never
    trained on. Chosen over split-conformal widenings of the interval because it kept the
    worst age group's validation coverage highest (``benchmarks/calibration.py``,
    docs/calibration.md). The predicted age is still the untempered expectation.
    """

    temperature: float
    coverage: float  # coverage of the fitting faces with this temperature
    faces: int  # how many faces it was fitted on

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "coverage": self.coverage, "faces": self.faces}

    @classmethod
    def from_dict(cls, data: Any) -> "IntervalCalibration":
        """From untrusted metadata: a mapping of a finite temperature in (0, 100], a coverage and a count."""
        if not isinstance(data, dict) or set(data) != {"temperature", "coverage", "faces"}:
            raise ValueError("calibration must be a mapping of temperature, coverage and faces")
        temperature, coverage, faces = data["temperature"], data["coverage"], data["faces"]
        if not (is_finite_number(temperature) and 0 < temperature <= 100):
            raise ValueError(f"calibration temperature must be a number in (0, 100], got {temperature!r}")
        if not (is_finite_number(coverage) and 0 <= coverage <= 1):
            raise ValueError(f"calibration coverage must be a number in [0, 1], got {coverage!r}")
        if isinstance(faces, bool) or not isinstance(faces, int) or faces < 1:
            raise ValueError(f"calibration faces must be a positive integer, got {faces!r}")
        return cls(float(temperature), float(coverage), faces)


def temper(probs: Tensor, temperature: float) -> Tensor:
    """``softmax(log p / T)``: the same ranking of ages, spread (T > 1) or sharpened (T < 1)."""
    if temperature == 1.0:
        return probs
    return torch.softmax(probs.clamp_min(1e-30).log() / temperature, dim=-1)


def age_interval(probs: Tensor, calibration: IntervalCalibration | None, level: float = INTERVAL_LEVEL) -> Tensor:
    """``[B, 2]`` central ``level`` interval of each distribution, read as ``calibration`` says (raw when None)."""
    if calibration is not None:
        probs = temper(probs, calibration.temperature)
    tail = (1 - level) / 2
    return quantile_interval(probs, tail, 1 - tail)


def covered(intervals: Tensor, truth: Tensor) -> Tensor:
    """``[B]`` bool: the true age lies inside the interval (bounds included)."""
    truth = truth.to(intervals.dtype)
    return (intervals[:, 0] <= truth) & (truth <= intervals[:, 1])


def fit_temperature(probs: Tensor, truth: Tensor, level: float = INTERVAL_LEVEL) -> IntervalCalibration:
    """The smallest temperature whose ``level`` intervals cover ``level`` of these faces (bisection).

    ``probs`` are the routed distributions of faces the model never trained on (a
    validation part), ``truth`` their ages. Coverage grows with the temperature, so the
    interval is as narrow as the coverage allows. An age above the last class K counts as K:
    no interval within 0..K covers it, and chasing it would widen every face's interval.
    """
    if len(probs) == 0:
        raise ValueError("no faces to fit the interval on (the validation part is empty)")
    probs = probs.double()
    truth = truth.clamp(max=probs.shape[-1] - 1)

    def coverage(temperature: float) -> float:
        return float(covered(quantile_interval(temper(probs, temperature), (1 - level) / 2, (1 + level) / 2), truth).double().mean())

    low, high = 0.05, 100.0
    if coverage(high) < level:
        raise CalibrationError(f"no temperature up to {high} gives {level:.0%} coverage on these faces")
    for _ in range(50):
        middle = math.sqrt(low * high)  # the temperature is a scale: bisect its logarithm
        if coverage(middle) >= level:
            high = middle
        else:
            low = middle
    temperature = math.ceil(high * 1e6) / 1e6  # 6 digits, rounded up: rounded down it can fall below the covering one
    return IntervalCalibration(temperature, coverage(temperature), len(probs))


def interval_report(intervals: Tensor, truth: Tensor, groups: Sequence[tuple[str, float, float]]) -> dict[str, Any]:
    """Coverage and mean width of the intervals, overall and per age group (``None`` for an empty group)."""
    inside = covered(intervals, truth).double()
    widths = (intervals[:, 1] - intervals[:, 0]).double()
    report: dict[str, Any] = {"coverage": float(inside.mean()), "mean_width": float(widths.mean()), "groups": {}}
    classes = age_class(truth)  # groups by age class, as the metrics
    for label, low, high in groups:
        mask = (classes >= low) & (classes < high)
        count = int(mask.sum())
        report["groups"][label] = {
            "n": count,
            "coverage": float(inside[mask].mean()) if count else None,
            "mean_width": float(widths[mask].mean()) if count else None,
        }
    return report
