"""What ``glae predict`` prints (table, JSON, JSON Lines, CSV) as each photo is done, its
exit status, and its annotated copies with their labels."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import pytest
from PIL import Image

from glae import fileio
from glae.cli import main
from glae.estimator import ImagePrediction
from glae.predict_output import AnnotatedCopies, CsvOutput, JsonLinesOutput, JsonOutput, Summary, TableOutput, place_labels, write_predictions


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_of_nearby_faces_do_not_overlap() -> None:
    # Four faces 40 px apart in a row; each label is 90 px wide, so side by side above the
    # boxes they would cover each other.
    boxes = [(20.0 + 40 * i, 100.0, 60.0 + 40 * i, 150.0) for i in range(4)]
    rects = place_labels(boxes, [(90.0, 18.0)] * 4, (400, 300))
    assert rects[0] == (20.0, 82.0, 110.0, 100.0)  # the first goes right above its box
    for a, b in combinations(rects, 2):
        assert not _overlap(a, b), rects
    for (x1, y1, x2, y2), box in zip(rects, boxes):
        assert 0 <= x1 and x2 <= 400 and 0 <= y1 and y2 <= 300
        assert x1 == box[0]


def test_labels_stay_in_the_image() -> None:
    (rect,) = place_labels([(380.0, 0.0, 400.0, 20.0)], [(90.0, 18.0)], (400, 300))
    assert rect == (310.0, 0.0, 400.0, 18.0)  # no room above: inside the top edge, shifted left


def test_results_are_printed_as_each_photo_is_done(capsys: pytest.CaptureFixture[str]) -> None:
    predictions = [ImagePrediction("a.jpg", [], None), ImagePrediction("b.jpg", [], "b.jpg: empty file")]
    printed_before_next = []

    def produce() -> Iterator[ImagePrediction]:
        for prediction in predictions:
            yield prediction
            printed_before_next.append(capsys.readouterr().out)

    summary = write_predictions(produce(), JsonLinesOutput(), len(predictions))
    assert [json.loads(out) for out in printed_before_next] == [p.to_dict() for p in predictions]
    assert summary.line() == "2 file(s): 0 face(s) in 0, 1 without a face, 1 skipped (b.jpg: empty file)"
    assert summary.any_read



def test_the_closing_line_names_each_skipped_photo() -> None:
    summary = Summary()
    for prediction in (ImagePrediction("a.jpg", [], "a.jpg: empty file"),  # a read error names its file already
                       ImagePrediction("b.jpg", [], "out of memory detecting faces in this 9000x5000 photo; try a smaller copy")):
        summary.add(prediction)
    assert summary.line() == ("2 file(s): 0 face(s) in 0, 0 without a face, 2 skipped (a.jpg: empty file; "
                              "b.jpg: out of memory detecting faces in this 9000x5000 photo; try a smaller copy)")


def test_json_array_is_valid_however_many_records(capsys: pytest.CaptureFixture[str]) -> None:
    for count in (0, 1, 3):
        predictions = [ImagePrediction(f"{n}.jpg", [], None) for n in range(count)]
        write_predictions(iter(predictions), JsonOutput(), count)
        assert json.loads(capsys.readouterr().out) == [p.to_dict() for p in predictions]


def test_cli_jsonl_one_line_per_photo(model_file: Path, utk_crops: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in utk_crops[:2]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code = main(["predict", str(tmp_path), "--model", str(model_file), "--device", "cpu", "--jsonl"])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 0 and len(records) == 3
    assert sorted(len(record["faces"]) for record in records) == [0, 1, 1]
    assert "3 file(s): 2 face(s) in 2, 0 without a face, 1 skipped" in captured.err
    assert "\r" not in captured.err  # no progress bar when stderr is not a terminal


def test_a_reader_that_stops_early_ends_the_run_quietly(model_file: Path, utk_crops: list[Path], tmp_path: Path) -> None:
    """``glae predict DIR --jsonl | head -1``: no error line, no traceback, SIGPIPE's status.

    The pipe is closed before the first line (the model takes seconds to load), so the
    first write fails whatever the timing.
    """
    (tmp_path / utk_crops[0].name).write_bytes(utk_crops[0].read_bytes())
    command = [sys.executable, "-m", "glae", "predict", str(tmp_path), "--aligned", "--model", str(model_file), "--device", "cpu", "--jsonl"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert (process.returncode, err) == (141, b"")


@pytest.fixture()
def photo_folder(utk_crops: list[Path], tmp_path: Path) -> Path:
    """Two real crops and one corrupt file in a folder, the way a user's photos arrive."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in utk_crops[4:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return folder


