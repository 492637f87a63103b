"""Can a correction fitted on validation shrink the elderly's underestimate? Validation only.

Faces aged 66+ come out years too young (the shipped model: -3.8 on test). Part of it is
regression to the mean: an expected age is pulled towards the ages the model saw most.
The candidate correction is *quantile matching*: a monotone map that sends the q-th
quantile of the predicted ages to the q-th quantile of the true ages (``--levels``
quantiles, linear in between, slope 1 beyond the ends), fitted on one part of the
validation faces and applied to the other (``--folds``-fold cross-fitting, ``--repeats``
random partitions, averaged), so each number comes from faces the map never saw.

Decision rule, fixed before it was run on the candidate it decides for (docs/better_model.md):
the map becomes the default point estimate only if, cross-fitted, it shrinks the size of the
66+ bias (|mean signed error|) by at least 1 year *and* raises neither the validation MAE nor
the CMAE by more than 0.02.

    python benchmarks/tail_bias.py runs/better_model/lite2 --json benchmarks/results/better_model/tail_bias_lite2.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glae.checkpoint import load_model
from glae.config import load_config
from glae.data import Split, load_dataset, split_dataset
from glae.estimator import resolve_model_path
from glae.evaluate import InferencePass, predict_samples
from glae.metrics import summarize
from glae.routing import ROUTING_MODES, route

MIN_BIAS_GAIN = 1.0  # years of 66+ bias removed
MAX_METRIC_LOSS = 0.02  # MAE or CMAE added


def quantile_map(fit_pred: np.ndarray, fit_true: np.ndarray, levels: int):
    """The monotone map fitted on (predicted, true) ages of some faces: predicted quantile -> true quantile."""
    q = np.linspace(0, 1, levels)
    knots_x, knots_y = np.quantile(fit_pred, q), np.quantile(fit_true, q)

    def apply(pred: np.ndarray) -> np.ndarray:
        mapped = np.interp(pred, knots_x, knots_y)
        mapped = np.where(pred > knots_x[-1], knots_y[-1] + pred - knots_x[-1], mapped)
        return np.where(pred < knots_x[0], knots_y[0] + pred - knots_x[0], mapped)

    return apply


def cross_fitted(pred: np.ndarray, truth: np.ndarray, levels: int, folds: int, seed: int) -> np.ndarray:
    """Each face's corrected age from a map fitted on the other folds."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(pred)), folds)
    out = np.empty_like(pred)
    for k, held in enumerate(parts):
        fit = np.concatenate([part for j, part in enumerate(parts) if j != k])
        out[held] = quantile_map(pred[fit], truth[fit], levels)(pred[held])
    return out


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """What tail_prior and tail_gate share: a model and the split it was trained on (--model,
    and --split or --config), the cross-fitting (--folds, --repeats) and --json."""
    parser.add_argument("--model", help="a model file (default: the shipped model)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--split", type=Path, help="the split.json of the run that trained the model")
    where.add_argument("--config", help="the config whose seeded split the model was trained on")
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)


def parse_study_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.folds < 2 or args.repeats < 1:
        parser.error("--folds must be at least 2, --repeats at least 1")
    return args


def validation_views(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], np.ndarray, Split, dict[str, Any]]:
    """Both heads' flip views of the validation faces, their true ages, the split and the model's info."""
    model, info = load_model(resolve_model_path(args.model))
    if args.split is not None:
        index = load_dataset(args.data, info.get("data_format", "utkface"))
        split = Split.from_json(json.loads(args.split.read_text()), index.samples, index.root)
    else:
        config = load_config(args.config, [f"data.path={json.dumps(args.data)}"])
        index = load_dataset(args.data, config.data.format, config.data.csv_columns)
        split = split_dataset(index.samples, config.data)
    views, ages, _ = predict_samples(model, split.val, "routing", InferencePass(torch.device("cpu"), 64, num_workers=1))
    return views, ages.numpy().astype(float), split, info


