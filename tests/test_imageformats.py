"""Which files are images: formats judged by their bytes, and the paths ``glae predict`` reads."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from glae.imageformats import expand_image_paths, image_extensions, image_format


def test_formats_are_judged_by_the_bytes() -> None:
    image = Image.new("RGB", (8, 8))
    for format in ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "AVIF"]:
        encoded = io.BytesIO()
        image.save(encoded, format=format)
        assert image_format(encoded.getvalue()) == format
    assert image_format(b"%PDF-1.7") is None and image_format(b"") is None
    assert {".jpg", ".png", ".webp", ".avif"} <= image_extensions() and ".pdf" not in image_extensions()


def test_files_folders_and_globs_become_image_paths_in_argument_order(tmp_path: Path) -> None:
    for name in ["album/b.jpg", "album/a.PNG", "album/trip/c.webp", "album/notes.txt", "d.jpg", "e.jpeg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    arguments = ["d.jpg", "album", "*.jp*g", "missing.jpg", "none-*.jpg"]
    paths = expand_image_paths([str(tmp_path / argument) for argument in arguments])
    expected = ["d.jpg", "album/a.PNG", "album/b.jpg", "album/trip/c.webp", "d.jpg", "e.jpeg", "missing.jpg", "none-*.jpg"]
    assert paths == [tmp_path / name for name in expected]  # what matches nothing is kept, to be reported missing
