"""Reading images safely, and the torch Dataset that turns samples into tensors.

Every image GLAE touches, in training, evaluation or prediction, goes through
``read_rgb``: one place decides how EXIF rotation, grayscale, CMYK, RGBA, 16-bit and
oversized images become an RGB picture, so datasets and user photos are treated alike.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from ..imageformats import register_openers
from .datasets import AgeSample

ImageSource = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]

# 50 megapixels: far above any face photo, far below what would exhaust memory when decoded.
MAX_IMAGE_PIXELS = 50_000_000


class ImageReadError(ValueError):
    """An image could not be read; the message names the source and the reason."""


DECODE_ERRORS = (OSError, SyntaxError, ValueError, RuntimeError)
"""What Pillow's decoders raise on a damaged file (RuntimeError: the AVIF decoder's ``Conversion from YUV failed``)."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def _to_8bit_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; 16/32-bit grayscale is rescaled, not clipped.

    Float images come in 0-1 (scientific tools) or 0-255 (Pillow's own conversions): a
    maximum of at most 1 is taken as the first, so such a face is not read as black.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        top = pixels.max()
        if image.mode.startswith("I;16") or top > 255:
            scale = 65535.0
        elif image.mode == "F" and top <= 1:
            scale = 1.0
        else:
            scale = 255.0
        pixels = np.clip(pixels / scale * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(pixels, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become white rather than whatever colour hid under alpha.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _limit_message(name: str, size: str | None, max_pixels: int) -> str:
    """GLAE's limit, never Pillow's (which is higher and would mislead)."""
    what = f"{size} pixels" if size else "the image"
    return f"{name}: {what} exceeds the limit of {max_pixels} pixels ({max_pixels / 1e6:g} MP); downscale it first"


def _array_image(source: np.ndarray, name: str) -> Image.Image:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 arrays; anything else is an ``ImageReadError``, never a TypeError."""
    if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] not in (1, 3, 4)):
        raise ImageReadError(f"{name}: expected a uint8 HxW or HxWx3 array, got {source.dtype} {source.shape}")
    if min(source.shape[:2]) == 0:
        raise ImageReadError(f"{name}: empty array {source.shape}")
    return Image.fromarray(source[..., 0] if source.ndim == 3 and source.shape[2] == 1 else source)


def _open_file(source: bytes | str | os.PathLike, name: str, max_pixels: int) -> Image.Image:
    """Decode bytes or a file, checking the pixel count from the header before decoding."""
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageReadError(f"{name}: empty input")
            handle: io.BytesIO | str = io.BytesIO(source)
        else:
            if not os.path.exists(source):
                raise ImageReadError(f"{name}: file not found")
            if os.path.isdir(source):
                raise ImageReadError(f"{name}: a folder, not an image file")
            if os.path.getsize(source) == 0:
                raise ImageReadError(f"{name}: empty file")
            handle = os.fspath(source)
        register_openers()  # HEIF/HEIC (pillow-heif) is known to Image.open only once registered
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(_limit_message(name, f"{width}x{height}", max_pixels))
            image.load()
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own, higher limit tripped while opening; GLAE's is the one that counts.
        raise ImageReadError(_limit_message(name, None, max_pixels)) from None
    except PermissionError:
        raise ImageReadError(f"{name}: permission denied; make the file readable (chmod +r) or skip it") from None
    except UnidentifiedImageError as error:
        raise ImageReadError(f"{name}: not a readable image ({error})") from None
    except DECODE_ERRORS as error:
        raise ImageReadError(f"{name}: corrupt or truncated image ({error})") from None
    return image


def read_rgb(source: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode ``source`` (path, bytes, PIL image or HxW/HxWx1/HxWx3/HxWx4 uint8 array) to an upright RGB image.

    Raises:
        ImageReadError: missing, empty, unreadable, truncated or oversized input, or an
            object that is no image at all (None, a float array...). The pixel count is
            checked from the header, before decoding (a decompression bomb never reaches memory).
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        image = _array_image(source, name)
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, (bytes, str, os.PathLike)):
        image = _open_file(source, name, max_pixels)
    else:
        raise ImageReadError(f"{name}: not an image (expected a path, bytes, a PIL image or a uint8 array)")
    if image.width * image.height > max_pixels:
        raise ImageReadError(_limit_message(name, f"{image.width}x{image.height}", max_pixels))
    try:
        image.load()  # a lazy PIL image whose data turns out broken fails here
    except DECODE_ERRORS as error:
        raise ImageReadError(f"{name}: corrupt or truncated image ({error})") from None
    if min(image.size) == 0:
        raise ImageReadError(f"{name}: empty image {image.width}x{image.height}")
    try:
        return _to_8bit_rgb(_upright(image))
    except ValueError as error:  # a mode Pillow cannot turn into RGB (``La``...)
        raise ImageReadError(f"{name}: colour mode {image.mode} cannot be read as RGB ({error})") from None


_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation tag value -> the turn that shows the photo upright (as ``ImageOps.exif_transpose``)."""


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; as stored when the EXIF block cannot be
    read (cameras and editors write broken ones, and the pixels are fine). Only the
    orientation tag is read: Pillow's ``exif_transpose`` also rewrites the block, which
    fails on tags that reading tolerates."""
    try:
        orientation = image.getexif().get(0x0112)
    except (SyntaxError, ValueError, TypeError, struct.error, OSError):
        return image
    turn = _ORIENTATIONS.get(orientation) if isinstance(orientation, int) else None
    if turn is None:
        return image
    turned = image.transpose(turn)
    for key in _ORIENTATION_CARRIERS:  # upright now: read again (serve, the API), it must not be turned twice
        turned.info.pop(key, None)
    return turned


_ORIENTATION_CARRIERS = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")
"""The ``info`` entries Pillow reads an orientation from; a transpose copies them unchanged."""


def readable_samples(samples: Sequence[AgeSample]) -> tuple[list[AgeSample], list[str]]:
    """The samples whose image decodes, and why each other one does not.

    Training and ``glae eval`` both drop a corrupt file up front, so one bad image neither
    stops a run at its first validation nor makes eval scores differ from training's test
    report. Decoding runs on two threads (Pillow releases the GIL).
    """
    with ThreadPoolExecutor(2) as pool:
        problems = list(pool.map(_read_problem, samples))
    return [sample for sample, problem in zip(samples, problems) if problem is None], list(filter(None, problems))


def _read_problem(sample: AgeSample) -> str | None:
    try:
        read_rgb(sample.path)
    except ImageReadError as error:
        return str(error)
    return None


class AgeImageDataset(Dataset):
    """Samples -> ``(image [3, S, S], age, age_std)``; ``age_std`` is NaN when unknown.

    Indices may be plain ints (evaluation) or ``(index, augmentation_seed)`` pairs from
    ``glae.data.samplers.EpochSampler``: the random augmentation of each draw is then
    seeded by its place in the epoch, so a resumed run sees exactly the images an
    uninterrupted one would, whatever the number of workers.
    """

    def __init__(
        self, samples: Sequence[AgeSample], transform: Callable[[Image.Image], Tensor],
        images: Callable[[int], Image.Image] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.images = images  # index -> decoded image (glae.data.cache); None = read the file

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, float, float]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        image = read_rgb(sample.path) if self.images is None else self.images(index)
        if seed is None:
            tensor = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                tensor = self.transform(image)
        std = float("nan") if sample.age_std is None else float(sample.age_std)
        return tensor, float(sample.age), std


def ages_of(samples: Sequence[AgeSample]) -> list[float]:
    return [sample.age for sample in samples]


__all__ = ["MAX_IMAGE_PIXELS", "AgeImageDataset", "ImageReadError", "ImageSource", "ages_of", "read_rgb"]

