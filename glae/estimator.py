"""AgeEstimator: photos in, one age per face out.

The path of one photo, top to bottom: ``read_rgb`` (decode upright RGB) -> the face
detector that ``--detector`` names (``glae.faces.detector.DETECTORS``: MTCNN, or BlazeFace's
proposals checked by MTCNN's last nets; boxes and five landmarks) -> five-point alignment onto the training
framing -> ``eval_transform`` -> a ``RoutedPredictor`` (``AgeModel.predict_views`` on the
image and its flip through its heads (both, once stage 2 trained the balanced one), then
``route``: Adaptive Routing, in PyTorch or in an exported ONNX graph) -> expectation and a
90% interval of the chosen head's distribution. Photos are detected in batches
(``glae.faces.detector.detect_batch``), their faces go through the model in batches; a
photo that cannot be read gets an error of its own and never stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, cast

import numpy as np
import torch
from PIL import Image

from .calibration import age_interval
from .checkpoint import CheckpointError
from .data.images import read_rgb
from .data.transforms import eval_transform
from .devices import pick_device
from .faces.align import ALIGNED_SIZE, align_face
from .faces.detector import MAX_BATCH_PIXELS, PHOTO_ERRORS, DetectedFace, FaceDetector, build_detector, detect_batch, photo_failure
from .inference_backends import Precision, RoutedPredictor, load_routed_predictor
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

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "faces": [face.to_dict() for face in self.faces], "error": self.error}


@dataclass(frozen=True)
class _Photo:
    """One input, decoded: ``image``, or ``error`` saying why it could not be."""

    file: str | None
    image: Image.Image | None = None
    error: str | None = None


def _read_in_batches(images: Iterable[ImageInput], max_photos: int) -> Iterator[list[_Photo]]:
    """The inputs decoded, in lists whose faces are detected together.

    A list ends at ``max_photos`` photos or once it holds ``MAX_BATCH_PIXELS`` pixels,
    so a run of large photos is not all held in memory at once.
    """
    batch: list[_Photo] = []
    pixels = 0
    for source in images:
        file = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        try:
            image = read_rgb(source)
        except (ValueError, OSError) as error:  # ImageReadError is a ValueError
            batch.append(_Photo(file, error=str(error)))
        else:
            batch.append(_Photo(file, image))
            pixels += image.width * image.height
        if len(batch) >= max_photos or pixels >= MAX_BATCH_PIXELS:
            yield batch
            batch, pixels = [], 0
    if batch:
        yield batch


@dataclass
class _Prepared:
    """An input read and aligned, waiting for its crops to go through the model."""

    file: str | None
    faces: list[DetectedFace | None]
    crops: list[Image.Image]
    size: tuple[int, int]
    error: str | None = None


@dataclass(frozen=True)
class _Estimate:
    """What the model says of one aligned crop; a detection joins it to make a ``FaceAge``."""

    age: float
    interval_90: tuple[float, float]
    head: HeadName
    distribution: tuple[float, ...]


class AgeEstimator:
    """A trained GLAE model plus a face detector: ``predict`` takes photos, returns ages.

    Args:
        predictor: the model behind ``glae.inference_backends.RoutedPredictor`` (a PyTorch
            model file or an ONNX export); it routes between the two heads when the
            balanced head was trained, otherwise it uses the vanilla head alone.
        options: batch size, alignment margin, face filter, detector, device and precision
            (``glae.predict_options``); the device is where the detector runs when it is built here.
        detector: any ``FaceDetector``; when None, the one ``options.detector`` names is
            built on first use, so a caller with aligned crops needs no detector weights.
    """

    def __init__(self, predictor: RoutedPredictor, options: PredictOptions = PredictOptions(), detector: FaceDetector | None = None) -> None:
        if predictor.precision != options.precision:  # fixed when the predictor was loaded
            raise ValueError(f"--precision {options.precision}, but the model was loaded to compute in {predictor.precision}; "
                             "load it with AgeEstimator.load(path, options), or with load_routed_predictor(..., precision=...)")
        self.predictor = predictor
        self.options = options
        self.transform = eval_transform(predictor.config.input_size, predictor.normalization)
        self.face_filter = options.face_filter
        self._detector = detector

    @classmethod
    def load(
        cls, path: str | os.PathLike | None = None, options: PredictOptions = PredictOptions(), detector: FaceDetector | None = None
    ) -> "AgeEstimator":
        """Load a model once: a ``.safetensors`` file, an ``.onnx`` export, or None for the shipped model.

        It runs on ``options.device``: "auto" (CUDA when available), "cpu", "cuda:1"...
        (ONNX runs on the CPU).
        """
        predictor = load_routed_predictor(resolve_model_path(path), pick_device(options.device), cast(Precision, options.precision))
        return cls(predictor, options, detector)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = build_detector(self.options.detector, str(pick_device(self.options.device)))
        return self._detector

    def predict(self, images: ImageInput | Sequence[ImageInput], aligned: bool = False) -> list[ImagePrediction]:
        """One ``ImagePrediction`` per input (a path, PIL image, uint8 array, or a list of them).

        Args:
            aligned: inputs are already aligned face crops: no detection, one face each.
        """
        batch: list[ImageInput] = list(images) if isinstance(images, (list, tuple)) else [images]  # type: ignore[list-item]
        return list(self.iter_predict(batch, aligned))

    def iter_predict(self, images: Iterable[ImageInput], aligned: bool = False) -> Iterator[ImagePrediction]:
        """Like ``predict`` but lazy, in input order: memory stays bounded on any number of photos.

        Faces wait until a batch of them is full; photos without a face (or unreadable) ahead
        of the first waiting face come out at once, so a folder of landscapes still streams.
        """
        detector = None if aligned else self.detector  # missing weights fail here, not once per photo
        pending: list[_Prepared] = []
        waiting_crops = 0
        for photos in _read_in_batches(images, self.options.batch_size):
            prepared = self._prepare(photos, detector)
            pending += prepared
            waiting_crops += sum(len(item.crops) for item in prepared)
            if waiting_crops >= self.options.batch_size:
                yield from self._finish(pending)
                pending, waiting_crops = [], 0
            else:
                faceless = next((n for n, item in enumerate(pending) if item.crops), len(pending))
                yield from self._finish(pending[:faceless])
                del pending[:faceless]
        yield from self._finish(pending)

    def _prepare(self, photos: list[_Photo], detector: FaceDetector | None) -> list[_Prepared]:
        """Each photo with the aligned crops of its faces, found for all the photos at once.

        ``detector`` None: each photo is already an aligned crop, its own single face.
        """
        images = [photo.image for photo in photos if photo.image is not None]
        found: Iterator[Sequence[DetectedFace | None] | str]
        found = iter(self._detect(detector, images)) if detector is not None else iter([[None]] * len(images))
        return [
            _Prepared(photo.file, [], [], (0, 0), photo.error) if photo.image is None else self._crop(photo.file, photo.image, next(found))
            for photo in photos
        ]

    def _detect(self, detector: FaceDetector, images: list[Image.Image]) -> list[list[DetectedFace] | str]:
        """The faces of each image that pass the filter, or why detection failed on it.

        A failure in a batch is pinned on its photo by detecting the photos one by one.
        """
        try:
            return [self.face_filter(faces) for faces in detect_batch(detector, images)]
        except PHOTO_ERRORS as error:
            reason = photo_failure(error, images[0])
            if reason is None:
                raise  # a bug, not a photo's fault
            if len(images) > 1:
                return [result for image in images for result in self._detect(detector, [image])]
            return [reason]

    def _crop(self, file: str | None, image: Image.Image, faces: Sequence[DetectedFace | None] | str) -> _Prepared:
        """``image``'s faces aligned (None: the image itself); ``faces`` a string: why none were found."""
        if isinstance(faces, str):
            return _Prepared(file, [], [], (0, 0), faces)
        try:
            crops = [image if face is None else align_face(image, face.landmarks, ALIGNED_SIZE, self.options.margin) for face in faces]
        except ValueError as error:  # landmarks the warp cannot use: NaN (numpy's LinAlgError) or a wrong shape
            return _Prepared(file, [], [], (0, 0), str(error))
        return _Prepared(file, list(faces), crops, image.size)

    def _finish(self, pending: list[_Prepared]) -> Iterator[ImagePrediction]:
        crops = [crop for item in pending for crop in item.crops]
        estimates = iter(self._estimate(crops)) if crops else iter(())
        for item in pending:
            faces = [_face_age(face, item.size, next(estimates)) for face in item.faces]
            yield ImagePrediction(item.file, faces, item.error)

    @torch.no_grad()
    def _estimate(self, crops: list[Image.Image]) -> list[_Estimate]:
        """Age, interval, head and distribution of each aligned crop, ``batch_size`` at a time."""
        results = []
        batch_size = self.options.batch_size
        for start in range(0, len(crops), batch_size):
            batch = torch.stack([self.transform(crop) for crop in crops[start : start + batch_size]])
            ages, probs, used_balanced = self.predictor.predict_routed(batch)
            intervals = age_interval(probs.double(), self.predictor.calibration)
            for age, interval, balanced, distribution in zip(ages, intervals, used_balanced, probs):
                head: HeadName = "balanced" if bool(balanced) else "vanilla"
                results.append(_Estimate(float(age), (float(interval[0]), float(interval[1])), head, tuple(distribution.tolist())))
        return results


def _face_age(face: DetectedFace | None, size: tuple[int, int], estimate: _Estimate) -> FaceAge:
    """Join a detection (None: the whole aligned image) with its estimate."""
    if face is None:
        box, landmarks, score = (0.0, 0.0, float(size[0]), float(size[1])), None, None
    else:
        box = face.box
        landmarks = tuple((float(x), float(y)) for x, y in face.landmarks)
        score = face.score
    return FaceAge(box, landmarks, score, estimate.age, estimate.interval_90, estimate.head, estimate.distribution)


__all__ = ["AgeEstimator", "FaceAge", "ImageInput", "ImagePrediction", "default_model_path", "resolve_model_path"]
