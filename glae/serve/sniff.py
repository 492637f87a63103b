"""Which image format a file is, from its first bytes.

The filename and the Content-Type are whatever the client says; the bytes are what the
decoder will see, so only they decide whether an upload is worth decoding (415 if not).
"""

from __future__ import annotations

# (leading bytes, format): the formats PIL decodes that a photo arrives in; WebP is
# "RIFF", a size, then "WEBP", so it has a test of its own.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
)
SUPPORTED_FORMATS = ("jpeg", "png", "webp", "bmp", "gif", "tiff")


def sniff_image_format(head: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"webp"``, ``"bmp"``, ``"gif"``, ``"tiff"``, or None for anything else."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for signature, name in SIGNATURES:
        if head.startswith(signature):
            return name
    return None
