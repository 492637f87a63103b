"""``glae`` refusals a hostile user meets: one line on stderr, before any work, no file of theirs touched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from glae.checkpoint import CheckpointError, load_model, save_model
from glae.cli import main
from glae.estimator import AgeEstimator
from glae.predict_options import PredictOptions


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the command printed on stderr."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_eval_part_without_split_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--data", str(tmp_path / "absent"), "--part", "test"]) == 2
    assert "--part test needs --split RUN/split.json" in _error(capsys)


def test_eval_split_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--data", str(tmp_path), "--split", str(tmp_path / "split.json")]) == 2
    assert "split.json does not exist" in _error(capsys)


def test_eval_csv_column_that_is_not_field_equals_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--data", str(tmp_path), "--csv-column", "file"]) == 2
    assert "--csv-column expects FIELD=NAME with FIELD one of age, path, split, std, subject, got 'file'" in _error(capsys)


def test_eval_reads_a_manifest_by_its_own_column_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (48, 48), (120, 90, 60)).save(tmp_path / name)
    (tmp_path / "table.csv").write_text("File,Years\na.jpg,30\nb.jpg,40\n")
    argv = ["eval", "--data", str(tmp_path / "table.csv"), "--format", "csv", "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--csv-column", "path=file", "--csv-column", "age=years"]) == 0
    assert "on 2 images" in capsys.readouterr().out
    assert main(argv) == 2
    assert "missing required column 'path' for the path" in _error(capsys)


def test_eval_skips_a_corrupt_image_as_training_does(tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog) -> None:
    """One truncated JPEG in the manifest: eval scores the other faces and names the skipped file."""
    from PIL import Image

    Image.new("RGB", (48, 48), (120, 90, 60)).save(tmp_path / "a.jpg")
    Image.new("RGB", (48, 48), (60, 90, 120)).save(tmp_path / "whole.jpg")
    (tmp_path / "b.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:200])
    (tmp_path / "table.csv").write_text("path,age\na.jpg,30\nb.jpg,40\n")
    json_file = tmp_path / "report.json"
    argv = ["eval", "--data", str(tmp_path / "table.csv"), "--format", "csv", "--workers", "0", "--device", "cpu", "--json", str(json_file)]
    assert main(argv) == 0
    assert "on 1 images" in capsys.readouterr().out
    assert any("b.jpg" in record.message and "skipped" in record.message for record in caplog.records)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--data", "DATA", "--report", "FILE"], "--report {FILE} is an existing file, not a folder"),
        (["eval", "--data", "DATA", "--json", "DIR"], "--json {DIR} is a folder; give a file name"),
        (["eval", "--data", "DATA", "--json", "FILE/out.json"], "{FILE} is a file, not a folder"),
        (["train", "--out", "FILE"], "--out {FILE} is an existing file, not a folder"),
        (["predict", "DIR/face.jpg", "--annotate", "FILE"], "--annotate {FILE} is an existing file, not a folder"),
        (["export", "--onnx", "DIR", "--model", "FILE"], "ending in .onnx"),
    ],
)
def test_output_path_taken_fails_before_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    places = {"FILE": tmp_path / "notes.txt", "DIR": tmp_path / "folder", "DATA": tmp_path / "no-data-here"}
    places["FILE"].write_text("mine")
    places["DIR"].mkdir()
    (places["DIR"] / "face.jpg").write_bytes(b"")
    argv = [arg.replace("FILE", str(places["FILE"])).replace("DIR", str(places["DIR"])).replace("DATA", str(places["DATA"])) for arg in argv]
    assert main(argv) == 2
    assert message.format(FILE=places["FILE"], DIR=places["DIR"]) in _error(capsys)
    assert places["FILE"].read_text() == "mine"


@pytest.mark.parametrize("model", ["models", "models.onnx"])
def test_a_folder_given_as_the_model_is_named_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str) -> None:
    (tmp_path / model).mkdir()
    (tmp_path / "face.jpg").write_bytes(b"")
    assert main(["predict", str(tmp_path / "face.jpg"), "--model", str(tmp_path / model), "--aligned"]) == 2
    assert f"{tmp_path / model} is a folder, not a file" in _error(capsys)


def test_predict_empty_folder_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(tmp_path / "empty")]) == 2
    assert f"no image files found in {tmp_path / 'empty'}" in _error(capsys)


def test_predict_annotate_into_the_photo_folder_is_refused(utk_crops: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "me.jpg"
    photo.write_bytes(utk_crops[0].read_bytes())
    assert main(["predict", str(photos), "--annotate", str(photos)]) == 2
    assert "holds the input photo" in _error(capsys)
    assert photo.read_bytes() == utk_crops[0].read_bytes() and sorted(photos.iterdir()) == [photo]


@pytest.mark.parametrize("command", [["predict", "x.jpg"], ["eval", "--data", "x"], ["serve"]])
def test_unknown_device_is_one_line(capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    assert main([*command, "--device", "banana"]) == 2
    assert "--device 'banana' is not a device; use auto, cpu, cuda or cuda:N" in _error(capsys)


def test_cuda_without_gpu_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["predict", "x.jpg", "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA GPU is visible on this machine; use cpu or auto" in _error(capsys)


def test_impossible_train_setting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path), "--set", "model.input_size=-5"]) == 2
    assert "model.input_size must be an integer in 32..1024, got -5" in _error(capsys)


def test_a_newline_in_a_name_keeps_the_error_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", "x.jpg", "--model", str(tmp_path / "my\nmodel.safetensors")]) == 2
    assert "my model.safetensors does not exist" in _error(capsys)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--data", "x", "--batch-size", "1000000000"], "--batch-size must be in 1..4096, got 1000000000"),
        (["eval", "--data", "x", "--workers", "-1"], "--workers must be >= 0, got -1"),
        (["predict", "PHOTO", "--batch-size", "0"], "--batch-size must be in 1..4096, got 0"),
    ],
)
def test_huge_or_negative_batch_settings_are_one_line(
    model_file: Path, utk_crops: list[Path], capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [arg.replace("PHOTO", str(utk_crops[0])) for arg in argv]
    assert main([*argv, "--model" if argv[0] == "predict" else "--checkpoint", str(model_file), "--device", "cpu"]) == 2
    assert message in _error(capsys)


@pytest.mark.parametrize("content, message", [("{not json", "is not JSON"), ('{"test": [1, 2]}', "is not a split")])
def test_split_that_is_not_a_split(
    model_file: Path, utk_crops: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / utk_crops[0].name).write_bytes(utk_crops[0].read_bytes())
    split = tmp_path / "split.json"
    split.write_text(content)
    argv = ["eval", "--data", str(data), "--split", str(split), "--checkpoint", str(model_file), "--device", "cpu", "--workers", "0"]
    assert main(argv) == 2
    assert f"--split {split} {message}" in _error(capsys)


def test_model_with_nan_weights_is_refused_by_predict_and_serve(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, info = load_model(model_file)
    with torch.no_grad():
        next(model.heads["vanilla"].parameters()).view(-1)[0] = float("nan")
    diverged = tmp_path / "diverged.safetensors"
    save_model(diverged, model, info)
    with pytest.raises(CheckpointError, match="holds NaN or infinity"):
        AgeEstimator.load(diverged, PredictOptions(device="cpu"))
    for command in (["predict", str(model_file)], ["serve", "--port", "8000"]):
        assert main([*command, "--model", str(diverged), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "diverged.safetensors: weight heads.vanilla." in err and err.count("\n") == 1


def _manifest(folder: Path, ages: tuple[int, ...] = (30, 40)) -> Path:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for index in range(len(ages)):
        Image.new("RGB", (48, 48), (120, 90, 60)).save(folder / f"{index}.jpg")
    manifest = folder / "table.csv"
    manifest.write_text("path,age\n" + "".join(f"{index}.jpg,{age}\n" for index, age in enumerate(ages)))
    return manifest


def test_eval_and_calibrate_never_write_over_their_inputs(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.safetensors"
    model.write_bytes(model_file.read_bytes())
    manifest = _manifest(tmp_path / "faces")
    split = tmp_path / "split.json"
    split.write_text('{"train": [], "val": ["0.jpg", "1.jpg"], "test": []}')
    inputs = {path: path.read_bytes() for path in (model, manifest, split)}
    common = ["--checkpoint", str(model), "--data", str(manifest), "--format", "csv", "--workers", "0", "--device", "cpu"]
    for target in (model, manifest, split):
        assert main(["eval", *common, "--split", str(split), "--json", str(target)]) == 2
        assert f"--json {target} is one of this command's inputs" in _error(capsys)
    for target in (manifest, split):
        assert main(["calibrate", *common, "--split", str(split), "--out", str(target)]) == 2
        assert f"--out {target} is one of this command's inputs" in _error(capsys)
    assert {path: path.read_bytes() for path in inputs} == inputs
    notes = tmp_path / "notes.safetensors"
    notes.write_text("not a model")
    assert main(["calibrate", *common, "--split", str(split), "--out", str(notes)]) == 2
    assert f"--out {notes} exists and is not a GLAE model file, so it is not replaced" in _error(capsys)
    assert notes.read_text() == "not a model"
    trained = tmp_path / "other_run.safetensors"  # another run's model: hours of training
    trained.write_bytes(model_file.read_bytes())
    assert main(["calibrate", *common, "--split", str(split), "--out", str(trained)]) == 2
    assert f"--out {trained} is a GLAE model that glae calibrate did not write, so it is not replaced" in _error(capsys)
    assert trained.read_bytes() == model_file.read_bytes()
    calibrated = tmp_path / "calibrated.safetensors"
    for _ in range(2):  # a rerun replaces the command's own earlier output
        assert main(["calibrate", *common, "--split", str(split), "--out", str(calibrated)]) == 0
    capsys.readouterr()  # the progress bars of the two calibrations
    shipped = calibrated.read_bytes()  # the shipped model is calibrated too, but it is not this command's to replace
    monkeypatch.setattr("glae.estimator.default_model_path", lambda: calibrated)
    assert main(["calibrate", *common, "--split", str(split), "--out", str(calibrated)]) == 2
    assert f"--out {calibrated} is the model shipped with GLAE, so it is not replaced" in _error(capsys)
    assert calibrated.read_bytes() == shipped


def test_eval_report_without_matplotlib_fails_before_the_evaluation(
        tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """matplotlib comes with the train extra: a predict-only install learns it in one line, not after the pass."""
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import matplotlib.figure now raises ImportError
    manifest = _manifest(tmp_path / "faces")
    report = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(model_file), "--data", str(manifest), "--format", "csv", "--workers", "0",
                 "--device", "cpu", "--json", str(report), "--report", str(tmp_path / "report")]) == 2
    captured = capsys.readouterr()
    assert "the PNG reports need matplotlib: pip install 'glae[train]'" in captured.err
    assert not report.exists() and not (tmp_path / "report").exists() and "MAE" not in captured.out


def test_eval_replaces_its_own_reports_but_never_a_users_files(tmp_path: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun of ``glae eval --json R --report D`` updates R and D; a --json or --report typo that names a user's file does not destroy it."""
    manifest = _manifest(tmp_path / "faces")
    common = ["eval", "--checkpoint", str(model_file), "--data", str(manifest), "--format", "csv", "--workers", "0", "--device", "cpu"]
    report, folder = tmp_path / "eval.json", tmp_path / "report"
    for _ in range(2):
        assert main([*common, "--json", str(report), "--report", str(folder)]) == 0
    assert json.loads(report.read_text())["n_images"] == 2 and (folder / "report.md").exists()
    capsys.readouterr()  # the progress bars of the two evaluations

    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "settings"}')
    assert main([*common, "--json", str(notes)]) == 2
    assert f"--json {notes} exists and is not a glae eval report" in _error(capsys)
    assert notes.read_text() == '{"my": "settings"}'
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "report.md").write_text("# my draft")
    assert main([*common, "--report", str(paper)]) == 2
    assert "holds report files that glae eval did not write" in _error(capsys)
    assert (paper / "report.md").read_text() == "# my draft" and not (paper / "report.json").exists()


def test_eval_lt_below_one_is_refused_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--checkpoint", str(tmp_path / "absent.safetensors"), "--data", str(tmp_path), "--lt", "0"]) == 2
    assert "--lt must be at least 1 face per age, got 0" in _error(capsys)


def test_eval_warns_about_faces_older_than_the_model_can_say(tmp_path: Path, model_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = _manifest(tmp_path / "faces", ages=(30, 130))  # the tiny model's oldest age is 116
    assert main(["eval", "--checkpoint", str(model_file), "--data", str(manifest), "--format", "csv", "--workers", "0", "--device", "cpu"]) == 0
    assert "1 face(s) are older than this model's oldest age (116)" in caplog.text
    assert "1.jpg (age 130)" in caplog.text
