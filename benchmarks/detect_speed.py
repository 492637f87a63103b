"""Photos against aligned crops: how much face detection costs ``glae predict``, in one run.

Both sides run the shipped model through ``AgeEstimator.predict`` on the same UTKFace
faces: once as the aligned 200x200 crops (``aligned=True``: decode + model), once as
640x480 JPEG photos with that face pasted at 160 px on a grey background (decode +
MTCNN + alignment + model). The ratio photos/s over crops/s is the number to watch
(issue 16 measured 0.21 on this 2-core CPU; its target is 0.5).

Usage: python benchmarks/detect_speed.py [--data ../shared/data/utkface] [--images 64]
       [--device cpu] [--json benchmarks/results/detect_speed.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from glae.estimator import AgeEstimator
from glae.predict_options import PredictOptions


def rate(estimator: AgeEstimator, files: list[Path], aligned: bool) -> float:
    estimator.predict(files[:4], aligned=aligned)  # warm-up
    started = time.perf_counter()
    predictions = estimator.predict(files, aligned=aligned)
    elapsed = time.perf_counter() - started
    assert all(p.error is None for p in predictions)
    return len(files) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/detect_speed.json"))
    args = parser.parse_args()

    files = sorted(args.data.glob("*.jpg"))
    crops = files[:: len(files) // args.images][: args.images]
    estimator = AgeEstimator.load(options=PredictOptions(device=args.device))
    with tempfile.TemporaryDirectory() as folder:
        photos = []
        for index, path in enumerate(crops):
            photo = Image.new("RGB", (640, 480), (128, 128, 128))
            photo.paste(Image.open(path).convert("RGB").resize((160, 160)), (60 + 5 * index % 400, 100 + 3 * index % 200))
            photos.append(Path(folder) / f"{index}.jpg")
            photo.save(photos[-1], quality=92)
        crops_per_s = rate(estimator, crops, aligned=True)
        photos_per_s = rate(estimator, photos, aligned=False)
    report = {
        "device": args.device, "images": len(crops), "crops_per_s": round(crops_per_s, 2),
        "photos_per_s": round(photos_per_s, 2), "ratio": round(photos_per_s / crops_per_s, 3),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
