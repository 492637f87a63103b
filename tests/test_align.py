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
