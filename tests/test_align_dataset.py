"""``glae align`` on small real datasets: crops, problem report, resume, and the same format afterwards."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.cli import main
from glae.data import load_dataset

NOISE_NAME = "30_0_0_20170101000000000.jpg.chip.jpg"
CORRUPT_NAME = "40_1_0_20170101000000000.jpg.chip.jpg"


def _utkface_folder(crops: list[Path], folder: Path) -> Path:
    """Three real crops, a noise picture and a corrupt file, all with valid UTKFace names."""
    folder.mkdir()
    for path in crops:
        (folder / path.name).write_bytes(path.read_bytes())
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / NOISE_NAME)
    (folder / CORRUPT_NAME).write_bytes(crops[0].read_bytes()[:200])
    return folder


def _align(*args: str) -> dict:
    assert main(["align", *args, "--no-progress"]) == 0
    return json.loads((Path(args[1]) / "align_report.json").read_text())


def test_align_reports_problems_and_resumes(utk_crops: list[Path], tmp_path: Path) -> None:
    crops = utk_crops[6:9]
    source = _utkface_folder(crops, tmp_path / "utk")
    target = tmp_path / "aligned"
    report = _align(str(source), str(target), "--format", "utkface", "--workers", "0")
    assert report["counts"]["aligned"] == 3 and report["counts"]["already_aligned"] == 0
    assert report["counts"]["no_face"] == 1 and report["counts"]["unreadable"] == 1
    problems = {problem["file"]: problem["problem"] for problem in report["problems"]}
    assert problems[NOISE_NAME] == "no face" and problems[CORRUPT_NAME].startswith("unreadable")
    for path in crops:
        assert Image.open(target / path.name).size == (224, 224)
    index = load_dataset(target, "utkface")
    assert sorted(s.path.name for s in index.samples) == sorted(p.name for p in crops)
    assert [s.reason for s in index.skipped] == ["not an image file"]  # align_report.json

    (target / crops[0].name).unlink()  # as if interrupted before this crop; one worker process redoes it
    again = _align(str(source), str(target), "--format", "utkface", "--workers", "1")
    assert again["counts"]["aligned"] == 1 and again["counts"]["already_aligned"] == 2
    assert (target / crops[0].name).is_file()


def test_align_csv_manifest_keeps_its_format(utk_crops: list[Path], tmp_path: Path) -> None:
    source = tmp_path / "manifest"
    (source / "images").mkdir(parents=True)
    lines = ["path,age"]
    for number, path in enumerate(utk_crops[:2]):
        (source / "images" / f"{number}.jpg").write_bytes(path.read_bytes())
        lines.append(f"images/{number}.jpg,{path.name.split('_')[0]}")
    (source / "labels.csv").write_text("\n".join(lines) + "\n")
    target = tmp_path / "aligned"
    report = _align(str(source / "labels.csv"), str(target), "--format", "csv", "--workers", "0", "--size", "112")
    assert report["counts"]["aligned"] == 2
    index = load_dataset(target / "labels.csv", "csv")
    assert [s.path for s in index.samples] == [target / "images" / "0.jpg", target / "images" / "1.jpg"]
    assert Image.open(index.samples[0].path).size == (112, 112)


def test_a_csv_row_outside_the_dataset_folder_never_replaces_its_photo(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    """``../photos/x.jpg`` from ``data/`` aligned into the sibling ``aligned/`` would land on the photo itself."""
    from glae.faces.align_dataset import align_dataset

    (tmp_path / "data").mkdir()
    (tmp_path / "photos").mkdir()
    outside = tmp_path / "photos" / "x.jpg"
    outside.write_bytes(utk_crops[0].read_bytes())
    (tmp_path / "data" / "y.jpg").write_bytes(utk_crops[1].read_bytes())
    (tmp_path / "data" / "labels.csv").write_text("path,age\n../photos/x.jpg,30\ny.jpg,40\n")
    report = align_dataset(tmp_path / "data" / "labels.csv", tmp_path / "aligned", "csv", workers=0, detector=detector, show_progress=False)
    assert outside.read_bytes() == utk_crops[0].read_bytes()
    assert report["counts"]["aligned"] == 1
    assert [problem["problem"] for problem in report["problems"]] == [f"outside the dataset folder {tmp_path / 'data'}; not aligned"]


def test_missing_detector_weights_stop_worker_runs_in_one_line(utk_crops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Without facenet-pytorch's weights, worker processes would fail to start over and over: a hang."""
    from glae.faces import align_dataset as module
    from glae.faces.mtcnn import MTCNNWeightsError

    def no_weights(name: str, device: str) -> None:
        raise MTCNNWeightsError("the MTCNN face detector weights are not installed; run: pip install ...")

    monkeypatch.setattr(module, "build_detector", no_weights)
    source = _two_crops(utk_crops, tmp_path / "utk")
    assert main(["align", str(source), str(tmp_path / "aligned"), "--workers", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: the MTCNN face detector weights are not installed; run: pip install ...\n"
    assert not (tmp_path / "aligned").exists()


def _two_crops(utk_crops: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for path in utk_crops[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_broken_crops_in_the_destination_are_redone(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    from glae.faces.align_dataset import align_dataset

    source = _two_crops(utk_crops, tmp_path / "utk")
    target = tmp_path / "aligned"
    align_dataset(source, target, "utkface", workers=0, detector=detector, show_progress=False)
    empty, cut = (target / path.name for path in utk_crops[:2])
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[:300])
    again = align_dataset(source, target, "utkface", workers=0, detector=detector, show_progress=False)
    assert again["counts"]["aligned"] == 2 and again["counts"]["already_aligned"] == 0
    for crop in (empty, cut):
        assert np.asarray(Image.open(crop)).shape == (224, 224, 3)


def test_another_size_into_an_aligned_folder_is_refused(utk_crops: list[Path], tmp_path: Path, detector, capsys) -> None:
    from glae.faces.align_dataset import align_dataset

    source = _two_crops(utk_crops, tmp_path / "utk")
    target = tmp_path / "aligned"
    align_dataset(source, target, "utkface", workers=0, size=112, detector=detector, show_progress=False)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    assert main(["align", str(source), str(target), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "holds crops aligned with --size 112 --margin 0.0; rerun with those" in err and err.count("\n") == 1
    (target / "align_report.json").unlink()  # no report: files of unknown origin, never written over
    assert main(["align", str(source), str(target), "--workers", "0", "--no-progress"]) == 2
    assert "already holds files and no align_report.json; align into an empty or new folder" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in target.iterdir()} == {k: v for k, v in before.items() if k != "align_report.json"}


def test_another_face_filter_into_an_aligned_folder_is_refused(utk_crops: list[Path], tmp_path: Path, capsys) -> None:
    """The filter decides which photos get a crop: a rerun with another one would mix two selections."""
    source = _two_crops(utk_crops, tmp_path / "utk")
    target = tmp_path / "aligned"
    report = _align(str(source), str(target), "--workers", "0", "--min-face-size", "20")
    assert (report["detector"], report["min_face_score"], report["min_face_size"]) == ("mtcnn", 0.9, 20.0)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    for flags in (["--min-face-size", "16"], ["--min-face-size", "20", "--detector", "blazeface"]):
        assert main(["align", str(source), str(target), "--workers", "0", "--no-progress", *flags]) == 2
        err = capsys.readouterr().err
        assert "holds crops found with --detector mtcnn --min-face-score 0.9 --min-face-size 20.0; rerun with those" in err
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    older = {key: value for key, value in report.items() if key not in ("detector", "min_face_score", "min_face_size")}
    (target / "align_report.json").write_text(json.dumps(older))  # written before the filter was recorded: the defaults
    assert main(["align", str(source), str(target), "--workers", "0", "--no-progress"]) == 0


class _Interrupting:
    """A detector that stops the run (as Ctrl-C does) at its second image."""

    def __init__(self, detector) -> None:
        self.detector, self.calls = detector, 0

    def detect(self, image):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.detector.detect(image)


def test_resuming_an_interrupted_run_with_another_margin_is_refused(utk_crops: list[Path], tmp_path: Path, detector, capsys) -> None:
    """The settings are on disk before the first crop, so even a run that never finished keeps its framing."""
    from glae.faces.align_dataset import align_dataset

    source = _two_crops(utk_crops, tmp_path / "utk")
    target = tmp_path / "aligned"
    with pytest.raises(KeyboardInterrupt):
        align_dataset(source, target, "utkface", workers=0, detector=_Interrupting(detector), show_progress=False)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    assert len(before) == 2  # one crop and the settings
    assert main(["align", str(source), str(target), "--workers", "0", "--margin", "0.5", "--no-progress"]) == 2
    assert "holds crops aligned with --size 224 --margin 0.0; rerun with those" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    resumed = align_dataset(source, target, "utkface", workers=0, detector=detector, show_progress=False)
    assert (resumed["counts"]["aligned"], resumed["counts"]["already_aligned"]) == (1, 1)


def test_a_second_dataset_into_the_same_folder_is_refused(utk_crops: list[Path], tmp_path: Path, detector, capsys) -> None:
    """Two CSV datasets naming the same image files: the second must not take the first's crops or replace its labels."""
    from glae.faces.align_dataset import align_dataset

    for name, crop, age in (("a", utk_crops[0], 30), ("b", utk_crops[1], 60)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "img1.jpg").write_bytes(crop.read_bytes())
        (tmp_path / name / "labels.csv").write_text(f"path,age\nimg1.jpg,{age}\n")
    target = tmp_path / "aligned"
    align_dataset(tmp_path / "a" / "labels.csv", target, "csv", workers=0, detector=detector, show_progress=False)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    assert main(["align", str(tmp_path / "b" / "labels.csv"), str(target), "--format", "csv", "--workers", "0", "--no-progress"]) == 2
    assert f"holds crops of another dataset ({tmp_path / 'a' / 'labels.csv'}, --format csv)" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before


def test_absolute_paths_in_a_csv_are_reported_as_still_reading_the_originals(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    from glae.faces.align_dataset import align_dataset

    source = tmp_path / "data"
    source.mkdir()
    for name, crop in (("x.jpg", utk_crops[0]), ("y.jpg", utk_crops[1])):
        (source / name).write_bytes(crop.read_bytes())
    (source / "labels.csv").write_text(f"path,age\n{source / 'x.jpg'},30\ny.jpg,40\n")
    report = align_dataset(source / "labels.csv", tmp_path / "aligned", "csv", workers=0, detector=detector, show_progress=False)
    assert report["counts"]["aligned"] == 2
    assert report["problems"] == [{
        "file": str(source / "x.jpg"),
        "problem": "the copied label file names it by an absolute path, so the aligned dataset still reads the original; make the path relative",
    }]


@pytest.mark.parametrize("suffix", [".gif", ".xpm", ".ico", ".webp"])
def test_crops_of_any_readable_format_are_written_whole_and_count_on_a_rerun(utk_crops: list[Path], tmp_path: Path, detector, suffix: str) -> None:
    """Pillow cannot write some formats (XPM) and shrinks or quantizes others (ICO, GIF): the crop keeps its name, in a format that holds it."""
    from glae.faces.align_dataset import align_dataset

    source = tmp_path / "data"
    source.mkdir()
    Image.open(utk_crops[0]).convert("RGB").save(source / "x.png")
    (source / "x.png").rename(source / f"x{suffix}")
    (source / "labels.csv").write_text(f"path,age\nx{suffix},30\n")
    target = tmp_path / "aligned"
    first = align_dataset(source / "labels.csv", target, "csv", workers=0, detector=detector, show_progress=False)
    again = align_dataset(source / "labels.csv", target, "csv", workers=0, detector=detector, show_progress=False)
    assert (first["counts"]["aligned"], again["counts"]["already_aligned"]) == (1, 1)
    crop = Image.open(target / f"x{suffix}")
    assert crop.mode == "RGB" and crop.size == (224, 224)


def test_of_several_faces_the_largest_is_aligned(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    from glae.faces.align import align_face
    from glae.faces.align_dataset import align_dataset

    canvas = Image.new("RGB", (560, 340), (128, 128, 128))
    canvas.paste(Image.open(utk_crops[0]).convert("RGB").resize((100, 100)), (10, 120))
    canvas.paste(Image.open(utk_crops[1]).convert("RGB").resize((300, 300)), (230, 20))
    source = tmp_path / "data"
    source.mkdir()
    canvas.save(source / "group.png")
    (source / "labels.csv").write_text("path,age\ngroup.png,30\n")
    report = align_dataset(source / "labels.csv", tmp_path / "aligned", "csv", workers=0, detector=detector, show_progress=False)
    assert report["counts"]["several_faces"] == 1
    large = max(detector.detect(canvas), key=lambda face: face.box[2] - face.box[0])
    expected = np.asarray(align_face(canvas, large.landmarks, 224, 0.0), dtype=float)
    assert np.abs(np.asarray(Image.open(tmp_path / "aligned" / "group.png"), dtype=float) - expected).mean() < 1.0


def test_aligning_a_folder_into_itself_is_refused(utk_crops: list[Path], tmp_path: Path, capsys) -> None:
    source = _two_crops(utk_crops, tmp_path / "utk")
    (source / CORRUPT_NAME).write_bytes(b"")
    before = {path.name: path.read_bytes() for path in source.iterdir()}
    assert main(["align", str(source), str(source), "--workers", "0", "--no-progress"]) == 2
    assert "is the dataset folder itself: crops would replace the originals" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in source.iterdir()} == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "100000"], r"aligned crop size \(--size\) must be in 8\.\.2048 px, got 100000"),
        (["--size", "0"], r"must be in 8\.\.2048 px, got 0"),
        (["--margin", "-1"], r"margin must be in \[0, 2\]"),
    ],
)
def test_impossible_sizes_are_refused_before_any_work(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    assert main(["align", str(tmp_path / "absent"), str(tmp_path / "out"), *extra, "--no-progress"]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_destination_that_is_a_file_is_refused(utk_crops: list[Path], tmp_path: Path, capsys) -> None:
    source = _two_crops(utk_crops, tmp_path / "utk")
    (tmp_path / "out").write_text("my notes")
    assert main(["align", str(source), str(tmp_path / "out"), "--no-progress"]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "my notes"


class _Doubtful:
    """A detector whose only find is doubtful (score 0.8): glae predict's filter drops it."""

    def __init__(self, detector) -> None:
        self.detector = detector

    def detect(self, image):
        return [dataclasses.replace(face, score=0.8) for face in self.detector.detect(image)]


def test_align_keeps_only_the_faces_predict_would_keep(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    from glae.faces.align_dataset import align_dataset

    source = _two_crops(utk_crops, tmp_path / "utk")
    report = align_dataset(source, tmp_path / "aligned", "utkface", workers=0, detector=_Doubtful(detector), show_progress=False)
    assert report["counts"]["aligned"] == 0 and report["counts"]["no_face"] == 2
    assert not any((tmp_path / "aligned").glob("*.jpg"))


def test_a_csv_dataset_without_any_face_still_gets_its_report(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    from glae.faces.align_dataset import align_dataset

    source = tmp_path / "data"
    source.mkdir()
    (source / "x.jpg").write_bytes(utk_crops[0].read_bytes())
    (source / "labels.csv").write_text("path,age\nx.jpg,30\n")
    report = align_dataset(source / "labels.csv", tmp_path / "aligned", "csv", workers=0, detector=_Doubtful(detector), show_progress=False)
    assert report["counts"]["no_face"] == 1 and report["problems"] == [{"file": "x.jpg", "problem": "no face"}]
    assert json.loads((tmp_path / "aligned" / "align_report.json").read_text()) == report


def test_a_damaged_align_report_is_one_line(utk_crops: list[Path], tmp_path: Path, capsys) -> None:
    source = _two_crops(utk_crops, tmp_path / "utk")
    (tmp_path / "aligned").mkdir()
    (tmp_path / "aligned" / "align_report.json").write_text(json.dumps({"source": None, "format": "utkface", "size": 224, "margin": 0.0}))
    assert main(["align", str(source), str(tmp_path / "aligned"), "--workers", "0", "--no-progress"]) == 2
    assert "align_report.json is not a GLAE align report; align into an empty folder" in capsys.readouterr().err


def test_aligning_afad_into_a_folder_inside_it_does_not_realign_its_own_crops(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    """AFAD is read from its subfolders: the crops of a first run inside it must not count as photos on the rerun."""
    from glae.faces.align_dataset import align_dataset

    source = tmp_path / "AFAD-Full"
    for age, crop in zip(("18", "42"), utk_crops):
        (source / age / "111").mkdir(parents=True)
        (source / age / "111" / crop.name).write_bytes(crop.read_bytes())
    target = source / "aligned"
    first = align_dataset(source, target, "afad", workers=0, detector=detector, show_progress=False)
    again = align_dataset(source, target, "afad", workers=0, detector=detector, show_progress=False)
    assert (first["counts"]["aligned"], again["counts"]["already_aligned"], again["counts"]["images"]) == (2, 2, 2)
    assert again["problems"] == []
    assert sorted(path.relative_to(target).as_posix() for path in target.rglob("*.jpg")) == sorted(
        f"{age}/111/{crop.name}" for age, crop in zip(("18", "42"), utk_crops))


class _FailsOnOne:
    """A detector that runs out of memory on the first photo it sees, and finds faces in the rest."""

    def __init__(self, detector, error: Exception) -> None:
        self.detector, self.error, self.calls = detector, error, 0

    def detect(self, image):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return self.detector.detect(image)


@pytest.mark.parametrize(
    "error, reason",
    [(MemoryError(), r"out of memory detecting faces in this \d+x\d+ photo; try a smaller copy"),
     (RuntimeError("DefaultCPUAllocator: can't allocate memory"), r"out of memory detecting faces in this 200x200 photo; try a smaller copy"),
     (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
      r"out of memory detecting faces in this 200x200 photo; try a smaller copy"),
     (ValueError("landmarks fix no similarity transform"), r"landmarks fix no similarity transform")],
)
def test_a_photo_that_makes_detection_fail_is_reported_and_the_rest_aligned(
    utk_crops: list[Path], tmp_path: Path, detector, error: Exception, reason: str
) -> None:
    from glae.faces.align_dataset import align_dataset

    source = _two_crops(utk_crops, tmp_path / "utk")
    report = align_dataset(source, tmp_path / "aligned", "utkface", workers=0, detector=_FailsOnOne(detector, error), show_progress=False)
    assert report["counts"]["failed"] == 1 and report["counts"]["aligned"] == 1
    (problem,) = report["problems"]
    assert re.fullmatch("failed: " + reason, problem["problem"])
    assert not (tmp_path / "aligned" / problem["file"]).exists()
    again = align_dataset(source, tmp_path / "aligned", "utkface", workers=0, detector=detector, show_progress=False)
    assert again["counts"]["aligned"] == 1 and again["counts"]["already_aligned"] == 1  # a rerun finishes it


def test_a_bug_in_a_detector_is_not_blamed_on_a_photo(utk_crops: list[Path], tmp_path: Path, detector) -> None:
    from glae.faces.align_dataset import align_dataset

    source = _two_crops(utk_crops, tmp_path / "utk")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        align_dataset(source, tmp_path / "aligned", "utkface", workers=0,
                      detector=_FailsOnOne(detector, RuntimeError("shape mismatch")), show_progress=False)
