"""Which files are images: formats judged by their bytes, and the paths ``glae predict`` reads."""

from __future__ import annotations

import io
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from glae.data import load_dataset
from glae.data.images import read_rgb
from glae.imageformats import HEADER_PROBE_BYTES, expand_image_paths, image_extensions, image_format, register_openers


def test_formats_are_judged_by_the_bytes() -> None:
    image = Image.new("RGB", (8, 8))
    for format in ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "AVIF"]:
        encoded = io.BytesIO()
        image.save(encoded, format=format)
        assert image_format(encoded.getvalue()) == format
    for format, mode in [("TGA", "RGB"), ("IM", "RGB"), ("SPIDER", "F")]:  # no signature test: judged by their header
        encoded = io.BytesIO()
        image.convert(mode).resize((300, 300)).save(encoded, format=format)  # larger than the header probe
        assert len(encoded.getvalue()) > HEADER_PROBE_BYTES and image_format(encoded.getvalue()) is not None, format
    assert image_format(b"%PDF-1.7") is None and image_format(b"") is None
    assert image_format(b"just some text, whatever the name says\n" * 20) is None
    assert {".jpg", ".png", ".webp", ".avif"} <= image_extensions() and ".pdf" not in image_extensions()


def test_files_folders_and_globs_become_image_paths_in_argument_order(tmp_path: Path) -> None:
    for name in ["album/b.jpg", "album/a.PNG", "album/trip/c.webp", "album/notes.txt", "d.jpg", "e.jpeg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    arguments = ["d.jpg", "album", "*.jp*g", "missing.jpg", "none-*.jpg"]
    paths = expand_image_paths([str(tmp_path / argument) for argument in arguments])
    expected = ["d.jpg", "album/a.PNG", "album/b.jpg", "album/trip/c.webp", "d.jpg", "e.jpeg", "missing.jpg", "none-*.jpg"]
    assert paths == [tmp_path / name for name in expected]  # what matches nothing is kept, to be reported missing


def test_a_recursive_glob_gives_each_photo_once(tmp_path: Path) -> None:
    """``album/**`` matches the folder, its subfolders and their files; a photo is still predicted once."""
    for name in ["album/a.jpg", "album/trip/b.jpg", "album/trip/day/c.jpg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    paths = expand_image_paths([str(tmp_path / "album" / "**")])
    assert sorted(paths) == [tmp_path / name for name in ["album/a.jpg", "album/trip/b.jpg", "album/trip/day/c.jpg"]]


def test_an_existing_file_named_like_a_glob_is_that_file(tmp_path: Path) -> None:
    for name in ["photo[1].jpg", "photo1.jpg"]:
        (tmp_path / name).touch()
    assert expand_image_paths([tmp_path / "photo[1].jpg"]) == [tmp_path / "photo[1].jpg"]
    assert expand_image_paths([tmp_path / "photo[2].jpg"]) == [tmp_path / "photo[2].jpg"]  # kept, to be reported missing
    assert expand_image_paths([tmp_path / "photo[0-9].jpg"]) == [tmp_path / "photo1.jpg"]  # no such file: a glob


class _FakeHeifFile(ImageFile.ImageFile):
    """A stand-in for pillow-heif's decoder: ``FAKEHEIF`` then 2x2 raw RGB pixels."""

    format = "FAKEHEIF"

    def _open(self) -> None:
        if self.fp.read(8) != b"FAKEHEIF":
            raise SyntaxError("not a fake HEIF file")
        self._size, self._mode = (2, 2), "RGB"
        self.tile = [ImageFile._Tile("raw", (0, 0, 2, 2), 8, ("RGB", 0, 1))]


@pytest.fixture()
def fake_pillow_heif(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A ``pillow_heif`` module registering ``_FakeHeifFile``, with Pillow's registry restored after."""
    module = types.ModuleType("pillow_heif")

    def register_heif_opener() -> None:
        Image.register_open(_FakeHeifFile.format, _FakeHeifFile, lambda prefix: prefix[:8] == b"FAKEHEIF")
        Image.register_extension(_FakeHeifFile.format, ".heic")

    module.register_heif_opener = register_heif_opener  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pillow_heif", module)
    Image.init()  # Pillow's own plugins in the registries restored below, or a later Image.open misses them
    monkeypatch.setattr(Image, "ID", list(Image.ID))
    monkeypatch.setattr(Image, "OPEN", dict(Image.OPEN))
    monkeypatch.setattr(Image, "EXTENSION", dict(Image.EXTENSION))
    register_openers.cache_clear()
    yield
    register_openers.cache_clear()
    image_extensions.cache_clear()


def test_reading_a_photo_registers_pillow_heif_first(fake_pillow_heif: None, tmp_path: Path) -> None:
    """``glae predict IMG.HEIC`` with pillow-heif installed: nothing asked for the formats before."""
    photo = tmp_path / "IMG.HEIC"
    photo.write_bytes(b"FAKEHEIF" + bytes([255, 0, 0] * 4))
    assert read_rgb(photo).getpixel((1, 1)) == (255, 0, 0)


def test_datasets_take_the_image_files_predict_takes(tmp_path: Path) -> None:
    """``glae eval`` / ``glae align`` read the formats ``glae predict`` reads, AVIF and JFIF included."""
    for name in ["a.avif", "b.jfif"]:
        Image.new("RGB", (8, 8)).save(tmp_path / name, format="AVIF" if name.endswith("avif") else "JPEG")
    (tmp_path / "faces.csv").write_text("path,age\na.avif,30\nb.jfif,40\n")
    index = load_dataset(tmp_path / "faces.csv", "csv")
    assert [sample.path.name for sample in index.samples] == ["a.avif", "b.jfif"] and not index.skipped
    assert {".avif", ".jfif"} <= image_extensions()


def test_a_folder_search_leaves_out_the_annotate_folder_inside_it(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "annotated").mkdir(parents=True)
    for path in (photos / "me.jpg", photos / "annotated" / "me.jpg"):
        Image.new("RGB", (8, 8)).save(path)
    assert expand_image_paths([photos], skip_folder=photos / "annotated") == [photos / "me.jpg"]
    assert expand_image_paths([photos]) == [photos / "annotated" / "me.jpg", photos / "me.jpg"]
    # A file named on the command line is still taken, wherever it is.
    assert expand_image_paths([photos / "annotated" / "me.jpg"], skip_folder=photos / "annotated") == [photos / "annotated" / "me.jpg"]
    # Globs leave it out too, whether they match its files or the folder itself: a rerun of
    # glae predict 'photos/*' --annotate photos/annotated must not find its own copies.
    for pattern in ("*", "**", "**/*.jpg"):
        assert expand_image_paths([str(photos / pattern)], skip_folder=photos / "annotated") == [photos / "me.jpg"], pattern
    # The folder itself, named literally, is searched.
    assert expand_image_paths([photos / "annotated"], skip_folder=photos / "annotated") == [photos / "annotated" / "me.jpg"]
