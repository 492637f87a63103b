"""Turn per-image probabilities of both heads into the paper's metrics for every routing mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .calibration import IntervalCalibration, age_interval, fit_temperature, interval_report
from .data.datasets import AgeSample
from .data.images import AgeImageDataset
from .data.transforms import eval_transform
from .engine import predict_views_dataset
from .metrics import AGE_GROUPS, age_class, epsilon_error, summarize
from .models.pair import InferenceModel
from .routing import ROUTING_MODES, RoutingMode, heads_for, route


def available_modes(views: dict[str, Tensor]) -> tuple[RoutingMode, ...]:
    """All modes when a balanced head was trained, otherwise only ``vanilla``."""
    return ROUTING_MODES if "balanced" in views else ("vanilla",)


def routing_usage(ages: Tensor, used_balanced: Tensor) -> dict[str, Any]:
    """Share of images routed to each head, overall and per age group of the age class (Fig. 4), as the metrics group."""
    classes = age_class(ages)
    groups: dict[str, dict[str, Any]] = {}
    for label, low, high in AGE_GROUPS:
        inside = (classes >= low) & (classes < high)
        count = int(inside.sum())
        balanced = float(used_balanced[inside].float().mean()) if count else None
        groups[label] = {"n": count, "vanilla": None if balanced is None else 1.0 - balanced, "balanced": balanced}
    balanced_share = float(used_balanced.float().mean())
    return {"overall": {"vanilla": 1.0 - balanced_share, "balanced": balanced_share}, "groups": groups}


def evaluate_views(
    views: dict[str, Tensor], ages: Tensor, stds: Tensor, mode: RoutingMode = "routing",
    calibration: IntervalCalibration | None = None,
) -> dict[str, Any]:
    """The evaluation report of ``glae eval`` (see ``glae.reports`` for its layout).

    Top-level numbers describe ``mode``; ``modes`` holds every mode the heads allow, so
    one pass over the data gives all rows of Table IX. ``routing`` is the head usage of
    Adaptive Routing (``None`` without a balanced head). ``interval_90`` is the coverage
    and width of ``mode``'s 90% intervals, read as ``calibration`` (fitted on ``mode``'s
    distributions) says.
    """
    modes = available_modes(views)
    if mode not in modes:
        raise ValueError(f"mode {mode!r} needs a trained balanced head; this model supports {modes}")
    known_std = (torch.isfinite(stds) & (stds > 0)).numpy()  # the epsilon-error covers these (``epsilon_images``)
    truth = ages.numpy()
    per_mode: dict[str, dict[str, Any]] = {}
    routed = {}
    for name in modes:
        routed[name] = route(views, name)
        predicted = routed[name].ages.numpy()
        summary = summarize(truth, predicted, None)
        summary.pop("aar_detail")
        if known_std.any():
            summary["epsilon_error"] = epsilon_error(truth[known_std], predicted[known_std], stds.numpy()[known_std])
        summary["epsilon_images"] = int(known_std.sum())
        per_mode[name] = summary
    report = dict(per_mode[mode])
    report["mode"] = mode
    report["routing"] = routing_usage(ages, routed["routing"].used_balanced) if "routing" in routed else None
    report["interval_90"] = interval_report(age_interval(routed[mode].probs.double(), calibration), ages, AGE_GROUPS)
    report["interval_90"]["calibrated"] = calibration is not None
    report["modes"] = per_mode
    return report


@dataclass(frozen=True)
class InferencePass:
    """How one flip-TTA pass over a list of faces runs (``glae eval``, validation, calibration)."""

    device: torch.device
    batch_size: int = 64
    num_workers: int = 2
    channels_last: bool = True
    amp: bool = False
    show_progress: bool = False


def predict_samples(
    model: InferenceModel, samples: list[AgeSample], mode: RoutingMode, run: InferencePass
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """One flip-TTA pass of ``model`` over ``samples`` (the heads ``mode`` needs): ``(views, ages, stds)``."""
    loader = DataLoader(
        AgeImageDataset(samples, eval_transform(model.config.input_size, model.normalization)),
        batch_size=run.batch_size, num_workers=run.num_workers, pin_memory=run.device.type == "cuda",
    )
    views, ages, stds = predict_views_dataset(
        model, loader, run.device, heads_for(mode), run.channels_last, run.amp, run.show_progress
    )
    for head, probabilities in views.items():
        if not bool(torch.isfinite(probabilities).all()):
            raise ValueError(
                f"the {head} head's predictions are not finite (NaN or inf): the model diverged in training; "
                "retrain with a lower learning rate or with clip_grad_norm set"
            )
    return views, ages, stds


def evaluate_samples(
    model: InferenceModel, samples: list[AgeSample], mode: RoutingMode, run: InferencePass, model_mode: RoutingMode | None = None,
) -> dict[str, Any]:
    """One pass of ``model`` over ``samples``, then the report of ``mode``.

    ``model_mode`` (default ``mode``) is how the model predicts (``routing_mode`` of its file):
    every head it has is run, so the report holds all its modes, and its calibration, fitted
    on that mode's distributions, reads the intervals only when ``mode`` is that mode;
    another mode's intervals are its raw quantiles.
    """
    model_mode = model_mode or mode
    views, ages, stds = predict_samples(model, samples, model_mode, run)
    return evaluate_views(views, ages, stds, mode, model.calibration if mode == model_mode else None)


def calibrate_samples(model: InferenceModel, samples: list[AgeSample], mode: RoutingMode, run: InferencePass) -> IntervalCalibration:
    """Fit the model's 90% interval on faces it never trained on (a validation part), routed by ``mode``."""
    views, ages, _ = predict_samples(model, samples, mode, run)
    return fit_temperature(route(views, mode).probs, ages)
