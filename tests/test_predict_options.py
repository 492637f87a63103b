"""PredictOptions: one set of flags, defaults and refusals for ``glae predict``, ``glae serve`` and ``AgeEstimator``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from glae.cli import build_parser, main
from glae.config import MAX_BATCH_SIZE
from glae.estimator import AgeEstimator
from glae.faces.align import MAX_MARGIN
from glae.faces.filtering import FaceFilter
from glae.inference_backends import load_routed_predictor
from glae.predict_options import FACE_FINDING, PredictOptions

# A value other than the default for every option: a new option must be added here.
NOT_DEFAULT = {"batch_size": 7, "margin": 0.25, "min_face_score": 0.5, "min_face_size": 20.0, "detector": "blazeface", "device": "cpu",
               "precision": "bfloat16"}
COMMANDS = [["predict", "photo.jpg"], ["serve"]]


def _flags(values: dict[str, object]) -> list[str]:
    return [item for name, value in values.items() for item in ("--" + name.replace("_", "-"), str(value))]


def test_every_option_has_a_value_to_test() -> None:
    assert set(NOT_DEFAULT) == {option.name for option in fields(PredictOptions)}
    assert all(getattr(PredictOptions(), name) != value for name, value in NOT_DEFAULT.items())


@pytest.mark.parametrize("command", COMMANDS)
def test_both_commands_take_every_option_with_its_default(command: list[str]) -> None:
    parser = build_parser()
    assert PredictOptions.from_arguments(parser.parse_args(command)) == PredictOptions()
    assert PredictOptions.from_arguments(parser.parse_args([*command, *_flags(NOT_DEFAULT)])) == PredictOptions(**NOT_DEFAULT)


def test_the_estimator_has_the_commands_defaults(model_file: Path) -> None:
    defaults = PredictOptions.from_arguments(build_parser().parse_args(["predict", "photo.jpg"]))
    assert AgeEstimator.load(model_file).options == defaults
    assert AgeEstimator(load_routed_predictor(model_file)).options == defaults


def test_glae_predict_options_reach_its_estimator(
    model_file: Path, utk_crops: list[Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    loaded: list[AgeEstimator] = []
    load = AgeEstimator.load.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(AgeEstimator, "load", classmethod(lambda cls, *args: loaded.append(load(cls, *args)) or loaded[-1]))
    assert main(["predict", str(utk_crops[0]), "--model", str(model_file), "--aligned", "--json", *_flags(NOT_DEFAULT)]) == 0
    (estimator,) = loaded
    assert estimator.options == PredictOptions(**NOT_DEFAULT)
    assert estimator.face_filter == FaceFilter(NOT_DEFAULT["min_face_score"], NOT_DEFAULT["min_face_size"])


def test_glae_align_takes_the_face_finding_options_and_they_reach_its_aligner(
    utk_crops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset is aligned as glae predict finds faces: the same flags, defaults and filter."""
    from glae.faces import align_dataset as module

    finding = {name: NOT_DEFAULT[name] for name in FACE_FINDING}
    parser = build_parser()
    assert PredictOptions.from_arguments(parser.parse_args(["align", "SRC", "DST"]), FACE_FINDING) == PredictOptions()
    assert PredictOptions.from_arguments(parser.parse_args(["align", "SRC", "DST", *_flags(finding)]), FACE_FINDING) == PredictOptions(**finding)
    with pytest.raises(SystemExit):
        parser.parse_args(["align", "SRC", "DST", "--batch-size", "7"])  # not a face-finding option
    used: list = []
    run = module._run
    monkeypatch.setattr(module, "_run", lambda tasks, workers, aligner, progress: used.append(aligner) or run(tasks, workers, aligner, progress))
    source = tmp_path / "faces"
    source.mkdir()
    (source / utk_crops[0].name).write_bytes(utk_crops[0].read_bytes())
    assert main(["align", str(source), str(tmp_path / "aligned"), "--workers", "0", "--no-progress", *_flags(finding)]) == 0
    (aligner,) = used
    assert (aligner.detector, aligner.margin) == (finding["detector"], finding["margin"])
    assert aligner.face_filter == FaceFilter(finding["min_face_score"], finding["min_face_size"])


def test_glae_serve_options_reach_the_apps_estimator(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimator ``glae serve`` hands its app; the app runs every request with its options (test_serve.py)."""
    uvicorn = pytest.importorskip("uvicorn")
    from glae.serve import server

    served: list[AgeEstimator] = []
    create_app = server.create_app
    monkeypatch.setattr(server, "create_app", lambda estimator, *args: served.append(estimator) or create_app(estimator, *args))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    assert main(["serve", "--model", str(model_file), *_flags(NOT_DEFAULT)]) == 0
    (estimator,) = served
    assert estimator.options == PredictOptions(**NOT_DEFAULT)
    assert estimator.face_filter == FaceFilter(NOT_DEFAULT["min_face_score"], NOT_DEFAULT["min_face_size"])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 2.5}, "--batch-size must be a whole number, got 2.5"),
        ({"batch_size": "8"}, "--batch-size must be a whole number, got '8'"),
        ({"batch_size": True}, "--batch-size must be a whole number, got True"),
        ({"margin": None}, "--margin must be a number, got None"),
        ({"detector": None}, "--detector must be a string, got None"),
    ],
)
def test_the_api_refuses_a_value_of_the_wrong_type_naming_its_flag(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        PredictOptions(**values)  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert PredictOptions(margin=1, min_face_size=20) == PredictOptions(margin=1.0, min_face_size=20.0)  # an int is a number


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 0}, "--batch-size must be in 1..4096, got 0"),
        ({"batch_size": 5000}, "--batch-size must be in 1..4096, got 5000"),
        ({"margin": -0.1}, "--margin must be in [0, 2], got -0.1"),
        ({"margin": 2.5}, "--margin must be in [0, 2], got 2.5"),
        ({"min_face_score": 1.5}, "--min-face-score must be in [0, 1], got 1.5"),
        ({"min_face_score": -0.1}, "--min-face-score must be in [0, 1], got -0.1"),
        ({"min_face_score": float("nan")}, "--min-face-score must be in [0, 1], got nan"),
        ({"min_face_size": -1.0}, "--min-face-size must be >= 0 pixels, got -1.0"),
        ({"detector": "retinaface"}, "--detector must be one of mtcnn, blazeface, got 'retinaface'"),
        ({"device": "banana"}, "--device 'banana' is not a device; use auto, cpu, cuda or cuda:N"),
        ({"precision": "float16"}, "--precision must be one of float32, bfloat16, got 'float16'"),
    ],
)
def test_a_value_out_of_range_is_one_error_naming_its_flag(
    values: dict[str, object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError) as caught:
        PredictOptions(**values)  # type: ignore[arg-type]
    assert str(caught.value) == message
    for command in COMMANDS:  # refused before the (absent) model is looked for
        assert main([*command, "--model", str(tmp_path / "absent.safetensors"), *_flags(values)]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"


def test_the_documented_bounds_of_the_options_are_accepted() -> None:
    options = PredictOptions(min_face_score=0.0, margin=MAX_MARGIN, batch_size=MAX_BATCH_SIZE)
    assert (options.min_face_score, options.margin, options.batch_size) == (0.0, MAX_MARGIN, MAX_BATCH_SIZE)
