"""MTCNN on real UTKFace crops and composites with known boxes, and five-point alignment."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.data.images import read_rgb
from glae.faces.align import align_face, reference_points, similarity_transform
from glae.faces.detector import DetectedFace
from glae.faces.filtering import FaceFilter
from glae.faces.mtcnn import MTCNNDetector, MTCNNWeightsError

BACKGROUND = (90, 110, 130)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _eye_angle(face: DetectedFace) -> float:
    (x1, y1), (x2, y2) = face.landmarks[0], face.landmarks[1]
    return math.degrees(math.atan2(y2 - y1, x2 - x1))


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


def test_alignment_unrotates_a_rotated_face(detector: MTCNNDetector, utk_crops: list[Path]) -> None:
    photo = read_rgb(utk_crops[1]).rotate(25, resample=Image.Resampling.BILINEAR, expand=True)
    (tilted,) = detector.detect(photo)
    assert abs(_eye_angle(tilted)) > 15
    aligned = align_face(photo, tilted.landmarks, size=224)
    (upright,) = detector.detect(aligned)
    assert abs(_eye_angle(upright)) < 3


def test_realigned_utkface_crops_keep_their_framing(detector: MTCNNDetector, utk_crops: list[Path]) -> None:
    """UTKFace crops are already aligned: aligning them again must keep the face where it was."""
    errors = []
    for path in utk_crops[:5]:
        photo = read_rgb(path)
        faces = detector.detect(photo)
        if len(faces) != 1:
            continue
        found = detector.detect(align_face(photo, faces[0].landmarks, size=200))
        errors.append(np.abs(found[0].landmarks - reference_points(200)).mean() / 200)
    assert len(errors) >= 4 and max(errors) < 0.04, errors


@pytest.mark.parametrize("kind", ["noise", "gradient"])
def test_no_face_in_noise_or_gradient(detector: MTCNNDetector, kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "noise":
        pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    else:
        pixels = np.broadcast_to(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], (300, 400, 3)).copy()
    assert detector.detect(Image.fromarray(pixels)) == []


def test_similarity_transform_recovers_a_known_one() -> None:
    angle, scale, shift = math.radians(30), 1.7, np.array([12.0, -5.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    source = reference_points(112)
    target = scale * source @ rotation.T + shift
    expected = np.hstack([scale * rotation, shift[:, None]])
    assert np.allclose(similarity_transform(source, target), expected)


def test_similarity_transform_rejects_coinciding_points() -> None:
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.ones((5, 2)), reference_points(112))


def test_missing_weights_say_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(MTCNNWeightsError, match="pip install --no-deps facenet-pytorch"):
        MTCNNDetector(weights_dir=tmp_path)


def test_detector_asks_for_rgb(detector: MTCNNDetector) -> None:
    with pytest.raises(ValueError, match="read_rgb"):
        detector.detect(Image.new("L", (64, 64)))


def test_face_filter_by_score_and_size() -> None:
    points = np.zeros((5, 2))
    faces = [
        DetectedFace((0, 0, 100, 100), points, 0.99),
        DetectedFace((0, 0, 100, 100), points, 0.5),
        DetectedFace((0, 0, 30, 100), points, 0.99),  # narrow: its shorter side counts
    ]
    assert FaceFilter(0.9, 40)(faces) == faces[:1]
    assert FaceFilter(0.0, 0.0)(faces) == faces
    with pytest.raises(ValueError, match="score"):
        FaceFilter(1.5, 0)


def test_default_filter_drops_the_cameramans_ear(detector: MTCNNDetector) -> None:
    """scikit-image's cameraman: MTCNN also reports his ear (score ~0.79, ~21 px wide)."""
    from skimage import data

    faces = detector.detect(read_rgb(data.camera()))
    assert len(faces) == 2
    (face,) = FaceFilter()(faces)
    assert face.score > 0.99 and face.box[0] > 190  # the face, right of the ear


def test_default_filter_keeps_pasted_real_faces(detector: MTCNNDetector, utk_crops: list[Path]) -> None:
    canvas = Image.new("RGB", (640, 480), BACKGROUND)
    for index, path in enumerate(utk_crops[:4]):
        canvas.paste(read_rgb(path).resize((64, 64)), (20 + 150 * index, 200))
    assert len(FaceFilter()(detector.detect(canvas))) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mtcnn_on_the_gpu_finds_the_cpu_faces(detector: MTCNNDetector, two_faces_photo: Image.Image) -> None:
    on_gpu = MTCNNDetector(device="cuda").detect(two_faces_photo)
    on_cpu = detector.detect(two_faces_photo)
    assert len(on_gpu) == len(on_cpu) == 2
    for a, b in zip(on_gpu, on_cpu):
        assert np.allclose(a.box, b.box, atol=0.5) and np.allclose(a.landmarks, b.landmarks, atol=0.5)
