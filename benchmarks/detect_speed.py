"""Photos against aligned crops: how much face detection costs ``glae predict``, in one run.

Every side runs the shipped model through ``AgeEstimator.predict`` on the same UTKFace
faces: as the aligned 200x200 crops (``aligned=True``: decode + model), and as 640x480
JPEG photos with that face pasted at 160 px on a grey background (decode + MTCNN +
alignment + model), with four detectors:
  before        MTCNN as it was at ``--before`` (git), one photo at a time
  one_by_one    today's MTCNN, one photo at a time (``detect`` only)
  batched       today's MTCNN, ``detect_batch`` on the estimator's batches of photos
  blazeface     ``--detector blazeface``: BlazeFace's proposals, then R-Net and O-Net
The sides take turns, ``--rounds`` times; each rate is the median. The ratios photos/s
over crops/s are the numbers to watch (issue 16: 0.21 then, target 0.5). Each side's
age error against the faces' UTKFace labels shows what a detector's alignment costs.
Then the parts of the batched pipeline and of blazeface, one at a time: decode,
detection, alignment, model.

Usage: python benchmarks/detect_speed.py [--data ../shared/data/utkface] [--images 64]
       [--rounds 3] [--device cpu] [--before 9c4a61a] [--json benchmarks/results/detect_speed.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from glae.data.images import read_rgb
from glae.estimator import AgeEstimator, ImagePrediction
from glae.faces.align import ALIGNED_SIZE, align_face
from glae.faces.detector import DetectedFace, FaceDetector, build_detector, detect_batch
from glae.faces.mtcnn import MTCNNDetector
from glae.predict_options import PredictOptions

REPO = Path(__file__).resolve().parents[1]


def detector_at(commit: str, device: str) -> FaceDetector:
    """``MTCNNDetector`` as ``glae/faces/mtcnn.py`` was at ``commit``: the code before a change, timed in the same run."""
    path = "glae/faces/mtcnn.py"
    source = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    module = types.ModuleType("glae.faces.mtcnn_before")
    module.__package__ = "glae.faces"  # its relative imports resolve to today's package
    exec(compile(source, f"{commit}:{path}", "exec"), module.__dict__)
    return module.MTCNNDetector(device=device)


class OneByOne:
    """A detector seen through ``detect`` alone, so the estimator detects one photo at a time."""

    def __init__(self, detector: FaceDetector) -> None:
        self.detector = detector

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        return self.detector.detect(image)


def seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def make_photos(crops: list[Path], folder: Path) -> list[Path]:
    """Each crop pasted at 160 px into a grey 640x480 JPEG, at a place that moves along the list."""
    photos = []
    for index, path in enumerate(crops):
        photo = Image.new("RGB", (640, 480), (128, 128, 128))
        photo.paste(Image.open(path).convert("RGB").resize((160, 160)), (60 + 5 * index % 400, 100 + 3 * index % 200))
        photos.append(folder / f"{index}.jpg")
        photo.save(photos[-1], quality=92)
    return photos


def parts_ms(estimator: AgeEstimator, detector: FaceDetector, photos: list[Path]) -> dict[str, float]:
    """Milliseconds per photo of each part of the batched pipeline, timed apart."""
    images: list[Image.Image] = []
    faces: list[list[DetectedFace]] = []
    crops: list[Image.Image] = []
    batch = estimator.options.batch_size
    times = {
        "decode": seconds(lambda: images.extend(read_rgb(path) for path in photos)),
        "detect": seconds(lambda: faces.extend(f for s in range(0, len(images), batch) for f in detect_batch(detector, images[s : s + batch]))),
        "align": seconds(lambda: crops.extend(
            align_face(image, face.landmarks, ALIGNED_SIZE) for image, found in zip(images, faces) for face in estimator.face_filter(found)
        )),
        "model": seconds(lambda: estimator.predict(crops, aligned=True)),  # crops in memory: transform + model
    }
    return {part: round(1000 * value / len(photos), 1) for part, value in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--before", default="9c4a61a", help="commit whose MTCNN is 'before': the last one-photo-at-a-time detector")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/detect_speed.json"))
    args = parser.parse_args()

    files = sorted(args.data.glob("*.jpg"))
    crops = files[:: len(files) // args.images][: args.images]
    options = PredictOptions(device=args.device)
    detector = MTCNNDetector(device=args.device)
    plain = AgeEstimator.load(options=options, detector=detector)
    estimators = {
        "before": AgeEstimator(plain.predictor, options, detector_at(args.before, args.device)),
        "one_by_one": AgeEstimator(plain.predictor, options, OneByOne(detector)),
        "batched": plain,
        "blazeface": AgeEstimator(plain.predictor, options, build_detector("blazeface", args.device)),
    }
    elapsed: dict[str, list[float]] = {name: [] for name in ["crops", *estimators]}
    faces: dict[str, list[int]] = {}
    ages: dict[str, list[float | None]] = {}
    with tempfile.TemporaryDirectory() as folder:
        photos = make_photos(crops, Path(folder))
        for estimator in estimators.values():
            estimator.predict(photos[:4])  # warm-up
        for _ in range(args.rounds):
            crop_predictions: list[ImagePrediction] = []
            elapsed["crops"].append(seconds(lambda: crop_predictions.extend(plain.predict(crops, aligned=True))))
            ages["crops"] = [p.faces[0].age for p in crop_predictions]
            for name, estimator in estimators.items():
                predictions: list[ImagePrediction] = []
                elapsed[name].append(seconds(lambda: predictions.extend(estimator.predict(photos))))
                assert all(p.error is None for p in predictions), name
                faces[name] = [len(p.faces) for p in predictions]
                ages[name] = [p.faces[0].age if p.faces else None for p in predictions]
        parts = parts_ms(plain, detector, photos)
        blazeface_parts = parts_ms(estimators["blazeface"], estimators["blazeface"].detector, photos)
    assert faces["before"] == faces["one_by_one"] == faces["batched"], faces  # the same faces found, faster
    rates = {name: len(crops) / statistics.median(times) for name, times in elapsed.items()}
    truth = [int(path.name.split("_")[0]) for path in crops]
    found_by_all = [k for k in range(len(crops)) if all(side[k] is not None for side in ages.values())]
    age_mae = {name: round(statistics.fmean(abs(side[k] - truth[k]) for k in found_by_all), 3) for name, side in ages.items()}  # type: ignore[operator]
    report = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "images": len(crops),
        "rounds": args.rounds,
        "before_commit": args.before,
        "photos_with_one_face": {name: sum(count == 1 for count in counts) for name, counts in faces.items()},
        "age_mae_on_faces_found_by_all": {"faces": len(found_by_all), **age_mae},
        "per_s": {name: round(rate, 2) for name, rate in rates.items()},
        "ratio_to_crops": {name: round(rate / rates["crops"], 3) for name, rate in rates.items() if name != "crops"},
        "batched_parts_ms_per_photo": parts,
        "blazeface_parts_ms_per_photo": blazeface_parts,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
