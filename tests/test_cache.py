"""The decoded-image cache (glae.data.cache): same pixels, rebuilt when files change, never half-used."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from glae.data.cache import CachedImages, cache_key, open_image_cache
from glae.data.datasets import AgeSample
from glae.data.images import AgeImageDataset, read_rgb
from glae.data.transforms import train_transform
from glae.models.glae import PAPER_INPUT


def _photos(folder: Path, count: int = 3) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index}.jpg"
        Image.fromarray(rng.integers(0, 255, (50 + index, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_cached_pixels_are_exactly_what_resize_gives(tmp_path: Path) -> None:
    paths = _photos(tmp_path)
    cache = open_image_cache(paths, 32, tmp_path / "cache")
    for index, path in enumerate(paths):
        expected = np.asarray(T.Resize((32, 32), antialias=True)(read_rgb(path)))
        np.testing.assert_array_equal(np.asarray(cache.image(index)), expected)


def test_training_draws_are_identical_with_and_without_the_cache(tmp_path: Path) -> None:
    """Same seeds, same augmented tensors: a run may switch the cache on or off and resume identically."""
    paths = _photos(tmp_path)
    samples = [AgeSample(path=p, age=20.0 + i) for i, p in enumerate(paths)]
    transform = train_transform(32, PAPER_INPUT, augment=True, flip=True)
    cache = open_image_cache(paths, 32, tmp_path / "cache")
    plain = AgeImageDataset(samples, transform)
    cached = AgeImageDataset(samples, transform, CachedImages(cache, range(len(paths))))
    for key in [(0, 11), (1, 12), (2, 13)]:
        assert torch.equal(plain[key][0], cached[key][0])


def test_a_changed_file_gets_a_new_cache(tmp_path: Path) -> None:
    paths = _photos(tmp_path)
    before = cache_key(paths, 32)
    assert cache_key(paths, 32) == before and cache_key(paths, 64) != before
    Image.new("RGB", (60, 60), "white").save(paths[1])
    os.utime(paths[1], ns=(1, 1))
    assert cache_key(paths, 32) != before
    cache = open_image_cache(paths, 32, tmp_path / "cache")
    assert np.asarray(cache.image(1)).min() == 255  # the new content, not the old pixels


def _resized(path: Path) -> np.ndarray:
    return np.asarray(T.Resize((32, 32), antialias=True)(read_rgb(path)))


def test_a_file_rewritten_at_the_same_size_within_the_second_gets_a_new_cache(tmp_path: Path) -> None:
    """An uncompressed BMP's byte size is set by its dimensions: an edited photo differs by its mtime alone."""
    path = tmp_path / "face.bmp"
    Image.new("RGB", (40, 50), "black").save(path)
    assert np.asarray(open_image_cache([path], 32, tmp_path / "cache").image(0)).max() == 0
    before = path.stat()
    Image.new("RGB", (40, 50), "white").save(path)
    os.utime(path, ns=(before.st_mtime_ns + 1000, before.st_mtime_ns + 1000))  # a microsecond later
    assert path.stat().st_size == before.st_size
    assert np.asarray(open_image_cache([path], 32, tmp_path / "cache").image(0)).min() == 255


