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
# (box, landmarks, score) of the faces in the ``two_faces_photo`` fixture, as the
# one-image-at-a-time detector found them before detection was batched (commit 9c4a61a).
TWO_FACES_BEFORE_BATCHING = [
    (
        (20.02, 3.15, 204.04, 221.06),
        [[65.98, 83.14], [153.9, 80.81], [104.97, 122.41], [68.01, 155.61], [151.72, 156.44]],
        0.99841,
    ),
    (
        (235.99, -8.68, 419.0, 210.24),
        [[289.49, 82.79], [370.92, 80.71], [327.11, 125.58], [299.74, 160.78], [360.39, 160.6]],
        0.99786,
    ),
]


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


def test_faces_match_the_detector_before_batching(detector: MTCNNDetector, two_faces_photo: Image.Image) -> None:
    faces = detector.detect(two_faces_photo)
    assert len(faces) == len(TWO_FACES_BEFORE_BATCHING)
    for face, (box, landmarks, score) in zip(faces, TWO_FACES_BEFORE_BATCHING):
        np.testing.assert_allclose(face.box, box, atol=0.02)
        np.testing.assert_allclose(face.landmarks, landmarks, atol=0.02)
        assert face.score == pytest.approx(score, abs=1e-4)


def _photos(utk_crops: list[Path]) -> list[Image.Image]:
    """Real faces in 640x480 photos, and two 200x200 crops as they are (a second size).

    The first two photos hold different faces at the same place, so a batch that mixed
    the candidates of its images up would merge them; one photo holds two faces, one none.
    Six 640x480 photos are more than one P-Net pass takes at the first pyramid level.
    """
    places = [(0, 160, (60, 100)), (1, 160, (60, 100)), (2, 48, (400, 300)), (3, 96, (200, 40))]
    photos = []
    for crop, side, corner in places:
        photo = Image.new("RGB", (640, 480), BACKGROUND)
        photo.paste(read_rgb(utk_crops[crop]).resize((side, side)), corner)
        photos.append(photo)
    two = Image.new("RGB", (640, 480), BACKGROUND)
    two.paste(read_rgb(utk_crops[4]).resize((32, 32)), (30, 300))  # found on the first, largest pyramid level
    two.paste(read_rgb(utk_crops[5]), (400, 40))
    return [*photos, two, Image.new("RGB", (640, 480), BACKGROUND), *(read_rgb(path) for path in utk_crops[6:8])]


def test_a_batch_finds_what_one_image_at_a_time_finds(detector: MTCNNDetector, utk_crops: list[Path]) -> None:
    photos = _photos(utk_crops)
    one_by_one = [detector.detect(photo) for photo in photos]
    batched = detector.detect_batch(photos)
    assert [len(faces) for faces in batched] == [len(faces) for faces in one_by_one] == [1, 1, 1, 1, 2, 0, 1, 1]
    for faces, alone in zip(batched, one_by_one):
        for face, reference in zip(faces, alone):
            np.testing.assert_allclose(face.box, reference.box, atol=0.5)
            np.testing.assert_allclose(face.landmarks, reference.landmarks, atol=0.5)
            assert face.score == pytest.approx(reference.score, abs=1e-3)
    assert batched[4][0].box[0] > 390  # the larger face comes first


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


@pytest.mark.parametrize("damage", ["truncated", "text", "other_net"])
def test_damaged_weights_say_how_to_reinstall(tmp_path: Path, damage: str) -> None:
    """A broken install gives the one-line hint, not a torch traceback."""
    from glae.faces.mtcnn import default_weights_dir

    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        (tmp_path / name).write_bytes((default_weights_dir() / name).read_bytes())
    pnet = tmp_path / "pnet.pt"
    if damage == "truncated":
        pnet.write_bytes(pnet.read_bytes()[:1000])
    elif damage == "text":
        pnet.write_text("not weights")
    else:
        pnet.write_bytes((tmp_path / "onet.pt").read_bytes())
    with pytest.raises(MTCNNWeightsError, match=r"pnet\.pt are damaged .*reinstall: pip install --no-deps facenet-pytorch"):
        MTCNNDetector(weights_dir=tmp_path)


def test_detector_asks_for_rgb(detector: MTCNNDetector) -> None:
    with pytest.raises(ValueError, match="read_rgb"):
        detector.detect(Image.new("L", (64, 64)))
    with pytest.raises(ValueError, match="read_rgb"):
        detector.detect_batch([Image.new("RGB", (64, 64)), Image.new("L", (64, 64))])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mtcnn_on_the_gpu_finds_the_cpu_faces(detector: MTCNNDetector, two_faces_photo: Image.Image) -> None:
    gpu_detector = MTCNNDetector(device="cuda")
    on_gpu = gpu_detector.detect(two_faces_photo)
    on_cpu = detector.detect(two_faces_photo)
    assert len(on_gpu) == len(on_cpu) == 2
    for a, b in zip(on_gpu, on_cpu):
        assert np.allclose(a.box, b.box, atol=0.5) and np.allclose(a.landmarks, b.landmarks, atol=0.5)
    batch = [two_faces_photo, two_faces_photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    assert [len(faces) for faces in gpu_detector.detect_batch(batch)] == [len(faces) for faces in detector.detect_batch(batch)] == [2, 2]
