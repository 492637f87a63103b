"""Is the elderly's underestimate a matter of variance, and how far does averaging get?

Averaging several models' age distributions removes much of what one training draw gets
wrong by chance. If the 66+ bias shrank with it, a better single model (distilled, longer
trained) could shrink it too; if it stays, the bias is shared by every draw. Each model
gives its vanilla head's flip-averaged distribution on the validation faces of one split;
the ensemble is their mean. Not a candidate: it costs one model's inference per member.
Validation by default; ``--part test`` is for the one diagnostic read that docs/better_model.md
fixes before it ("Session 27"), never for choosing a model.

    python benchmarks/ensemble_val.py runs/claims/glae_seed2 runs/claims/glae_flip_seed0 runs/claims/glae_flip_seed1 \
        --shipped --json benchmarks/results/better_model/ensemble_val.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glae.checkpoint import load_model
from glae.data import Split, load_dataset
from glae.estimator import resolve_model_path
from glae.evaluate import InferencePass, predict_samples
from glae.metrics import summarize
from tail_bias import headline


def vanilla_distribution(model_path: Path, split_file: Path, data: str, part: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """One model's flip-averaged vanilla distribution ``[N, K+1]`` on one part of the split, and the faces' ages."""
    model, info = load_model(model_path)
    index = load_dataset(data, info.get("data_format", "utkface"))
    split = Split.from_json(json.loads(split_file.read_text()), index.samples, index.root)
    views, ages, _ = predict_samples(model, getattr(split, part), "vanilla", InferencePass(torch.device("cpu"), 64, num_workers=1))
    return views["vanilla"].mean(0).numpy().astype(float), ages.numpy().astype(float)


def scored(truth: np.ndarray, distribution: np.ndarray) -> dict[str, Any]:
    ages = distribution @ np.arange(distribution.shape[1])
    return headline(summarize(truth, ages, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (model.safetensors, split.json), all on the same split")
    parser.add_argument("--shipped", action="store_true", help="add the shipped model (trained on the first run's split)")
    parser.add_argument("--part", choices=("val", "test"), default="val")
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    split_file = args.runs[0] / "split.json"
    parts = [json.loads((run / "split.json").read_text())[args.part] for run in args.runs]
    if any(part != parts[0] for part in parts):
        raise SystemExit(f"the runs were trained on different splits: their {args.part} faces differ")
    members = {str(run): run / "model.safetensors" for run in args.runs}
    if args.shipped:
        members["shipped"] = resolve_model_path(None)
    distributions, truth = {}, None
    for name, path in members.items():
        distributions[name], ages = vanilla_distribution(path, split_file, args.data, args.part)
        if truth is not None and not np.array_equal(truth, ages):
            raise SystemExit(f"{name} was evaluated on other faces than the first model")
        truth = ages
    assert truth is not None
    rows = {name: scored(truth, p) for name, p in distributions.items()}
    rows["ensemble (mean distribution)"] = scored(truth, np.mean(list(distributions.values()), axis=0))
    for name, row in rows.items():
        print(f"{name:40s} MAE {row['mae']:.3f} CMAE {row['cmae']:.3f} bias "
              + ", ".join(f"{g} {row['groups'][g]['bias']:+.2f}" for g in ("0-17", "18-65", "66+")))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"part": args.part, "faces": len(truth), "head": "vanilla", "models": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
