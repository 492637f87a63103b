"""AgeEstimator: photos in, one age per face out.

The path of one photo, top to bottom: ``read_rgb`` (decode upright RGB) -> MTCNN
(``glae.faces``: boxes and five landmarks) -> five-point alignment onto the training
framing -> ``eval_transform`` -> a ``RoutedPredictor`` (``AgeModel.predict_views`` on the
image and its flip through both heads, then ``route``: Adaptive Routing, in PyTorch or in
an exported ONNX graph) -> expectation and a 90% interval of the chosen head's
distribution. Faces of many photos are batched together; a photo that cannot be read
gets an error of its own and never stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .calibration import age_interval
from .checkpoint import CheckpointError
from .data.images import read_rgb
from .data.transforms import eval_transform
from .engine import pick_device
from .faces.align import ALIGNED_SIZE, align_face
from .faces.detector import DetectedFace, FaceDetector
from .faces.filtering import FaceFilter
from .inference_backends import RoutedPredictor, load_routed_predictor
from .predict_options import PredictOptions

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]
HeadName = Literal["vanilla", "balanced"]


def default_model_path() -> Path:
    """Where the model shipped inside the package lives (``glae/weights/``)."""
    return Path(__file__).parent / "weights" / "glae_utkface.safetensors"


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """``path``, or the shipped model when None (a clear error when it is missing)."""
    if path is not None:
        return Path(path)
    shipped = default_model_path()
    if not shipped.is_file():
        raise CheckpointError(f"no default model shipped (looked for {shipped}); pass a model file (--model)")
    return shipped


@dataclass(frozen=True)
class FaceAge:
    """The age of one face.

    Attributes:
        box: ``(x1, y1, x2, y2)`` in the upright photo's pixels (the whole image with ``aligned``).
        landmarks: five ``(x, y)`` points (eyes, nose, mouth corners), None with ``aligned``.
        score: detector confidence, None with ``aligned``.
        age: expectation of the predicted distribution (Eq. 3), in years.
        interval_90: ``(low, high)``, the central 90% of that distribution, tempered as the model's
            calibration says (``glae.calibration``; its raw 5% and 95% quantiles without one).
        head: the head Adaptive Routing chose ("vanilla" for a model without a balanced head).
        distribution: ``P(age = k)`` for ``k = 0..K``.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...] | None
    score: float | None
    age: float
    interval_90: tuple[float, float]
    head: HeadName
    distribution: tuple[float, ...] = field(repr=False)

    def to_dict(self, distribution: bool = False) -> dict[str, Any]:
        """JSON-safe record; the K+1 probabilities only on request, they dwarf the rest."""
        record: dict[str, Any] = {
            "box": [round(v, 1) for v in self.box],
            "landmarks": None if self.landmarks is None else [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
            "score": None if self.score is None else round(self.score, 4),
            "age": round(self.age, 2),
            "interval_90": [round(v, 2) for v in self.interval_90],
            "head": self.head,
        }
        if distribution:
            record["distribution"] = [round(p, 6) for p in self.distribution]
        return record


@dataclass(frozen=True)
class ImagePrediction:
    """All faces of one input; ``error`` says why there are none when the input was unusable."""

    file: str | None
    faces: list[FaceAge]
    error: str | None = None

    def to_dict(self, distribution: bool = False) -> dict[str, Any]:
        return {"file": self.file, "faces": [face.to_dict(distribution) for face in self.faces], "error": self.error}


@dataclass
class _Prepared:
    """An input read and aligned, waiting for its crops to go through the model."""

    file: str | None
    faces: list[DetectedFace | None]
    crops: list[Image.Image]
    size: tuple[int, int]
    error: str | None = None


class AgeEstimator:
    """A trained GLAE model plus a face detector: ``predict`` takes photos, returns ages.

    Args:
        predictor: the model behind ``glae.inference_backends.RoutedPredictor`` (a PyTorch
            model file or an ONNX export); it routes between the two heads when the
            balanced head was trained, otherwise it uses the vanilla head alone.
        options: batch size, alignment margin, face filter and device
            (``glae.predict_options``); the device is where MTCNN runs when it is built here.
        detector: any ``FaceDetector``; MTCNN is built on first use when None, so a caller
            with aligned crops needs no detector weights.
    """

    def __init__(self, predictor: RoutedPredictor, options: PredictOptions = PredictOptions(), detector: FaceDetector | None = None) -> None:
        self.predictor = predictor
        self.options = options
        self.transform = eval_transform(predictor.config.input_size, predictor.normalization)
        self.face_filter = FaceFilter(options.min_face_score, options.min_face_size)
        self._detector = detector

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, options: PredictOptions = PredictOptions(), detector: FaceDetector | None = None
    ) -> "AgeEstimator":
        """Load a model once: a ``.safetensors`` file, an ``.onnx`` export, or None for the shipped model.

        It runs on ``options.device``: "auto" (CUDA when available), "cpu", "cuda:1"...
        (ONNX runs on the CPU).
        """
        return cls(load_routed_predictor(resolve_model_path(path), pick_device(options.device)), options, detector)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            from .faces.mtcnn import MTCNNDetector

            self._detector = MTCNNDetector(device=pick_device(self.options.device))
        return self._detector

    def predict(self, images: ImageInput | Sequence[ImageInput], aligned: bool = False) -> list[ImagePrediction]:
        """One ``ImagePrediction`` per input (a path, PIL image, uint8 array, or a list of them).

        Args:
            aligned: inputs are already aligned face crops: no detection, one face each.
        """
        batch: list[ImageInput] = list(images) if isinstance(images, (list, tuple)) else [images]  # type: ignore[list-item]
        return list(self.iter_predict(batch, aligned))

    def iter_predict(self, images: Iterable[ImageInput], aligned: bool = False) -> Iterator[ImagePrediction]:
        """Like ``predict`` but lazy, in input order: memory stays bounded on any number of photos."""
        detector = None if aligned else self.detector  # missing weights fail here, not once per photo
        pending: list[_Prepared] = []
        waiting_crops = 0
        for source in images:
            pending.append(self._prepare(source, detector))
            waiting_crops += len(pending[-1].crops)
            if waiting_crops >= self.options.batch_size:
                yield from self._finish(pending)
                pending, waiting_crops = [], 0
        yield from self._finish(pending)

    def _prepare(self, source: ImageInput, detector: FaceDetector | None) -> _Prepared:
        """Read and align one input (``detector`` None: it is already an aligned crop)."""
        file = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        try:
            image = read_rgb(source)
            if detector is None:
                return _Prepared(file, [None], [image], image.size)
            faces = self.face_filter(detector.detect(image))
            crops = [align_face(image, face.landmarks, ALIGNED_SIZE, self.options.margin) for face in faces]
        except (ValueError, OSError) as error:  # ImageReadError is a ValueError
            return _Prepared(file, [], [], (0, 0), str(error))
        return _Prepared(file, list(faces), crops, image.size)

    def _finish(self, pending: list[_Prepared]) -> Iterator[ImagePrediction]:
        crops = [crop for item in pending for crop in item.crops]
        estimates = iter(self._estimate(crops)) if crops else iter(())
        for item in pending:
            faces = [_face_age(face, item.size, *next(estimates)) for face in item.faces]
            yield ImagePrediction(item.file, faces, item.error)

    @torch.no_grad()
    def _estimate(self, crops: list[Image.Image]) -> list[tuple[float, tuple[float, float], HeadName, Tensor]]:
        """Age, interval, head and distribution of each aligned crop, ``batch_size`` at a time."""
        results = []
        batch_size = self.options.batch_size
        for start in range(0, len(crops), batch_size):
            batch = torch.stack([self.transform(crop) for crop in crops[start : start + batch_size]])
            ages, probs, used_balanced = self.predictor.predict_routed(batch)
            intervals = age_interval(probs.double(), self.predictor.calibration)
            for age, interval, balanced, distribution in zip(ages, intervals, used_balanced, probs):
                head: HeadName = "balanced" if bool(balanced) else "vanilla"
                results.append((float(age), (float(interval[0]), float(interval[1])), head, distribution))
        return results


def _face_age(
    face: DetectedFace | None, size: tuple[int, int], age: float, interval: tuple[float, float], head: HeadName, probs: Tensor
) -> FaceAge:
    """Join a detection (None: the whole aligned image) with its estimate."""
    if face is None:
        box, landmarks, score = (0.0, 0.0, float(size[0]), float(size[1])), None, None
    else:
        box = face.box
        landmarks = tuple((float(x), float(y)) for x, y in face.landmarks)
        score = face.score
    return FaceAge(box, landmarks, score, age, interval, head, tuple(float(p) for p in probs))


__all__ = ["AgeEstimator", "FaceAge", "ImageInput", "ImagePrediction", "default_model_path", "resolve_model_path"]
