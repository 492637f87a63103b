"""What ``glae predict`` prints, as each photo is done, and the labels of its annotated copies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path

import pytest

from glae.cli import main
from glae.estimator import ImagePrediction
from glae.predict_output import JsonLinesOutput, JsonOutput, place_labels, write_predictions


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
