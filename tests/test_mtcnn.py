"""MTCNN on real UTKFace crops and composites with known boxes, on the CPU and the GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.data.images import read_rgb
from glae.faces.mtcnn import MTCNNDetector, MTCNNWeightsError

BACKGROUND = (90, 110, 130)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_one_face_in_real_utkface_crops(detector: MTCNNDetector, utk_crops: list[Path]) -> None:
    counts = [len(detector.detect(read_rgb(path))) for path in utk_crops]
    assert sum(count == 1 for count in counts) >= 9, counts


def test_composite_boxes_match_known_places(detector: MTCNNDetector, utk_crops: list[Path]) -> None:
    canvas = Image.new("RGB", (800, 600), BACKGROUND)
    crops = [read_rgb(path) for path in utk_crops[:3]]
    canvas.paste(crops[0], (40, 60))
    canvas.paste(crops[1].resize((150, 150)), (330, 400))
    rotated = crops[2].rotate(20, resample=Image.Resampling.BILINEAR, expand=True, fillcolor=BACKGROUND)
    canvas.paste(rotated, (520, 80))
    centre = (520 + rotated.width / 2, 80 + rotated.height / 2)
    known = [(40, 60, 240, 260), (330, 400, 480, 550), (centre[0] - 100, centre[1] - 100, centre[0] + 100, centre[1] + 100)]
    faces = detector.detect(canvas)
    assert len(faces) == 3
    for box in known:
        assert max(_iou(box, face.box) for face in faces) > 0.5, (box, [face.box for face in faces])
    assert faces[0].area >= faces[1].area >= faces[2].area  # largest first


@pytest.mark.parametrize("kind", ["noise", "gradient"])
def test_no_face_in_noise_or_gradient(detector: MTCNNDetector, kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "noise":
        pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], (300, 400, 3)).copy()
    assert detector.detect(Image.fromarray(pixels)) == []


def test_missing_weights_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(MTCNNWeightsError, match="pip install --no-deps facenet-pytorch"):
        MTCNNDetector(weights_dir=tmp_path)


def test_detector_asks_for_rgb(detector: MTCNNDetector) -> None:
    with pytest.raises(ValueError, match="read_rgb"):
        detector.detect(Image.new("L", (64, 64)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mtcnn_on_the_gpu_finds_the_cpu_faces(detector: MTCNNDetector, two_faces_photo: Image.Image) -> None:
    on_gpu = MTCNNDetector(device="cuda").detect(two_faces_photo)
    on_cpu = detector.detect(two_faces_photo)
    assert len(on_gpu) == len(on_cpu) == 2
    for a, b in zip(on_gpu, on_cpu):
        assert np.allclose(a.box, b.box, atol=0.5) and np.allclose(a.landmarks, b.landmarks, atol=0.5)
