"""read_rgb on every kind of input a user may have, its errors, and AgeImageDataset."""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.data.datasets import AgeSample
from glae.data.images import AgeImageDataset, ImageReadError, read_rgb
from glae.data.transforms import eval_transform, train_transform
from glae.models.glae import PAPER_INPUT


def _rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    # 30 wide x 20 high; the left 10 columns red, the rest blue
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :10] = (255, 0, 0)
    pixels[:, 10:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = read_rgb(path)
    assert image.size == (20, 30)  # width and height swapped
    out = _rgb(image)
    # rotating clockwise brings the left edge to the top
    assert out[:8, :, 0].mean() > 200 and out[:8, :, 2].mean() < 60
    assert out[12:, :, 2].mean() > 200 and out[12:, :, 0].mean() < 60
    # The upright image, read again (glae serve decodes an upload, then predicts on it), is not turned twice.
    assert read_rgb(image).size == (20, 30)
    np.testing.assert_array_equal(_rgb(read_rgb(image)), out)


def test_every_one_byte_corruption_of_an_avif_is_a_read_error_or_an_image() -> None:
    """Pillow's AVIF decoder raises RuntimeError on some damage (``Conversion from YUV failed``):
    it must fail that one photo, like any corrupt file, not stop a whole ``glae predict`` run."""
    encoded = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(encoded, "AVIF")
    data = encoded.getvalue()
    for value in (0x00, 0xC2, 0xFF):
        for position in range(len(data)):
            damaged = bytearray(data)
            damaged[position] = value
            try:
                assert read_rgb(bytes(damaged)).mode == "RGB"
            except ImageReadError:
                pass


def test_a_photo_with_a_broken_exif_block_is_read_as_stored(tmp_path: Path) -> None:
    """An EXIF block without its TIFF header (editors write such): the pixels are fine, so the photo is read."""
    path = tmp_path / "broken_exif.png"
    Image.new("RGB", (30, 20), (200, 100, 50)).save(path, exif=b"Exif\x00\x00not-a-tiff")
    image = read_rgb(path)
    assert image.size == (30, 20)
    assert tuple(_rgb(image)[10, 15]) == (200, 100, 50)


def test_a_pil_image_in_a_mode_without_rgb_conversion_is_an_image_read_error() -> None:
    with pytest.raises(ImageReadError, match="colour mode La cannot be read as RGB"):
        read_rgb(Image.new("La", (4, 4)))


def test_an_empty_pil_image_is_an_image_read_error() -> None:
    """A 0x0 PIL image is refused as the empty input it is, not a ZeroDivisionError in the face detector."""
    with pytest.raises(ImageReadError, match="empty image 0x5"):
        read_rgb(Image.new("RGB", (0, 5)))


def test_grayscale(tmp_path: Path) -> None:
    path = tmp_path / "gray.png"
    Image.new("L", (5, 4), 77).save(path)
    out = _rgb(read_rgb(path))
    assert out.shape == (4, 5, 3)
    assert (out == 77).all()


def test_cmyk_jpeg(tmp_path: Path) -> None:
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    image.paste((0, 0, 0, 255), (0, 0, 16, 8))  # full black ink on the top half
    path = tmp_path / "cmyk.jpg"
    image.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    out = _rgb(read_rgb(path))
    assert out.shape == (16, 16, 3)
    assert out[:6].max() < 30  # black
    assert out[10:].min() > 225  # white


def test_rgba_transparent_becomes_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    path = tmp_path / "alpha.png"
    image.save(path)
    out = _rgb(read_rgb(path))
    assert out[0, 0].tolist() == [0, 0, 255]
    assert (out[1:] == 255).all() and (out[0, 1:] == 255).all()


def test_16bit_grayscale_is_rescaled(tmp_path: Path) -> None:
    pixels = np.array([[65535, 32768], [0, 1000]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")
    out = _rgb(read_rgb(path))[..., 0]
    assert out[0, 0] == 255
    assert abs(out[0, 1] - 128) <= 1
    assert out[1, 0] == 0
    assert out[1, 1] == math.floor(1000 / 65535 * 255)  # 3, not a clipped 255


def test_float_tiffs_in_0_1_and_in_0_255_read_alike(tmp_path: Path) -> None:
    """Scientific tools write float images in 0-1, Pillow in 0-255: the same face either way, not a black one."""
    grey = np.array([[0, 64], [128, 255]], np.float32)
    for name, pixels in [("unit.tiff", grey / 255), ("byte.tiff", grey)]:
        Image.fromarray(pixels).save(tmp_path / name)
    unit, byte = (_rgb(read_rgb(tmp_path / name))[..., 0] for name in ("unit.tiff", "byte.tiff"))
    assert byte.tolist() == [[0, 64], [128, 255]]
    assert np.abs(unit.astype(int) - byte).max() <= 1


def test_palette_png(tmp_path: Path) -> None:
    image = Image.new("P", (3, 3), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 1), 1)
    path = tmp_path / "palette.png"
    image.save(path)
    out = _rgb(read_rgb(path))
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[1, 1].tolist() == [200, 100, 50]


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette_t.png"
    image.save(path, transparency=0)
    out = _rgb(read_rgb(path))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [200, 100, 50]


def test_numpy_arrays() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = _rgb(read_rgb(gray))
    assert out.shape == (3, 4, 3)
    assert (out == gray[..., None]).all()
    color = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    assert (_rgb(read_rgb(color)) == color).all()
    with pytest.raises(ImageReadError, match="uint8"):
        read_rgb(np.zeros((3, 4), np.float32))


def test_bytes_and_pil_inputs() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 5), (1, 2, 3)).save(buffer, format="PNG")
    out = _rgb(read_rgb(buffer.getvalue()))
    assert out.shape == (5, 6, 3) and (out == [1, 2, 3]).all()
    assert _rgb(read_rgb(Image.new("L", (2, 2), 9))).tolist() == [[[9] * 3] * 2] * 2
    with pytest.raises(ImageReadError, match="empty"):
        read_rgb(b"")
    with pytest.raises(ImageReadError, match="<bytes>"):
        read_rgb(b"not an image at all")


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_error_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.jpg.*empty"):
        read_rgb(path)


