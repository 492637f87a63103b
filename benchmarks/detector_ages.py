"""What a detector's landmarks cost in age error: the same photos through each ``--detector``.

Each of ``--images`` UTKFace faces (spread over the sorted folder) is pasted at 160 px into
a grey 640x480 photo at a place that moves along the list; the shipped model predicts its
age with each detector. Reported: each detector's MAE against the UTKFace labels on the
photos where every detector found one face, and the paired difference of absolute errors
(detector minus MTCNN) with a bootstrap 95% interval. The shipped model saw part of these
faces in training, so the MAEs are optimistic; the paired difference is the number.

Usage: python benchmarks/detector_ages.py [--data ../shared/data/utkface] [--images 400]
       [--json benchmarks/results/detector_ages.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from glae.estimator import AgeEstimator
from glae.faces.detector import DETECTORS, build_detector
from glae.predict_options import PredictOptions


def photo_of(path: Path, index: int) -> Image.Image:
    photo = Image.new("RGB", (640, 480), (128, 128, 128))
    photo.paste(Image.open(path).convert("RGB").resize((160, 160)), (60 + 5 * index % 400, 100 + 3 * index % 200))
    return photo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/detector_ages.json"))
    args = parser.parse_args()

    files = sorted(args.data.glob("*.jpg"))
    faces = files[:: len(files) // args.images][: args.images]
    truth = np.array([int(path.name.split("_")[0]) for path in faces], dtype=float)
    options = PredictOptions(device="cpu")
    plain = AgeEstimator.load(options=options)
    ages: dict[str, list[float | None]] = {}
    for name in DETECTORS:
        estimator = AgeEstimator(plain.predictor, options, build_detector(name, "cpu"))
        predictions = estimator.predict([photo_of(path, index) for index, path in enumerate(faces)])
        ages[name] = [p.faces[0].age if len(p.faces) == 1 else None for p in predictions]
    both = [k for k in range(len(faces)) if all(side[k] is not None for side in ages.values())]
    errors = {name: np.abs(np.array([side[k] for k in both], dtype=float) - truth[both]) for name, side in ages.items()}
    rng = np.random.default_rng(0)
    report: dict[str, object] = {"images": len(faces), "one_face_by_every_detector": len(both)}
    for name, error in errors.items():
        entry: dict[str, object] = {"mae": round(float(error.mean()), 3), "one_face": sum(a is not None for a in ages[name])}
        if name != "mtcnn":
            difference = error - errors["mtcnn"]
            means = [difference[rng.integers(0, len(difference), len(difference))].mean() for _ in range(2000)]
            entry["minus_mtcnn"] = round(float(difference.mean()), 3)
            entry["minus_mtcnn_95"] = [round(float(q), 3) for q in np.percentile(means, [2.5, 97.5])]
            entry["age_change_median"] = round(float(np.median(np.abs(np.array([ages[name][k] for k in both], dtype=float) - np.array([ages["mtcnn"][k] for k in both], dtype=float)))), 3)
        report[name] = entry
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
