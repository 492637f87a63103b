"""Tests of glae.reports: Markdown content, figures and atomic file writing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from PIL import Image

from glae import fileio
from glae.reports import markdown_report, plot_per_age, plot_routing_usage, write_reports

AGES = list(range(1, 31))
GROUP_LABELS = ("0-17", "18-65", "66+")


def _per_age(offset: float) -> list[dict]:
    """Per-age entries with a U-shaped MAE, like a long-tailed model's."""
    return [{"age": age, "n": 5 + (age % 7) * 3, "mae": offset + abs(age - 15) / 10} for age in AGES]


def _groups(cmae_young: float, cmae_adult: float) -> dict:
    """Three age groups, the elderly one empty as in a dataset without seniors."""
    return {
        "0-17": {"n": 120, "mae": cmae_young - 0.5, "cmae": cmae_young, "bias": 0.25},
        "18-65": {"n": 95, "mae": cmae_adult - 0.5, "cmae": cmae_adult, "bias": -1.5},
        "66+": {"n": 0, "mae": None, "cmae": None, "bias": None},
    }


def _mode(mae: float, cmae: float, aar: float, offset: float) -> dict:
    return {
        "n_images": 215,
        "mae": mae,
        "cmae": cmae,
        "aar": aar,
        "epsilon_error": None,
        "groups": _groups(cmae - 1.0, cmae + 0.5),
        "per_age": _per_age(offset),
    }


@pytest.fixture
def report() -> dict:
    modes = {
        "routing": _mode(5.1, 7.3, 3.2, 1.0),
        "vanilla": _mode(5.25, 8.125, 2.9, 1.5),
        "balanced": _mode(6.0, 7.0, 2.5, 2.0),
        "bigger": _mode(5.4, 7.6, 3.0, 1.2),
    }
    return {
        "mode": "routing",
        "checkpoint": "runs/x/model.safetensors",
        "data": "../shared/data/utkface",
        **modes["routing"],
        "routing": {
            "overall": {"vanilla": 0.8, "balanced": 0.2},
            "groups": {
                "0-17": {"n": 120, "vanilla": 0.6, "balanced": 0.4},
                "18-65": {"n": 95, "vanilla": 0.95, "balanced": 0.05},
                "66+": {"n": 0, "vanilla": None, "balanced": None},
            },
        },
        "modes": modes,
    }


@pytest.fixture
def report_without_routing(report: dict) -> dict:
    plain = copy.deepcopy(report)
    plain["mode"] = "vanilla"
    plain["routing"] = None
    plain["modes"] = {"vanilla": plain["modes"]["vanilla"]}
    return plain


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert 300 <= width <= 3000 and 200 <= height <= 3000


def test_write_reports_writes_all_files(report: dict, tmp_path: Path) -> None:
    out_dir = tmp_path / "nested" / "eval"
    written = write_reports(report, out_dir)
    names = ["report.md", "report.json", "per_age.png", "routing.png"]
    assert written == [out_dir / name for name in names]
    for path in written:
        assert path.stat().st_size > 0
    _assert_png(out_dir / "per_age.png")
    _assert_png(out_dir / "routing.png")
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(names), "temporary files left"


def test_report_json_round_trips(report: dict, tmp_path: Path) -> None:
    write_reports(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8")) == report


def test_markdown_content(report: dict) -> None:
    text = markdown_report(report)
    assert "`runs/x/model.safetensors`" in text
    assert "`../shared/data/utkface`" in text
    assert "Images: 215" in text
    assert "| CMAE 0-17 | CMAE 18-65 | CMAE 66+ | bias 0-17 | bias 18-65 | bias 66+ |" in text
    assert "| routing | 5.100 | 7.300 | 3.200 | 6.300 | 7.800 | – | 0.250 | -1.500 | – |" in text
    assert "| vanilla | 5.250 | 8.125 | 2.900 |" in text
    for mode in ("balanced", "bigger"):
        assert f"| {mode} |" in text
    assert "ε-error" not in text
    assert "## Routing usage" in text
    assert "| all | – | 0.800 | 0.200 |" in text
    assert "| 66+ | 0 | – | – |" in text
    assert "| MAE routing | MAE vanilla | MAE balanced | MAE bigger |" in text
    assert "| 15 | 8 | 1.000 | 1.500 | 2.000 | 1.200 |" in text


def test_markdown_epsilon_column_when_present(report: dict) -> None:
    report["modes"]["routing"]["epsilon_error"] = 0.41
    text = markdown_report(report)
    assert "| Mode | MAE | CMAE | AAR | ε-error |" in text
    assert "| routing | 5.100 | 7.300 | 3.200 | 0.410 |" in text
    assert "| vanilla | 5.250 | 8.125 | 2.900 | – |" in text


def test_markdown_per_age_missing_age_in_one_mode(report: dict) -> None:
    report["modes"]["balanced"]["per_age"] = report["modes"]["balanced"]["per_age"][1:]
    assert "| 1 | 8 | 2.400 | 2.900 | – | 2.600 |" in markdown_report(report)


def test_without_routing(report_without_routing: dict, tmp_path: Path) -> None:
    written = write_reports(report_without_routing, tmp_path)
    assert [path.name for path in written] == ["report.md", "report.json", "per_age.png"]
    assert not (tmp_path / "routing.png").exists()
    assert "Routing usage" not in markdown_report(report_without_routing)
    with pytest.raises(ValueError):
        plot_routing_usage(report_without_routing, tmp_path / "routing.png")
    assert not (tmp_path / "routing.png").exists()


def test_a_reused_report_folder_drops_the_earlier_routing_figure(report: dict, report_without_routing: dict, tmp_path: Path) -> None:
    """``glae eval --report out`` then ``glae eval --mode vanilla --report out``: no stale routing.png beside the new report."""
    write_reports(report, tmp_path)
    assert (tmp_path / "routing.png").exists()
    write_reports(report_without_routing, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["per_age.png", "report.json", "report.md"]


def test_report_without_modes_uses_top_level(report_without_routing: dict, tmp_path: Path) -> None:
    del report_without_routing["modes"]
    assert "| vanilla | 5.100 | 7.300 | 3.200 |" in markdown_report(report_without_routing)
    plot_per_age(report_without_routing, tmp_path / "per_age.png")
    _assert_png(tmp_path / "per_age.png")


def test_interrupted_write_keeps_previous_file(
    report: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.md"
    target.write_text("previous", encoding="utf-8")

    def fail(_fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_reports(report, tmp_path)
    assert target.read_text(encoding="utf-8") == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"], "temporary file left"


def test_markdown_shows_interval_coverage_per_group(report: dict) -> None:
    report = {**report, "interval_90": {
        "coverage": 0.9071, "mean_width": 21.42, "calibrated": True,
        "groups": {"0-17": {"n": 10, "coverage": 0.93, "mean_width": 9.5}, "66+": {"n": 0, "coverage": None, "mean_width": None}},
    }}
    text = markdown_report(report)
    section = text.split("## 90% interval (")[1].split("\n## ")[0]
    assert section.startswith(f"{report['mode']}, calibrated on validation faces)")
    assert "| all | 0.907 | 21.420 |" in section and "| 0-17 | 0.930 | 9.500 |" in section
    assert "| 66+ | – | – |" in section  # an empty group shows no number