def _predict_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["predict", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json(photo_folder: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _predict_cli(capsys, str(photo_folder), "--model", str(model_file), "--device", "cpu", "--json")
    assert code == 0
    records = json.loads(out)
    by_name = {Path(r["file"]).name: r for r in records}
    broken = by_name.pop("broken.jpg")
    assert broken["faces"] == [] and "not a readable image" in broken["error"]
    assert len(by_name) == 2
    for record in by_name.values():
        (face,) = record["faces"]
        assert record["error"] is None and len(face["box"]) == 4 and len(face["landmarks"]) == 5
        assert face["interval_90"][0] <= face["age"] <= face["interval_90"][1] and face["head"] in ("vanilla", "balanced")
    assert "3 file(s): 2 face(s) in 2, 0 without a face, 1 skipped" in err


def test_csv_rows_of_names_that_are_not_utf8_can_be_written_as_utf8() -> None:
    """A Latin-1 name (``caf\\xe9.jpg``, surrogate-escaped by Python) gets a row a strict UTF-8 stdout accepts;
    a name holding a Unicode line separator stays one cell of one row."""
    latin1 = os.fsdecode(b"caf\xe9.jpg")
    predictions = [ImagePrediction(latin1, [], f"{latin1}: corrupt or truncated image"), ImagePrediction("line\u2028separator.jpg", [], None)]
    rows = [line for prediction in predictions for line in CsvOutput().lines(prediction)]
    parsed = list(csv.reader(io.StringIO("\n".join(rows).encode("utf-8").decode("utf-8"))))
    assert [(row[0], row[1], row[-1]) for row in parsed] == [  # no face is a result (face 0), not an error
        ("caf\\xe9.jpg", "", "caf\\xe9.jpg: corrupt or truncated image"), ("line\u2028separator.jpg", "0", "")]


def test_cli_csv_and_annotate(photo_folder: Path, model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pattern = str(photo_folder / "*.jpg.chip.jpg")
    annotated = tmp_path / "annotated"
    code, out, _ = _predict_cli(capsys, pattern, "--model", str(model_file), "--device", "cpu", "--csv", "--annotate", str(annotated))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2 and all(float(r["low_90"]) <= float(r["age"]) <= float(r["high_90"]) for r in rows)
    written = sorted(annotated.iterdir())
    assert len(written) == 2 and all(Image.open(p).size == (200, 200) for p in written)


def test_annotating_into_a_folder_inside_the_photos_can_be_rerun(photo_folder: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The copies of the first run are not taken for photos by the second."""
    annotated = photo_folder / "annotated"
    for run in (1, 2):
        code, _, err = _predict_cli(capsys, str(photo_folder), "--model", str(model_file), "--device", "cpu", "--aligned", "--annotate", str(annotated))
        assert code == 0 and "3 file(s): 2 face(s) in 2" in err, (run, err)
    assert len(list(annotated.iterdir())) == 4  # two copies per run, none replaced


def test_cli_table_aligned(photo_folder: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _predict_cli(capsys, str(photo_folder), "--model", str(model_file), "--device", "cpu", "--aligned")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["file", "face", "age"]
    assert sum("error:" in line for line in lines) == 1
    assert sum(line.endswith("0,0,200,200") for line in lines) == 2


def test_cli_fails_only_when_nothing_worked(photo_folder: Path, model_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _predict_cli(capsys, str(photo_folder / "broken.jpg"), str(photo_folder / "missing.jpg"), "--model", str(model_file))
    assert code == 1 and "2 skipped" in err and "file not found" in err


def test_unreadable_file_is_a_per_file_error(
    photo_folder: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_open = Image.open
    locked = sorted(photo_folder.glob("*.chip.jpg"))[0]

    def open_unless_locked(source, *args, **kwargs):
        if str(source) == str(locked):  # root ignores chmod 000, so the refusal is simulated
            raise PermissionError(13, "Permission denied", str(source))
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(Image, "open", open_unless_locked)
    code, out, err = _predict_cli(capsys, str(photo_folder), "--model", str(model_file), "--device", "cpu", "--aligned", "--json")
    assert code == 0
    by_name = {Path(r["file"]).name: r for r in json.loads(out)}
    assert "permission denied" in by_name[locked.name]["error"] and "corrupt" not in by_name[locked.name]["error"]
    assert sum(len(r["faces"]) for r in by_name.values()) == 1
    assert "3 file(s): 1 face(s) in 1" in err


def test_file_name_with_a_newline_stays_on_its_row(model_file: Path, utk_crops: list[Path], tmp_path: Path, capsys) -> None:
    odd = tmp_path / "line one\nline two.jpg"
    odd.write_bytes(utk_crops[0].read_bytes())
    code, out, err = _predict_cli(capsys, str(odd), "--model", str(model_file), "--device", "cpu", "--aligned")
    assert code == 0
    assert len(out.splitlines()) == 2 and "line one\\nline two.jpg" in out.splitlines()[1]
    assert err.count("\n") == 1


def test_table_error_row_keeps_a_newline_in_the_file_name_on_its_row() -> None:
    name = "line one\nline two.jpg"
    (row,) = TableOutput([name]).lines(ImagePrediction(name, [], f"{name}: empty file"))
    assert "\n" not in row and row.endswith("error: line one\\nline two.jpg: empty file")


def test_annotated_copies_never_replace_an_existing_file(tmp_path: Path) -> None:
    """``trip/IMG_1.png`` is copied as ``IMG_1.jpg``: a user's ``IMG_1.jpg`` there stays, and so do earlier copies."""
    photo = tmp_path / "trip" / "IMG_1.png"
    photo.parent.mkdir()
    Image.new("RGB", (32, 24), (10, 20, 30)).save(photo)
    folder = tmp_path / "annotated"
    folder.mkdir()
    (folder / "IMG_1.jpg").write_bytes(b"the user's own file")
    prediction = ImagePrediction(str(photo), [], None)
    first = AnnotatedCopies(folder).write(prediction)
    rerun = AnnotatedCopies(folder).write(prediction)
    assert (first, rerun) == (folder / "IMG_1_2.jpg", folder / "IMG_1_3.jpg")
    assert (folder / "IMG_1.jpg").read_bytes() == b"the user's own file"
    assert all(Image.open(copy).size == (32, 24) for copy in (first, rerun))


def test_a_panorama_wider_than_jpeg_allows_gets_a_shrunk_copy(tmp_path: Path) -> None:
    """A 70000 x 10 photo (0.7 MP, within the pixel limit) is read and predicted; its copy fits JPEG's 65500 px."""
    photo = tmp_path / "wide.png"
    Image.new("RGB", (70000, 10), (90, 90, 90)).save(photo)
    copy = AnnotatedCopies(tmp_path / "annotated").write(ImagePrediction(str(photo), [], None))
    assert copy is not None and Image.open(copy).size == (65500, 9)


def test_a_killed_predict_leaves_no_half_written_copy_under_the_name(tmp_path: Path) -> None:
    """``kill -9`` while the copy of ``IMG_1.png`` is written: no ``IMG_1.jpg`` appears, so a rerun writes it whole."""
    photo = tmp_path / "IMG_1.png"
    Image.new("RGB", (32, 24)).save(photo)
    folder = tmp_path / "annotated"
    prediction = ImagePrediction(str(photo), [], None)
    child = os.fork()
    if child == 0:  # the child is killed just before its finished copy would take the name
        try:
            fileio.os.link = lambda *names: os._exit(9)  # type: ignore[assignment]
            AnnotatedCopies(folder).write(prediction)
        finally:
            os._exit(0)  # never back into pytest, whatever happened
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 9
    assert not (folder / "IMG_1.jpg").exists()
    assert AnnotatedCopies(folder).write(prediction) == folder / "IMG_1.jpg"
    assert Image.open(folder / "IMG_1.jpg").size == (32, 24)


def test_a_photo_with_the_longest_allowed_name_gets_its_copy(tmp_path: Path) -> None:
    """A 251-character stem makes a 255-byte ``<stem>.jpg``, the most a name may hold; its copies still get written."""
    photo = tmp_path / f"{'a' * 251}.png"
    Image.new("RGB", (32, 24)).save(photo)
    folder = tmp_path / "annotated"
    prediction = ImagePrediction(str(photo), [], None)
    assert AnnotatedCopies(folder).write(prediction) == folder / f"{'a' * 251}.jpg"
    assert AnnotatedCopies(folder).write(prediction) == folder / f"{'a' * 249}_2.jpg"  # cut to fit 255 bytes
    assert sorted(path.name for path in folder.iterdir()) == [f"{'a' * 249}_2.jpg", f"{'a' * 251}.jpg"]


def test_annotated_copies_without_hard_links_still_replace_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a filesystem without hard links (EPERM), copies are still written, beside a user's file, not over it."""
    photo = tmp_path / "IMG_1.png"
    Image.new("RGB", (32, 24)).save(photo)
    folder = tmp_path / "annotated"
    folder.mkdir()
    (folder / "IMG_1.jpg").write_bytes(b"the user's own file")

    def no_links(source: str, target: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(fileio.os, "link", no_links)
    assert AnnotatedCopies(folder).write(ImagePrediction(str(photo), [], None)) == folder / "IMG_1_2.jpg"
    assert (folder / "IMG_1.jpg").read_bytes() == b"the user's own file"
    assert sorted(path.name for path in folder.iterdir()) == ["IMG_1.jpg", "IMG_1_2.jpg"]
    assert Image.open(folder / "IMG_1_2.jpg").size == (32, 24)


def test_an_annotated_copy_that_fails_midway_leaves_no_half_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk as the finished copy of ``IMG_1.png`` would take its name: the run stops with the
    usual advice, and the folder holds neither a copy nor a temporary."""
    photo = tmp_path / "IMG_1.png"
    Image.new("RGB", (32, 24)).save(photo)
    folder = tmp_path / "annotated"

    def disk_full(source: str, target: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "link", disk_full)
    with pytest.raises(OSError, match="no space left on device while writing .*IMG_1.jpg; free some space"):
        AnnotatedCopies(folder).write(ImagePrediction(str(photo), [], None))
    assert list(folder.iterdir()) == []
