"""Which files are images: the ones Pillow can decode here, decided in one place.

``glae predict`` picks files in folders by the extensions below (``expand_image_paths``) and ``glae serve``
accepts uploads whose bytes Pillow recognises, so a format Pillow learns (AVIF since
Pillow 11.2, HEIC with the ``heic`` extra's pillow-heif) is taken by both at once.
"""

from __future__ import annotations

import glob
import io
import os
import struct
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from PIL import Image

# Pillow identifies these but decodes them only with handlers or programs GLAE never
# installs (Ghostscript, scientific-data handlers) or not at all (MPEG headers).
UNDECODABLE = frozenset({"BUFR", "EPS", "GRIB", "HDF5", "MPEG", "WMF"})
HEADER_PROBE_BYTES = 64 * 1024  # far more than the header of any format without a signature


@cache
def register_openers() -> None:
    """Load Pillow's plugins, plus HEIF/HEIC when pillow-heif is installed; once per process.

    Everything that decides or decodes a format calls it first (``read_rgb`` included), so a
    HEIC photo is read whether or not anything asked for the list of formats before.
    """
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        pass
    else:
        register_heif_opener()
    Image.init()


def decodable_formats() -> list[str]:
    """Pillow's names of the formats GLAE reads, e.g. ``["AVIF", "BMP", ..., "WEBP"]``."""
    register_openers()
    return sorted(set(Image.OPEN) - UNDECODABLE)


@cache
def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (``".jpg"``, ``".avif"``...) of the formats GLAE reads;
    computed once, as folders of many thousand files are filtered by it."""
    formats = set(decodable_formats())
    return frozenset(extension.lower() for extension, name in Image.registered_extensions().items() if name in formats)


def image_format(data: bytes) -> str | None:
    """Pillow's name for the format of ``data``; None when no decoder here claims it.

    Formats with a signature are judged by the test Pillow itself runs on a file's first
    16 bytes (so a truncated photo is still recognised, then refused as corrupt by the
    decoder). Formats without one (TGA, IM, SPIDER...) are judged as ``Image.open`` judges
    them, by parsing their header, so every format in ``decodable_formats()`` is taken; only
    the first ``HEADER_PROBE_BYTES`` are parsed, since some plugins read text of any size
    line by line (seconds for a 10 MB upload, on the server's event loop).
    """
    register_openers()
    prefix = data[:16]
    headerless = []
    for name in Image.ID:
        _, accept = Image.OPEN[name]
        if name in UNDECODABLE:
            continue
        if accept is None:
            headerless.append(name)
            continue
        try:
            claimed = accept(prefix)
        except (struct.error, IndexError, ValueError):  # a prefix shorter than the test reads
            continue
        if claimed and not isinstance(claimed, str):  # a str is Pillow's reason to refuse
            return name
    probe = data[:HEADER_PROBE_BYTES]
    return next((name for name in headerless if _header_parses(probe, name)), None)


def _header_parses(data: bytes, name: str) -> bool:
    """Whether Pillow's ``name`` plugin reads a header from ``data`` (pixels are not decoded)."""
    try:
        with Image.open(io.BytesIO(data), formats=[name]):
            return True
    except Image.DecompressionBombError:  # recognised: the reader refuses it with its own message
        return True
    except (OSError, ValueError, EOFError):  # Image.UnidentifiedImageError is an OSError
        return False


def expand_image_paths(patterns: Iterable[str | os.PathLike], skip_folder: Path | None = None) -> list[Path]:
    """Files, folders (searched recursively for images) and globs -> paths, in argument order.

    An existing file or folder is taken as it is, even when its name looks like a glob
    (``photo[1].jpg``); an argument that matches nothing is kept as it is, so it is
    reported as "file not found" instead of vanishing. Folder searches and globs leave out
    ``skip_folder`` (where ``glae predict --annotate`` writes), so a rerun does not take its
    own earlier copies for photos; a file or folder named literally is still taken.
    """
    skipped = skip_folder.resolve() if skip_folder is not None else None
    paths: list[Path] = []
    for pattern in map(str, patterns):
        literal = os.path.exists(pattern) or not glob.has_magic(pattern)
        matches = [pattern] if literal else sorted(glob.glob(pattern, recursive=True))
        found: list[Path] = []
        for match in map(Path, matches or [pattern]):
            skip = None if literal and match.resolve() == skipped else skipped  # a folder asked for by name is searched
            if match.is_dir():
                found += sorted(
                    p for p in match.rglob("*")
                    if p.is_file() and p.suffix.lower() in image_extensions() and not _inside(p, skip)
                )
            elif literal or not _inside(match, skip):
                found.append(match)
        paths += dict.fromkeys(found)  # ``d/**`` matches d, its subfolders and their files: each photo once
    return paths


def _inside(path: Path, folder: Path | None) -> bool:
    """Whether ``path`` lies somewhere under ``folder`` (never, for None)."""
    return folder is not None and folder in path.resolve().parents
