"""Face filter defaults on measured data: recall on real faces against false detections.

Real faces: UTKFace crops pasted at several sizes into 640x480 scenes whose backgrounds
are scikit-image's photos without people, built here at run time (nothing is written
but the results). A pasted face is found when a detection overlaps its expected box
(MTCNN's median box on UTKFace crops, scaled) with IoU >= 0.4.
False detections: every detection in scikit-image's face-free photos (each as shipped,
mirrored and enlarged 1.6x), every detection in a scene away from the pasted crop, and
every detection in the cameraman photo other than his face (his ear scores ~0.79).
Also, with the default filter: recall of faces of each size beside a 160 px face
(``group_scenes``), for detectors that stop looking once they found a face.

The detector (``--detector``, MTCNN by default) runs once per image with no filter, 32 images at a time; each
(min score, min size) pair is then applied to the same detections, so "before" (no
filter, what GLAE did) and "after" (``glae.faces.filtering`` defaults) come from one run.

Usage: python benchmarks/face_filter.py [--data ../shared/data/utkface] [--faces 100]
       [--sizes 24 32 48 80 128 200] [--detector mtcnn] [--json benchmarks/results/face_filter.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from glae.data.images import read_rgb
from glae.faces.detector import DETECTORS, DetectedFace, build_detector, detect_batch
from glae.faces.filtering import DEFAULT_MIN_FACE_SCORE, DEFAULT_MIN_FACE_SIZE, FaceFilter
from glae.predict_options import PredictOptions

SCENE = (640, 480)
# MTCNN's median face box on 48 UTKFace crops (every 400th file), as fractions of the crop side.
FACE_BOX = (0.071, -0.077, 0.901, 0.976)
# The cameraman's face in scikit-image's ``camera`` (512x512), measured once: (x1, y1, x2, y2).
CAMERAMAN_FACE = (198, 119, 255, 192)
FACE_FREE = (
    "chelsea", "coffee", "coins", "hubble_deep_field", "immunohistochemistry", "moon", "page",
    "text", "rocket", "retina", "clock", "brick", "grass", "gravel", "colorwheel", "logo", "cell",
)
SCORES = (0.0, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
SIZES = (0.0, 16.0, 20.0, 24.0, 32.0, 40.0)


@dataclass
class Case:
    """One image and what a detection in it counts as."""

    kind: str  # "scene", "face_free" or "cameraman"
    image: Image.Image
    face: tuple[float, float, float, float] | None = None  # the real face, when there is one
    crop: tuple[float, float, float, float] | None = None  # detections here are neither hit nor false
    size: int = 0  # pasted crop side (scenes)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(box: tuple[float, ...], region: tuple[float, ...]) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


def face_free_photos() -> list[tuple[str, Image.Image]]:
    from skimage import data

    photos = []
    for name in FACE_FREE:
        pixels = getattr(data, name)()
        photos.append((name, read_rgb(np.ascontiguousarray(pixels[..., :3]) if pixels.ndim == 3 else pixels)))
    return photos


def _background(photo: Image.Image) -> Image.Image:
    return ImageOps.fit(photo, SCENE, Image.Resampling.BILINEAR)


def build_cases(data_dir: Path, faces: int, sizes: list[int], seed: int) -> list[Case]:
    rng = np.random.default_rng(seed)
    files = sorted(data_dir.glob("*.jpg"))
    crops = [files[i] for i in np.linspace(0, len(files) - 1, faces).astype(int)]
    photos = face_free_photos()
    cases = []
    for index, path in enumerate(crops):
        crop = read_rgb(path)
        for size in sizes:
            scene = _background(photos[(index + size) % len(photos)][1])
            x, y = (int(rng.integers(0, limit - size)) for limit in SCENE)
            scene.paste(crop.resize((size, size), Image.Resampling.BILINEAR), (x, y))
            face = tuple(float(v) for v in (x + FACE_BOX[0] * size, y + FACE_BOX[1] * size, x + FACE_BOX[2] * size, y + FACE_BOX[3] * size))
            cases.append(Case("scene", scene, face, (x, y, x + size, y + size), size))
    for _, photo in photos:
        larger = photo.resize((round(photo.width * 1.6), round(photo.height * 1.6)), Image.Resampling.BILINEAR)
        cases += [Case("face_free", photo), Case("face_free", ImageOps.mirror(photo)), Case("face_free", larger)]
    from skimage import data

    cases.append(Case("cameraman", read_rgb(data.camera()), tuple(map(float, CAMERAMAN_FACE))))
    return cases


def group_scenes(data_dir: Path, faces: int, sizes: list[int], seed: int) -> list[Case]:
    """Scenes with two faces: one of each size in the left half, and a 160 px face in the right half.

    A detector that looks for small faces only where it found no large one misses the first.
    """
    rng = np.random.default_rng(seed + 1)
    files = sorted(data_dir.glob("*.jpg"))
    crops = [files[i] for i in np.linspace(0, len(files) - 1, faces).astype(int)]
    photos = face_free_photos()
    cases = []
    for index, path in enumerate(crops):
        crop, other = read_rgb(path), read_rgb(crops[(index + 1) % len(crops)])
        for size in sizes:
            scene = _background(photos[(index + size) % len(photos)][1])
            scene.paste(other.resize((160, 160), Image.Resampling.BILINEAR), (440, int(rng.integers(0, 320))))
            x, y = int(rng.integers(0, 320 - size)), int(rng.integers(0, SCENE[1] - size))
            scene.paste(crop.resize((size, size), Image.Resampling.BILINEAR), (x, y))
            face = tuple(float(v) for v in (x + FACE_BOX[0] * size, y + FACE_BOX[1] * size, x + FACE_BOX[2] * size, y + FACE_BOX[3] * size))
            cases.append(Case("scene", scene, face, (x, y, x + size, y + size), size))
    return cases


def score_filter(cases: list[Case], detections: list[list[DetectedFace]], keep: FaceFilter) -> dict:
    """Recall per pasted size and false detections per kind of image, for one filter."""
    found: dict[int, list[bool]] = {}
    false = {"face_free": 0, "scene": 0, "cameraman": 0}
    images_with_false = 0
    for case, faces in zip(cases, detections):
        kept = keep(faces)
        hit = case.face is not None and any(iou(face.box, case.face) >= 0.4 for face in kept)
        if case.kind == "scene":
            found.setdefault(case.size, []).append(hit)
        wrong = [
            face for face in kept
            if (case.face is None or iou(face.box, case.face) < 0.4) and (case.crop is None or not _inside(face.box, case.crop))
        ]
        false[case.kind] += len(wrong)
        images_with_false += case.kind == "face_free" and bool(wrong)
    recall = {str(size): float(np.mean(hits)) for size, hits in sorted(found.items())}
    return {
        "min_score": keep.min_score,
        "min_size": keep.min_size,
        "recall": float(np.mean([h for hits in found.values() for h in hits])),
        "recall_by_size": recall,
        "false_face_free": false["face_free"],
        "face_free_images_with_false": images_with_false,
        "false_in_scenes": false["scene"],
        "false_cameraman": false["cameraman"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface")
    parser.add_argument("--faces", type=int, default=100, help="UTKFace crops, spread over the sorted folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 32, 48, 80, 128, 200], help="pasted crop sides in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detector", choices=list(DETECTORS), default="mtcnn")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/face_filter.json"))
    args = parser.parse_args()

    cases = build_cases(args.data, args.faces, args.sizes, args.seed)
    detector = build_detector(args.detector, "cpu")
    started = time.perf_counter()
    batch = PredictOptions().batch_size  # photos detected together, as by `glae predict`
    detections = [faces for start in range(0, len(cases), batch) for faces in detect_batch(detector, [case.image for case in cases[start : start + batch]])]
    elapsed = time.perf_counter() - started
    groups = group_scenes(args.data, args.faces, args.sizes, args.seed)
    group_faces = [faces for start in range(0, len(groups), batch) for faces in detect_batch(detector, [case.image for case in groups[start : start + batch]])]
    sweep = [score_filter(cases, detections, FaceFilter(score, size)) for score in SCORES for size in SIZES]
    before = score_filter(cases, detections, FaceFilter(0.0, 0.0))
    after = score_filter(cases, detections, FaceFilter())
    matched_scores = sorted(
        face.score for case, faces in zip(cases, detections) if case.face is not None
        for face in faces if iou(face.box, case.face) >= 0.4
    )
    false_scores = sorted(
        round(face.score, 4) for case, faces in zip(cases, detections) for face in faces
        if (case.face is None or iou(face.box, case.face) < 0.4) and (case.crop is None or not _inside(face.box, case.crop))
    )
    report = {
        "images": {kind: sum(case.kind == kind for case in cases) for kind in ("scene", "face_free", "cameraman")},
        "sizes": args.sizes,
        "faces": args.faces,
        "seed": args.seed,
        "detector": args.detector,
        "detect_seconds": round(elapsed, 1),
        "defaults": {"min_score": DEFAULT_MIN_FACE_SCORE, "min_size": DEFAULT_MIN_FACE_SIZE},
        "before": before,
        "after": after,
        # Recall of the left face of ``group_scenes``, beside a 160 px face, default filter.
        "recall_beside_160px_face": score_filter(groups, group_faces, FaceFilter())["recall_by_size"],
        "true_face_score_percentiles": {str(q): float(np.percentile(matched_scores, q)) for q in (0.5, 1, 2, 5, 10, 50)},
        "false_detection_scores": false_scores,
        "sweep": sweep,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{len(cases)} images in {elapsed:.0f} s; wrote {args.json}")
    print("recall beside a 160 px face (default filter):", report["recall_beside_160px_face"])
    print("| min score | min size | recall | " + " | ".join(f"{s} px" for s in args.sizes) + " | false (face-free) | false (scenes) | false (cameraman) |")
    print("|---" * (6 + len(args.sizes)) + "|")
    for row in [before, *sweep, after]:
        print(
            f"| {row['min_score']:g} | {row['min_size']:g} | {row['recall']:.3f} | "
            + " | ".join(f"{row['recall_by_size'][str(s)]:.2f}" for s in args.sizes)
            + f" | {row['false_face_free']} | {row['false_in_scenes']} | {row['false_cameraman']} |"
        )


if __name__ == "__main__":
    main()
