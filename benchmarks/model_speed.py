"""Routed CPU inference of model files against a reference model's (the shipped one), timed in one run.

Issue #13's speed limit: a replacement must predict at >= 0.8x the shipped model's images/s.
Each file runs through the backend ``glae predict`` uses (``TorchRoutedPredictor``: both views,
both heads, routing), on random normalized images at batch 32 and at batch 1; rounds are
interleaved so that a slower moment of the machine hits every file alike, and each file
keeps its best round. With ``--photo``, a whole ``glae predict`` of that photo (reading, face
detection, the model) is timed too, which is what one request to ``glae serve`` costs. Run it
on an otherwise idle machine.

    python benchmarks/model_speed.py runs/better_model/pair_l0_l2/model.safetensors \
        --photo ../shared/data/utkface/26_0_1_20170117194404976.jpg.chip.jpg \
        --json benchmarks/results/better_model/pair_l0_l2_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from glae.estimator import AgeEstimator, resolve_model_path
from glae.inference_backends import RoutedPredictor, TorchRoutedPredictor


def images_per_second(predictor: RoutedPredictor, batch: int, steps: int) -> float:
    size = predictor.config.input_size
    images = torch.randn(batch, 3, size, size)
    predictor.predict_routed(images)  # warm-up: oneDNN picks its kernels on the first call
    started = time.perf_counter()
    for _ in range(steps):
        predictor.predict_routed(images)
    return batch * steps / (time.perf_counter() - started)


def photos_per_second(estimator: AgeEstimator, photo: Path, steps: int) -> float:
    estimator.predict(photo)  # warm-up, as above
    started = time.perf_counter()
    for _ in range(steps):
        estimator.predict(photo)
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="model files to time against the reference")
    parser.add_argument("--reference", type=Path, help="the model the others are compared with (default: the shipped one)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--photo", type=Path, help="also time glae predict of this photo, face detection included")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    files = {"reference": resolve_model_path(args.reference), **{str(path): path for path in args.models}}
    estimators = {name: AgeEstimator.load(path) for name, path in files.items()} if args.photo else {}
    # Each file is loaded once: a photo's estimator holds the predictor the batch timings use.
    predictors = {name: estimators[name].predictor if estimators else TorchRoutedPredictor.load(path) for name, path in files.items()}
    # setting -> (what is counted, how to time one round)
    settings = {
        "batch 32": ("images", lambda name: images_per_second(predictors[name], 32, 4)),
        "batch 1": ("images", lambda name: images_per_second(predictors[name], 1, 40)),
        **({"whole photo": ("photos", lambda name: photos_per_second(estimators[name], args.photo, 10))} if args.photo else {}),
    }
    best = {name: dict.fromkeys(settings, 0.0) for name in files}
    for _ in range(args.rounds):
        for name in files:
            for setting, (_, timed) in settings.items():
                best[name][setting] = max(best[name][setting], timed(name))
    rows = {
        name: {"file": os.path.relpath(files[name]), "bytes": files[name].stat().st_size,
               **{setting: {f"{settings[setting][0]}_per_s": round(rate, 1), "vs_reference": round(rate / best["reference"][setting], 3)}
                  for setting, rate in rates.items()}}
        for name, rates in best.items()
    }
    for name, row in rows.items():
        print(f"{name} ({row['bytes'] / 2**20:.1f} MiB): " + ", ".join(
            f"{setting} {row[setting][f'{unit}_per_s']} {unit}/s ({row[setting]['vs_reference']:.2f}x)" for setting, (unit, _) in settings.items()))
    if args.json:
        record = {"threads": torch.get_num_threads(), "rounds": args.rounds, "photo": str(args.photo) if args.photo else None, "models": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")

if __name__ == "__main__":
    main()