def test_a_file_replaced_with_its_old_mtime_gets_a_new_cache(tmp_path: Path) -> None:
    """``cp -p``, ``rsync -t`` or an archive restore can bring other content with the old mtime; its size differs."""
    paths = _photos(tmp_path)
    open_image_cache(paths, 32, tmp_path / "cache")
    before = paths[1].stat()
    Image.new("RGB", (60, 60), "white").save(paths[1])
    os.utime(paths[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert paths[1].stat().st_size != before.st_size
    assert np.asarray(open_image_cache(paths, 32, tmp_path / "cache").image(1)).min() == 255


def test_the_same_files_in_another_order_are_served_by_position(tmp_path: Path) -> None:
    """A reordered file list (another split, another manifest) must not be served the first order's pixels."""
    paths = _photos(tmp_path)
    open_image_cache(paths, 32, tmp_path / "cache")
    reordered = [paths[2], paths[0], paths[1]]
    cache = open_image_cache(reordered, 32, tmp_path / "cache")
    for index, path in enumerate(reordered):
        np.testing.assert_array_equal(np.asarray(cache.image(index)), _resized(path))


def test_images_after_a_skipped_file_are_their_own(tmp_path: Path) -> None:
    """Training keeps the usable files and reads them through ``CachedImages(cache, usable)`` (glae/train.py):
    a corrupt file in the middle must shift no later face onto another's pixels."""
    paths = _photos(tmp_path, 4)
    paths[1].write_bytes(b"\xff\xd8 not really a jpeg")
    cache = open_image_cache(paths, 32, tmp_path / "cache")
    images = CachedImages(cache, cache.usable())
    for position, index in enumerate([0, 2, 3]):
        np.testing.assert_array_equal(np.asarray(images(position)), _resized(paths[index]))


def test_corrupt_and_vanished_files_are_reported_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = _photos(tmp_path, 4)
    paths[1].write_bytes(b"\xff\xd8 not really a jpeg")
    paths[2].unlink()
    cache = open_image_cache(paths, 32, tmp_path / "cache")
    assert cache.usable() == [0, 3]
    assert set(cache.problems) == {1, 2}
    assert str(paths[1]) in caplog.text and str(paths[2]) in caplog.text
    assert np.asarray(cache.image(3)).shape == (32, 32, 3)


def test_a_build_killed_midway_is_never_used(tmp_path: Path) -> None:
    """Pixels without their record (what a kill -9 before the last rename leaves) are rebuilt."""
    paths = _photos(tmp_path)
    folder = tmp_path / "cache"
    open_image_cache(paths, 32, folder)
    key = cache_key(paths, 32)
    (folder / f"{key}.json").unlink()
    np.lib.format.open_memmap(folder / f"{key}.npy", mode="w+", dtype=np.uint8, shape=(3, 32, 32, 3))[:] = 7
    (folder / f"{key}.npy.tmp-99999").write_bytes(b"half")
    cache = open_image_cache(paths, 32, folder)
    assert np.asarray(cache.image(0)).max() != 7 or np.asarray(cache.image(0)).min() != 7
    assert not list(folder.glob("*.tmp-*"))


def test_the_cache_pickles_by_path_not_by_pixels(tmp_path: Path) -> None:
    import pickle

    paths = _photos(tmp_path)
    cache = open_image_cache(paths, 32, tmp_path / "cache")
    data = pickle.dumps(cache)
    assert len(data) < 2000
    np.testing.assert_array_equal(np.asarray(pickle.loads(data).image(2)), np.asarray(cache.image(2)))


def test_the_same_files_from_another_folder_share_one_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two checkouts next to one dataset (``../data``) or a symlink to it must not decode it twice."""
    paths = _photos(tmp_path)
    (tmp_path / "checkout").mkdir()
    (tmp_path / "link").symlink_to(paths[0].parent)
    monkeypatch.chdir(tmp_path / "checkout")
    relative = [Path("..") / path.relative_to(tmp_path) for path in paths]
    linked = [tmp_path / "link" / path.name for path in paths]
    assert cache_key(relative, 32) == cache_key(paths, 32) == cache_key(linked, 32)


def test_a_file_that_failed_once_is_tried_again_on_the_next_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A permission fixed with chmod changes neither size nor mtime: the key stays, yet the file must come back."""
    from glae.data import cache as cache_module
    from glae.data.images import ImageReadError

    paths = _photos(tmp_path)

    def denied(path: Path) -> Image.Image:
        if path == paths[1]:
            raise ImageReadError(f"{path}: permission denied")
        return read_rgb(path)

    monkeypatch.setattr(cache_module, "read_rgb", denied)
    assert open_image_cache(paths, 32, tmp_path / "cache").usable() == [0, 2]
    monkeypatch.setattr(cache_module, "read_rgb", read_rgb)
    again = open_image_cache(paths, 32, tmp_path / "cache")
    assert again.usable() == [0, 1, 2]
    expected = np.asarray(T.Resize((32, 32), antialias=True)(read_rgb(paths[1])))
    np.testing.assert_array_equal(np.asarray(again.image(1)), expected)
    assert open_image_cache(paths, 32, tmp_path / "cache").problems == {}  # the record says so too


def test_only_the_caches_own_temporary_files_are_removed(tmp_path: Path) -> None:
    """``data.cache_dir`` may be a folder the user also keeps other files in."""
    folder = tmp_path / "cache"
    folder.mkdir()
    theirs = folder / "notes.txt.tmp-3"
    theirs.write_text("mine")
    ours = folder / f"{'0' * 32}.npy.tmp-12"
    ours.write_bytes(b"half")
    open_image_cache(_photos(tmp_path), 32, folder)
    assert theirs.read_text() == "mine" and not ours.exists()