def test_error_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("hello, I am not a JPEG\n")
    with pytest.raises(ImageReadError, match=r"notes\.jpg"):
        read_rgb(path)


def test_error_truncated_jpeg(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*(corrupt|truncated)"):
        read_rgb(path)


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"ghost\.png.*not found"):
        read_rgb(tmp_path / "ghost.png")


def test_error_too_many_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (20, 20)).save(path)
    with pytest.raises(ImageReadError, match=r"big\.png.*20x20.*100"):
        read_rgb(path, max_pixels=100)
    assert read_rgb(path, max_pixels=400).size == (20, 20)
    with pytest.raises(ImageReadError, match="exceeds"):
        read_rgb(np.zeros((20, 20), np.uint8), max_pixels=100)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but whose pixel data is only a 2x2 image."""
    buffer = io.BytesIO()
    Image.new("L", (2, 2)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(8000, 8000))  # 64 MP > the 50 MP default, a few bytes on disk
    # decoding would fail as corrupt; the size check must reject it first
    with pytest.raises(ImageReadError, match=r"bomb\.png: 8000x8000 pixels exceeds"):
        read_rgb(path)
    small = tmp_path / "liar.png"
    small.write_bytes(_png_claiming(30, 30))
    with pytest.raises(ImageReadError, match=r"liar\.png.*(corrupt|truncated)"):
        read_rgb(small)
    with pytest.raises(ImageReadError, match=r"liar\.png: 30x30 pixels exceeds"):
        read_rgb(small, max_pixels=100)


@pytest.fixture()
def face(tmp_path: Path) -> AgeSample:
    pixels = np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    path = tmp_path / "face.png"
    Image.fromarray(pixels).save(path)
    return AgeSample(path=path, age=33.0)


def test_dataset_seeded_augmentation(face: AgeSample) -> None:
    dataset = AgeImageDataset([face, face], train_transform(32, PAPER_INPUT))
    torch.manual_seed(123)
    a, age, std = dataset[(0, 7)]
    torch.manual_seed(456)  # the global RNG must not matter
    b, _, _ = dataset[(1, 7)]
    c, _, _ = dataset[(0, 8)]
    assert a.shape == (3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # ColorJitter draws new factors for another seed
    assert age == 33.0 and math.isnan(std)
    # the global RNG is left as it was
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dataset[(0, 7)]
    assert torch.equal(torch.rand(3), expected)


def test_dataset_age_std_and_plain_index(tmp_path: Path, face: AgeSample) -> None:
    sample = AgeSample(path=face.path, age=20.5, age_std=3.25)
    dataset = AgeImageDataset([sample], eval_transform(16, PAPER_INPUT))
    image, age, std = dataset[0]
    assert image.shape == (3, 16, 16)
    assert (age, std) == (20.5, 3.25)


def test_eval_transform_normalization(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:4] = 255
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    dataset = AgeImageDataset([AgeSample(path=path, age=1.0)], eval_transform(8, PAPER_INPUT))
    image, _, _ = dataset[0]
    assert torch.allclose(image[:, :4], torch.full((3, 4, 8), (255 - 127.5) / 128), atol=1e-6)
    assert torch.allclose(image[:, 4:], torch.full((3, 4, 8), -127.5 / 128), atol=1e-6)


@pytest.mark.parametrize(
    "source, message",
    [
        (None, "<NoneType>: not an image"),
        (42, "<int>: not an image"),
        (np.zeros((4, 4, 2), np.uint8), r"uint8 HxW or HxWx3 array, got uint8 \(4, 4, 2\)"),
        (np.zeros((0, 4, 3), np.uint8), "empty array"),
    ],
)
def test_objects_that_are_no_image_are_image_read_errors(source: object, message: str) -> None:
    with pytest.raises(ImageReadError, match=message):
        read_rgb(source)  # type: ignore[arg-type]


def test_one_channel_array_is_grayscale() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    assert (_rgb(read_rgb(gray)) == gray).all()


def test_permission_denied_is_not_called_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.jpg"
    path.write_bytes(_jpeg_bytes())

    def refuse(*_: object, **__: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", refuse)  # root ignores chmod 000, so the refusal is simulated
    with pytest.raises(ImageReadError, match=r"locked\.jpg: permission denied; make the file readable") as caught:
        read_rgb(path)
    assert "corrupt" not in str(caught.value)


def test_folder_named_like_an_image(tmp_path: Path) -> None:
    (tmp_path / "album.jpg").mkdir()
    with pytest.raises(ImageReadError, match=r"album\.jpg: a folder"):
        read_rgb(tmp_path / "album.jpg")


def test_decompression_bomb_message_quotes_glae_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(_png_claiming(20_000, 20_000))  # 400 MP: Pillow refuses it while opening
    with pytest.raises(ImageReadError, match=r"huge\.png: the image exceeds the limit of 50000000 pixels \(50 MP\)") as caught:
        read_rgb(path)
    assert str(Image.MAX_IMAGE_PIXELS) not in str(caught.value)
