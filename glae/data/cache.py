"""Decoded, resized training images kept as uint8 arrays in a memory-mapped file.

On two CPU cores the loader processes compete with the model step for the same cores, and
every epoch they decode the same JPEGs and resize them to the same size (``Resize`` is the
first, deterministic step of both the train and the eval transform). The cache does that
once: a file of ``[N, S, S, 3]`` uint8 pixels, exactly what ``Resize`` gives, so training
on it sees bit-identical images and resumed runs stay identical.

* **Keyed** by the file list, each file's size and mtime, and the size S: change any of
  them and a new cache is built; an old one is never reused for other data.
* **Never half-written**: pixels and the record of what was skipped go to temporary files
  that are renamed into place only when complete; the record is renamed last, and a cache
  counts only when its record exists. A ``kill -9`` leaves temporary files that the next
  build removes.
* **Outside the repo**: ``$GLAE_CACHE_DIR`` or ``~/.cache/glae/images`` (``data.cache_dir``).
* **Bad files** (corrupt, vanished, permission denied) are reported and skipped, as they
  would be without the cache, and nothing else is lost. Each later open tries them again,
  so a file fixed in place (``chmod``, which changes neither size nor mtime) comes back.
* **Not evicted**: each new file list or size adds a file; the log gives the folder's size
  when it grows, and any cache file can be deleted when no run is using it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import transforms as T

from ..fileio import atomic_write_text
from .images import ImageReadError, read_rgb

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bump when the stored pixels would differ for the same files (e.g. another resize)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("GLAE_CACHE_DIR") or Path.home() / ".cache" / "glae" / "images")


def cache_key(paths: Sequence[Path], size: int) -> str:
    """A digest of what the pixels depend on: format, size, and each file's path, size and mtime.

    Paths enter resolved, so the same files reached from another folder (``../data`` from
    two checkouts, a symlink) share one cache. A file that cannot be stat'ed enters the key
    as missing, so its reappearance rebuilds.
    """
    digest = hashlib.sha256(f"glae-image-cache {CACHE_FORMAT} {size}\n".encode())
    for path in map(os.path.realpath, paths):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:32]


@dataclass
class ImageCache:
    """The pixels of ``paths`` at ``size``; ``problems`` maps an index to why it was skipped."""

    path: Path
    pixels: np.ndarray  # [N, S, S, 3] uint8, memory-mapped read-only
    problems: dict[int, str]

    def __getstate__(self) -> dict:
        """Pickled by path (for spawned loader workers), never by copying the pixels."""
        return {"path": self.path, "problems": self.problems}

    def __setstate__(self, state: dict) -> None:
        self.path, self.problems = state["path"], state["problems"]
        self.pixels = np.load(self.path, mmap_mode="r")

    def image(self, index: int) -> Image.Image:
        if index in self.problems:
            raise ImageReadError(self.problems[index])
        return Image.fromarray(np.asarray(self.pixels[index]))

    def usable(self) -> list[int]:
        return [i for i in range(len(self.pixels)) if i not in self.problems]


class CachedImages:
    """``index -> PIL image`` for ``AgeImageDataset``: picklable, so loader workers can use it."""

    def __init__(self, cache: ImageCache, indices: Sequence[int]) -> None:
        self.cache = cache
        self.indices = list(indices)

    def __call__(self, index: int) -> Image.Image:
        return self.cache.image(self.indices[index])


def _decode_resized(path: Path, resize: T.Resize) -> np.ndarray:
    return np.asarray(resize(read_rgb(path)), dtype=np.uint8)


_TEMPORARY = re.compile(r"[0-9a-f]{32}\.npy\.tmp-\d+|\.[0-9a-f]{32}\.json\..+\.tmp")
"""The names of a build's temporary files (pixels, and the record's from ``atomic_write_text``);
nothing else in a user's cache folder is touched."""


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of a build that died (kill -9, power loss): only ever half-written."""
    for stale in folder.iterdir():
        if _TEMPORARY.fullmatch(stale.name):
            stale.unlink(missing_ok=True)


def _write_record(record_file: Path, size: int, count: int, problems: dict[int, str]) -> None:
    """The record that makes a pixels file count as a cache (``_read`` checks it), written atomically."""
    atomic_write_text(record_file, json.dumps({"format": CACHE_FORMAT, "size": size, "count": count, "problems": problems}))


def _retry_problems(cache: ImageCache, paths: Sequence[Path], size: int, record_file: Path) -> ImageCache:
    """Decode the skipped files again and patch in those that read now; the record is rewritten last."""
    resize = T.Resize((size, size), antialias=True)
    fixed: dict[int, np.ndarray] = {}
    for index in cache.problems:
        try:
            fixed[index] = _decode_resized(paths[index], resize)
        except (ImageReadError, OSError):
            continue
    if not fixed:
        return cache
    pixels = np.load(cache.path, mmap_mode="r+")
    for index, image in fixed.items():
        pixels[index] = image
    pixels.flush()
    del pixels
    problems = {index: reason for index, reason in cache.problems.items() if index not in fixed}
    _write_record(record_file, size, len(paths), problems)
    log.info("image cache: %d file(s) skipped before read now and are back in", len(fixed))
    return ImageCache(cache.path, np.load(cache.path, mmap_mode="r"), problems)


def _folder_gigabytes(folder: Path) -> float:
    return sum(entry.stat().st_size for entry in folder.glob("*.npy")) / 1e9


def _build(paths: Sequence[Path], size: int, pixels_file: Path, record_file: Path) -> None:
    resize = T.Resize((size, size), antialias=True)
    temp_pixels = pixels_file.with_name(f"{pixels_file.name}.tmp-{os.getpid()}")
    problems: dict[int, str] = {}
    try:
        pixels = np.lib.format.open_memmap(temp_pixels, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
        for index, path in enumerate(paths):
            try:
                pixels[index] = _decode_resized(path, resize)
            except (ImageReadError, OSError) as error:
                problems[index] = str(error)
        pixels.flush()
        del pixels
        with open(temp_pixels, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temp_pixels, pixels_file)
        _write_record(record_file, size, len(paths), problems)  # last: from here on the cache counts
    finally:
        temp_pixels.unlink(missing_ok=True)


def _read(pixels_file: Path, record_file: Path) -> ImageCache | None:
    try:
        record = json.loads(record_file.read_text())
        pixels = np.load(pixels_file, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if pixels.shape[0] != record.get("count") or pixels.shape[1:] != (record["size"], record["size"], 3):
        return None
    return ImageCache(pixels_file, pixels, {int(k): v for k, v in record["problems"].items()})


def open_image_cache(paths: Sequence[Path], size: int, folder: Path | None = None) -> ImageCache:
    """The cache of ``paths`` at ``size``, built first if missing or stale.

    Concurrent callers (DDP ranks, two runs on the same data) wait for one builder through
    a lock file instead of building twice.
    """
    folder = folder or default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    pixels_file, record_file = folder / f"{key}.npy", folder / f"{key}.json"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = _read(pixels_file, record_file)
        if cache is None:
            _remove_stale_temporaries(folder)
            log.info("image cache: decoding %d images at %d px into %s (once)", len(paths), size, pixels_file)
            _build(paths, size, pixels_file, record_file)
            cache = _read(pixels_file, record_file)
            if cache is None:
                raise OSError(f"image cache {pixels_file} could not be read back after building it")
            log.info("image cache: %s holds %.1f GB of cached images", folder, _folder_gigabytes(folder))
        elif cache.problems:
            cache = _retry_problems(cache, paths, size, record_file)
    for reason in cache.problems.values():
        log.warning("image cache: skipped %s", reason)
    return cache


__all__ = ["CACHE_FORMAT", "CachedImages", "ImageCache", "cache_key", "default_cache_dir", "open_image_cache"]
