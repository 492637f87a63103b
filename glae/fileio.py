"""Atomic file writes: a ``kill -9`` at any moment leaves the old file or the new one.

The files a run depends on (checkpoints, model files, configs, splits, logs, reports,
aligned crops) go through ``atomic_write``: a temporary sibling is written, flushed to disk, given the
permissions a normal file would get, then renamed over the target. Files that must never
replace anything (annotated copies in a user's folder) go through ``create_new``.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    """``.<name>.``, which says whose temporary it is, unless that would not fit in a file name (255 bytes)."""
    return f".{path.name}." if len(os.fsencode(path.name)) <= 200 else ".glae-"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(temp_path)`` then move the finished file onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temp)
        with open(temp, "rb") as stream:
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual mode
        os.replace(temp, path)
    except OSError as error:
        Path(temp).unlink(missing_ok=True)
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path) from None
        raise
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def create_new(path: str | os.PathLike, data: bytes) -> bool:
    """Write ``data`` as ``path`` only if no file has that name; False if the name is taken.

    The finished, flushed temporary sibling is hard-linked to ``path`` (a link never
    replaces an existing name), so even a ``kill -9`` leaves no half-written file under the
    name; at most a hidden ``.<name>.*.tmp`` beside it. Where the filesystem has no hard
    links, the file is created exclusively and written in place.
    """
    path = Path(path)
    handle, temp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            return _create_exclusively(path, data)
        return True
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full(path) from None
        raise
    finally:
        Path(temp).unlink(missing_ok=True)


def _disk_full(path: Path) -> OSError:
    return OSError(errno.ENOSPC, f"no space left on device while writing {path}; free some space, then rerun the same command")


def _create_exclusively(path: Path, data: bytes) -> bool:
    try:
        stream = path.open("xb")  # O_EXCL: fails on any existing name, a link included
    except FileExistsError:
        return False
    with stream:
        try:
            stream.write(data)
        except BaseException:
            path.unlink()  # this call created it
            raise
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda temp: _write_bytes(temp, data))


def _write_bytes(temp: str, data: bytes) -> None:
    with open(temp, "wb") as stream:
        stream.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
