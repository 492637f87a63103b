"""The settings of an ``AgeEstimator``, one object from the command line to the API to the server.

Each field is a flag of both ``glae predict`` and ``glae serve`` (``batch_size`` ->
``--batch-size``, same default), built here from the field itself, so an option added
here reaches both commands and the estimator each of them loads. Values are checked
once, when the object is made, with the flag's name in the error.
"""

from __future__ import annotations

import argparse
import numbers
from dataclasses import dataclass, field, fields
from typing import get_type_hints

from .config import MAX_BATCH_SIZE, check_device
from .faces.align import DEFAULT_MARGIN, MAX_MARGIN
from .faces.detector import DETECTORS
from .faces.filtering import DEFAULT_MIN_FACE_SCORE, DEFAULT_MIN_FACE_SIZE, FaceFilter
from .inference_backends import PRECISIONS


# What each field's type accepts from the Python API (NumPy's numbers included), and its name in an error.
_ACCEPTED = {int: (numbers.Integral, "a whole number"), float: (numbers.Real, "a number"), str: (str, "a string")}


@dataclass(frozen=True)
class PredictOptions:
    """How photos become ages; each field's ``help`` is its flag's help text.

    Raises:
        ValueError: one line naming the flag, for a value of the wrong type or out of range,
            or an unknown or absent device.
    """

    batch_size: int = field(default=32, metadata={"help": "faces per forward pass (each also runs flipped), and photos per detection batch"})
    margin: float = field(
        default=DEFAULT_MARGIN,
        metadata={"help": f"context added around UTKFace's framing when aligning a face, as a fraction of it, at most {MAX_MARGIN:g}"},
    )
    min_face_score: float = field(
        default=DEFAULT_MIN_FACE_SCORE, metadata={"help": "skip detections scoring less (0 keeps all)"}
    )
    min_face_size: float = field(
        default=DEFAULT_MIN_FACE_SIZE, metadata={"help": "skip faces whose box is smaller than this many pixels on its shorter side"}
    )
    detector: str = field(
        default="mtcnn", metadata={"help": f"face detector: {' or '.join(DETECTORS)} (faster; misses small faces beside a large one)"}
    )
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda:1... (ONNX runs on the CPU)"})
    precision: str = field(
        default="float32",
        metadata={"help": "the age model's arithmetic: float32, or bfloat16 (about 2.5x faster on CPUs with bfloat16 "
                          "instructions, ages within a few tenths of a year; emulated, so slower, on other CPUs; not for ONNX files)"},
    )

    def __post_init__(self) -> None:
        for option, kind in get_type_hints(type(self)).items():  # the API takes any value; the flags are typed by argparse
            value = getattr(self, option)
            accepted, name = _ACCEPTED[kind]
            if not isinstance(value, accepted) or isinstance(value, bool):
                raise ValueError(f"--{option.replace('_', '-')} must be {name}, got {value!r}")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"--batch-size must be in 1..{MAX_BATCH_SIZE}, got {self.batch_size}")
        if not 0 <= self.margin <= MAX_MARGIN:
            raise ValueError(f"--margin must be in [0, {MAX_MARGIN:g}], got {self.margin}")
        if not 0 <= self.min_face_score <= 1:
            raise ValueError(f"--min-face-score must be in [0, 1], got {self.min_face_score}")
        if not self.min_face_size >= 0:
            raise ValueError(f"--min-face-size must be >= 0 pixels, got {self.min_face_size}")
        if self.detector not in DETECTORS:
            raise ValueError(f"--detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        check_device(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def face_filter(self) -> FaceFilter:
        """Which detections count as faces: ``min_face_score`` and ``min_face_size``."""
        return FaceFilter(self.min_face_score, self.min_face_size)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
        """A flag per field (or per field in ``names``), typed and defaulted like the field."""
        types = get_type_hints(cls)
        for option in fields(cls):
            if names is not None and option.name not in names:
                continue
            parser.add_argument(
                "--" + option.name.replace("_", "-"),
                type=types[option.name],
                default=option.default,
                help=option.metadata["help"] + " (default: %(default)s)",
            )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace, names: tuple[str, ...] | None = None) -> "PredictOptions":
        """The options parsed from the flags ``add_arguments`` made (for ``names`` only: the
        others keep their defaults); raises on values out of range."""
        return cls(**{option.name: getattr(args, option.name) for option in fields(cls) if names is None or option.name in names})


FACE_FINDING = ("margin", "min_face_score", "min_face_size", "detector")
"""The options that decide which faces are found and how they are framed: ``glae align``
takes these, so a dataset is aligned as ``glae predict`` would find its faces."""
