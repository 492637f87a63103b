"""The face detector interface: what any detector must return, so another can be plugged in.

Alignment, ``glae align`` and ``glae predict`` only ever see ``DetectedFace`` records from
a ``FaceDetector``; MTCNN (``glae.faces.mtcnn``) is the default because the paper aligns
its faces with it, but any object with a matching ``detect`` method works; a
``detect_batch`` method, when present, is used for many photos at once. ``DETECTORS``
names the ones ``--detector`` offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
# Pixels of the photos detected together (8.4 M: 28 photos of 640x480): a bound on the
# decoded photos held at once and on the float tensor a detector stacks them into (~100 MB).
MAX_BATCH_PIXELS = 2**23


@dataclass(frozen=True)
class DetectedFace:
    """One face in image pixel coordinates (continuous: pixel ``i`` spans ``[i, i + 1]``).

    Attributes:
        box: ``(x1, y1, x2, y2)``; may reach outside the image for faces cut by its edge.
        landmarks: ``[5, 2]`` float array of (x, y) in ``LANDMARK_NAMES`` order; "left" is
            the image's left (the subject's right eye), as MTCNN reports them.
        score: detector confidence in ``[0, 1]``.
    """

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


class FaceDetector(Protocol):
    """Anything that finds faces with five landmarks in an upright RGB image.

    A detector may also have ``detect_batch(images) -> list[list[DetectedFace]]``, the
    faces of each image, when it is faster on many images at once (``detect_batch`` below).
    """

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        """All faces found, largest first."""
        ...


def detect_batch(detector: FaceDetector, images: Sequence[Image.Image]) -> list[list[DetectedFace]]:
    """The faces of each image: the detector's ``detect_batch`` when it has one, else ``detect`` one by one."""
    batched = getattr(detector, "detect_batch", None)
    if batched is None:
        return [detector.detect(image) for image in images]
    return batched(images)


# What a photo can make a detector or the alignment raise: bad landmarks or pixels
# (ValueError), a file-level problem (OSError), or too little memory for a large photo.
PHOTO_ERRORS = (ValueError, OSError, MemoryError, RuntimeError)


def photo_failure(error: Exception, image: Image.Image) -> str | None:
    """Why finding or aligning the faces of ``image`` failed, as a line for the user; None for a bug.

    A RuntimeError other than running out of memory is a bug in the code, not the photo's
    fault, so it is re-raised by the caller instead of being reported against one photo.
    """
    if isinstance(error, (ValueError, OSError)):
        return str(error)
    if isinstance(error, MemoryError) or (isinstance(error, RuntimeError) and out_of_memory(error)):
        width, height = image.size
        return f"out of memory detecting faces in this {width}x{height} photo; try a smaller copy"
    return None


def out_of_memory(error: RuntimeError) -> bool:
    """Whether torch ran out of memory: CUDA's ``OutOfMemoryError``, or the CPU allocator's plain RuntimeError.

    ``torch.cuda.OutOfMemoryError`` exists since torch 1.13; from 2.5 it is ``torch.OutOfMemoryError``,
    which every accelerator raises, so the check works on every torch that pyproject allows.
    """
    return isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(error)


def largest_first(faces: list[DetectedFace]) -> list[DetectedFace]:
    """The order every detector returns: the main subject of a photo comes first."""
    return sorted(faces, key=lambda face: face.area, reverse=True)


def _mtcnn(device: str) -> FaceDetector:
    from .mtcnn import MTCNNDetector

    return MTCNNDetector(device=device)


def _blazeface(device: str) -> FaceDetector:
    from .blazeface import BlazeFace
    from .mtcnn import MTCNNDetector

    return MTCNNDetector(device=device, proposer=BlazeFace(device=device))


# The detectors ``glae predict --detector`` and ``glae serve --detector`` offer, by name;
# each builder imports its code only when chosen. Add a detector here.
DETECTORS = {
    # The paper's: P-Net over an image pyramid, then R-Net and O-Net.
    "mtcnn": _mtcnn,
    # BlazeFace's proposals, then MTCNN's R-Net and O-Net (the same five landmarks), and the
    # pyramid for photos where that finds nothing. Faster on the CPU; but beside a large
    # face, it misses most faces under 48 px (docs/detect_speed.md).
    "blazeface": _blazeface,
}


def build_detector(name: str, device: str) -> FaceDetector:
    """The detector called ``name`` in ``DETECTORS``, on ``device``."""
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; known: {', '.join(DETECTORS)}")
    return DETECTORS[name](device)
