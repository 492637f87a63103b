"""One uploaded photo -> the JSON the API returns; runs in a worker thread, never on the event loop."""

from __future__ import annotations

import time
from typing import Any

from PIL import Image

from ..data.images import read_rgb
from ..estimator import AgeEstimator, FaceAge
from ..faces.detector import DetectedFace, FaceDetector, largest_first
from ..faces.filtering import FaceFilter
from .errors import ApiError


class LargestFaces:
    """A ``FaceDetector`` keeping the ``limit`` largest faces that pass ``keep``, and counting them.

    One is made per request, so ``found`` belongs to that request even with several
    worker threads sharing the underlying detector.
    """

    def __init__(self, detector: FaceDetector, limit: int, keep: FaceFilter) -> None:
        self.detector = detector
        self.limit = limit
        self.keep = keep
        self.found = 0

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        faces = self.keep(self.detector.detect(image))
        self.found = len(faces)
        return largest_first(faces)[: self.limit]


def predict_upload(estimator: AgeEstimator, data: bytes, max_pixels: int, max_faces: int) -> dict[str, Any]:
    """``{"faces", "width", "height", "faces_found", "elapsed_ms"}`` for the bytes of one image.

    ``faces`` holds at most ``max_faces`` records (the largest faces), each with its full
    ``distribution`` and its box clipped to the image; ``faces_found`` says how many passed
    the face filter (before the ``max_faces`` cut); ``elapsed_ms`` is the time spent
    decoding, detecting and estimating (not waiting for a worker).

    Raises:
        ApiError: 422 when the bytes do not decode (corrupt, truncated) or the image has
            more than ``max_pixels`` pixels (checked before decoding).
    """
    started = time.perf_counter()
    try:
        image = read_rgb(data, max_pixels=max_pixels)
    except ValueError as error:  # ImageReadError
        raise ApiError(422, str(error).replace("<bytes>: ", "", 1)) from None
    detector = LargestFaces(estimator.detector, max_faces, estimator.face_filter)
    # Same model and options; filtering the faces LargestFaces kept again keeps them all.
    per_request = AgeEstimator(estimator.predictor, estimator.options, detector)
    (prediction,) = per_request.predict(image)
    if prediction.error is not None:
        raise ApiError(422, prediction.error)
    return {
        "faces": [_face_record(face, image.size) for face in prediction.faces],
        "width": image.width,
        "height": image.height,
        "faces_found": detector.found,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def _face_record(face: FaceAge, size: tuple[int, int]) -> dict[str, Any]:
    """``FaceAge.to_dict`` with the distribution, and the box clipped to the image.

    MTCNN's box of a face cut by the photo's edge reaches outside it; a client drawing
    boxes (the page) wants them on the photo. The landmarks are left as detected.
    """
    record = face.to_dict(distribution=True)
    width, height = size
    x1, y1, x2, y2 = record["box"]
    record["box"] = [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]
    return record
