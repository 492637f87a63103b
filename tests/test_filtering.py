"""Which detections count as faces: by score and size, and the defaults on real detections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glae.data.images import read_rgb
from glae.faces.detector import DetectedFace
from glae.faces.filtering import FaceFilter
from glae.faces.mtcnn import MTCNNDetector

BACKGROUND = (90, 110, 130)


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