def picked_on_other_folds(
    truth: np.ndarray, candidates: Sequence[Any], ages_for: Callable[[Any, np.ndarray], np.ndarray], folds: int, seed: int
) -> tuple[np.ndarray, list[Any]]:
    """Each face's age from the candidate with the lowest MAE + CMAE on the other folds; also the picks.

    ``ages_for(candidate, faces)`` gives the ages a candidate assigns to the faces at those indices.
    """
    parts = np.array_split(np.random.default_rng(seed).permutation(len(truth)), folds)
    out, picks = np.empty(len(truth)), []
    for k, held in enumerate(parts):
        fit = np.concatenate([part for j, part in enumerate(parts) if j != k])
        best = min(candidates, key=lambda c: _mae_plus_cmae(truth[fit], ages_for(c, fit)))
        out[held] = ages_for(best, held)
        picks.append(best)
    return out, picks


def _mae_plus_cmae(truth: np.ndarray, pred: np.ndarray) -> float:
    summary = summarize(truth, pred, None)
    return summary["mae"] + summary["cmae"]


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    return {"mae": summary["mae"], "cmae": summary["cmae"], "groups": summary["groups"]}


def mean_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of several summaries' MAE, CMAE and per-group MAE and bias (groups with faces)."""
    groups = {
        label: {key: float(np.mean([run["groups"][label][key] for run in runs])) for key in ("n", "mae", "bias")}
        for label, group in runs[0]["groups"].items() if group["n"]
    }
    return {"mae": float(np.mean([r["mae"] for r in runs])), "cmae": float(np.mean([r["cmae"] for r in runs])), "groups": groups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a glae train run folder (model.safetensors, split.json)")
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--levels", type=int, default=51)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.levels < 2 or args.folds < 2 or args.repeats < 1:
        parser.error("--levels and --folds must be at least 2, --repeats at least 1")

    model, info = load_model(args.run / "model.safetensors")
    index = load_dataset(args.data, info.get("data_format", "utkface"))
    split = Split.from_json(json.loads((args.run / "split.json").read_text()), index.samples, index.root)
    views, ages, _ = predict_samples(model, split.val, "routing", InferencePass(torch.device("cpu"), 64, num_workers=1))
    truth = ages.numpy().astype(float)
    result: dict[str, Any] = {"run": str(args.run), "part": "val", "faces": len(truth), "levels": args.levels,
                              "folds": args.folds, "repeats": args.repeats, "modes": {}}
    for mode in [m for m in ROUTING_MODES if m == "vanilla" or "balanced" in views]:
        pred = route(views, mode).ages.numpy().astype(float)
        before = headline(summarize(truth, pred, None))
        if before["groups"]["66+"]["bias"] is None:
            raise SystemExit("the validation part has no face aged 66+: nothing to correct")
        after = mean_summary([
            headline(summarize(truth, cross_fitted(pred, truth, args.levels, args.folds, seed), None))
            for seed in range(args.repeats)
        ])
        gain = abs(before["groups"]["66+"]["bias"]) - abs(after["groups"]["66+"]["bias"])
        adopt = gain >= MIN_BIAS_GAIN and after["mae"] - before["mae"] <= MAX_METRIC_LOSS and after["cmae"] - before["cmae"] <= MAX_METRIC_LOSS
        result["modes"][mode] = {"before": before, "after": after, "bias_gain_66": gain, "adopt": bool(adopt)}
        print(f"{mode}: MAE {before['mae']:.3f} -> {after['mae']:.3f}, CMAE {before['cmae']:.3f} -> {after['cmae']:.3f}; bias "
              + ", ".join(f"{g} {before['groups'][g]['bias']:+.2f} -> {after['groups'][g]['bias']:+.2f}" for g in after["groups"])
              + f"; adopt: {'yes' if adopt else 'no'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
