"""Five-point alignment: the similarity transform by hand, and MTCNN's points on the template after warping."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glae.data.images import read_rgb
from glae.faces.align import align_face, reference_points, similarity_transform
from glae.faces.detector import DetectedFace
from glae.faces.mtcnn import MTCNNDetector


def _eye_angle(face: DetectedFace) -> float:
    (x1, y1), (x2, y2) = face.landmarks[0], face.landmarks[1]
    return math.degrees(math.atan2(y2 - y1, x2 - x1))


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


def _warp_without_shrinking(photo: Image.Image, landmarks: np.ndarray, size: int) -> np.ndarray:
    inverse = similarity_transform(reference_points(size), landmarks)
    return np.asarray(photo.transform((size, size), Image.Transform.AFFINE, inverse.ravel().tolist(), Image.Resampling.BILINEAR), float)


def test_a_large_face_is_shrunk_without_aliasing_and_lands_where_it_would() -> None:
    """A face almost six times the crop's size: pixel-fine texture averages out, and the framing stays exact."""
    size, side = 112, 1600
    landmarks = reference_points(size) * 5.7 + 200.3  # the face spans about 640 px of the photo
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))
    bare = _warp_without_shrinking(noise, landmarks, size)  # 2x2 photo pixels per crop pixel: the noise survives
    crop = np.asarray(align_face(noise, landmarks, size), float)
    assert bare.std() > 40 and crop.std() < bare.std() / 4 and abs(crop.mean() - 127.5) < 3
    # On a smooth photo, shrinking first changes nothing but rounding: the face lands on the same pixels.
    y, x = np.mgrid[0:side, 0:side]
    smooth = Image.fromarray(np.stack([x * 255 // side, y * 255 // side, (x + y) * 255 // (2 * side)], -1).astype(np.uint8))
    assert np.abs(np.asarray(align_face(smooth, landmarks, size), float) - _warp_without_shrinking(smooth, landmarks, size)).max() <= 2
