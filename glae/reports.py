"""Human-readable reports of ``glae eval``: a Markdown summary and the paper's figures.

The input is the JSON-safe report dict that ``glae eval`` builds (top-level numbers
for one routing mode, ``modes`` with every mode that could be computed, and
``routing`` usage ratios or ``None``). Figures reproduce Fig. 1 (images and MAE per
age, CMAE as dashed lines) and Fig. 4 (Vanilla/Balanced usage per age group).

Figures are drawn on a :class:`~matplotlib.figure.Figure` with an explicit
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, so importing this module
never changes the process-wide matplotlib backend of the caller.

Every file is written atomically (temporary file in the same folder, then
:func:`os.replace`), so an interrupted run leaves either the old file or the new
one, never a truncated one.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from .fileio import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MISSING = "–"
VANILLA_COLOR = "tab:blue"
BALANCED_COLOR = "tab:red"
# Vanilla and Balanced keep the colours of Fig. 4 in Fig. 1 too, so a reader sees
# the same head in the same colour in both figures.
MODE_COLORS = {
    "routing": "tab:green",
    "vanilla": VANILLA_COLOR,
    "balanced": BALANCED_COLOR,
    "bigger": "tab:orange",
}


def _fmt(value: Any) -> str:
    """Format a table cell: floats with 3 decimals, ``None`` as a dash.

    A dash rather than ``None``/``nan`` keeps empty age groups readable and makes
    clear the value is absent, not zero.
    """
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """Render a GitHub-flavoured Markdown table with every cell passed through :func:`_fmt`."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _modes(report: dict) -> dict[str, dict]:
    """Every mode's metrics; a report without ``modes`` (one built by hand) counts as its top-level mode."""
    return report.get("modes") or {report["mode"]: report}


def _group_labels(modes: dict[str, dict]) -> list[str]:
    """Age-group labels in first-seen order, so columns follow the metric's group order."""
    labels: dict[str, None] = {}
    for metrics in modes.values():
        labels.update(dict.fromkeys(metrics.get("groups", {})))
    return list(labels)


def _per_age_by_mode(modes: dict[str, dict]) -> dict[str, dict[int, dict]]:
    """``mode -> age -> per-age entry``, for joining modes on age."""
    return {
        mode: {entry["age"]: entry for entry in metrics.get("per_age", [])}
        for mode, metrics in modes.items()
    }


def _header_section(report: dict) -> str:
    """Title and provenance, so a report file says what was evaluated on what."""
    lines = ["# GLAE evaluation report", ""]
    for key, label in (("data", "Data"), ("checkpoint", "Checkpoint")):
        if report.get(key) is not None:
            lines.append(f"- {label}: `{report[key]}`")
    lines.append(f"- Mode of the top-level numbers: `{report['mode']}`")
    lines.append(f"- Images: {_fmt(report.get('n_images'))}")
    if 0 < report.get("epsilon_images", 0) < report.get("n_images", 0):
        lines.append(f"- ε-error over the {report['epsilon_images']} images with a positive std of their age votes")
    return "\n".join(lines)


def _summary_section(modes: dict[str, dict]) -> str:
    """One row per mode: errors, CMAE and bias (mean signed error) per age group; the
    epsilon-error column only when some mode has it (ChaLearn)."""
    with_epsilon = any(m.get("epsilon_error") is not None for m in modes.values())
    labels = _group_labels(modes)
    header = ["Mode", "MAE", "CMAE", "AAR"] + (["ε-error"] if with_epsilon else [])
    header += [f"CMAE {label}" for label in labels] + [f"bias {label}" for label in labels]
    rows = []
    for mode, metrics in modes.items():
        row = [mode, metrics.get("mae"), metrics.get("cmae"), metrics.get("aar")]
        row += [metrics.get("epsilon_error")] if with_epsilon else []
        groups = metrics.get("groups", {})
        row += [groups.get(label, {}).get("cmae") for label in labels]
        row += [groups.get(label, {}).get("bias") for label in labels]
        rows.append(row)
    return "## Summary\n\n" + _table(header, rows)


def _interval_section(interval: dict, mode: str) -> str:
    """How often the 90% interval held the true age, overall and per age group."""
    how = "calibrated on validation faces" if interval.get("calibrated") else "raw 5%-95% quantiles"
    rows = [["all", interval.get("coverage"), interval.get("mean_width")]]
    rows += [[label, group.get("coverage"), group.get("mean_width")] for label, group in interval.get("groups", {}).items()]
    return f"## 90% interval ({mode}, {how})\n\n" + _table(["Ages", "Coverage", "Mean width (years)"], rows)


def _routing_section(routing: dict) -> str:
    """Usage ratio of each head per age group (the table behind Fig. 4)."""
    overall = routing["overall"]
    rows = [["all", None, overall.get("vanilla"), overall.get("balanced")]]
    rows += [
        [label, usage.get("n"), usage.get("vanilla"), usage.get("balanced")]
        for label, usage in routing["groups"].items()
    ]
    header = ["Group", "n", "Vanilla", "Balanced"]
    return "## Routing usage\n\n" + _table(header, rows)


def _per_age_section(modes: dict[str, dict]) -> str:
    """MAE of every mode per age class, joined on age (a mode may lack some ages)."""
    by_mode = _per_age_by_mode(modes)
    ages = sorted({age for entries in by_mode.values() for age in entries})
    rows = []
    for age in ages:
        entries = [entries.get(age) for entries in by_mode.values()]
        n = next(entry["n"] for entry in entries if entry is not None)
        rows.append([age, n] + [None if entry is None else entry["mae"] for entry in entries])
    header = ["Age", "n"] + [f"MAE {mode}" for mode in by_mode]
    return "## Per-age MAE\n\n" + _table(header, rows)


def markdown_report(report: dict) -> str:
    """Render the report dict as a Markdown document.

    Args:
        report: The ``glae eval`` report dict.

    Returns:
        Markdown with a header, a summary table of all modes, the coverage of the
        90% intervals (when the report has it), the routing usage table (when
        ``report["routing"]`` is not ``None``) and the per-age table.
    """
    modes = _modes(report)
    sections = [_header_section(report), _summary_section(modes)]
    if report.get("interval_90") is not None:
        sections.append(_interval_section(report["interval_90"], report.get("mode", "")))
    if report.get("routing") is not None:
        sections.append(_routing_section(report["routing"]))
    sections.append(_per_age_section(modes))
    return "\n\n".join(sections) + "\n"


def require_figures() -> type[Figure]:
    """matplotlib's ``Figure``, or one line saying how to install it (it comes with the ``train``
    extra); ``glae eval --report`` asks before its pass over the data, not after."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from .errors import MissingExtraError

        raise MissingExtraError("the PNG reports need matplotlib: pip install 'glae[train]'") from None
    return Figure


def _figure(**options: Any) -> Figure:
    return require_figures()(**options)


def _save_figure(figure: Figure, path: Path) -> None:
    """Render ``figure`` to PNG with the Agg canvas and write it atomically."""
    buffer = io.BytesIO()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure).print_png(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _as_float(value: float | None) -> float:
    """``None`` -> NaN, so matplotlib leaves a gap instead of failing."""
    return float("nan") if value is None else float(value)


def plot_per_age(report: dict, path: Path) -> None:
    """Draw Fig. 1: images per age (bars) with each mode's per-age MAE and CMAE.

    Bars use the left axis (counts of the top-level mode, which are the same for
    every mode); lines and the dashed CMAE levels share the right axis so they can
    be compared directly.

    Args:
        report: The ``glae eval`` report dict.
        path: Destination PNG.
    """
    figure = _figure(figsize=(11, 5), dpi=100, layout="constrained")
    counts_axis = figure.add_subplot()
    mae_axis = counts_axis.twinx()
    per_age = report.get("per_age", [])
    counts_axis.bar(
        [entry["age"] for entry in per_age],
        [entry["n"] for entry in per_age],
        color="lightsteelblue",
        label="images",
    )
    for index, (mode, metrics) in enumerate(_modes(report).items()):
        color = MODE_COLORS.get(mode, f"C{index}")
        entries = metrics.get("per_age", [])
        mae_axis.plot(
            [entry["age"] for entry in entries],
            [_as_float(entry["mae"]) for entry in entries],
            color=color,
            marker=".",
            label=f"{mode} MAE",
        )
        if metrics.get("cmae") is not None:
            mae_axis.axhline(
                metrics["cmae"], color=color, linestyle="--", label=f"{mode} CMAE"
            )
    counts_axis.set_xlabel("Age")
    counts_axis.set_ylabel("Number of images")
    mae_axis.set_ylabel("MAE (years)")
    mae_axis.set_ylim(bottom=0)
    counts_axis.set_title(f"Per-age MAE and CMAE ({report.get('n_images')} images)")
    handles, labels = counts_axis.get_legend_handles_labels()
    mae_handles, mae_labels = mae_axis.get_legend_handles_labels()
    figure.legend(
        handles + mae_handles, labels + mae_labels, loc="outside right upper", fontsize="small"
    )
    _save_figure(figure, path)


def plot_routing_usage(report: dict, path: Path) -> None:
    """Draw Fig. 4: stacked Vanilla (blue) and Balanced (red) usage per age group.

    Empty groups get no bar (their ratios are ``None``) but keep their tick, with
    ``n=0``, so the reader sees the group exists and had no images.

    Args:
        report: The ``glae eval`` report dict.
        path: Destination PNG.

    Raises:
        ValueError: When ``report["routing"]`` is ``None`` (no trained balanced head,
            so there is no usage to plot).
    """
    routing = report.get("routing")
    if routing is None:
        raise ValueError("report has no routing usage (model without a trained balanced head)")
    groups = routing["groups"]
    positions = np.arange(len(groups))
    vanilla = np.array([_as_float(usage.get("vanilla")) for usage in groups.values()])
    balanced = np.array([_as_float(usage.get("balanced")) for usage in groups.values()])
    figure = _figure(figsize=(7, 4.5), dpi=100, layout="constrained")
    axis = figure.add_subplot()
    axis.bar(positions, vanilla, color=VANILLA_COLOR, label="Vanilla")
    axis.bar(positions, balanced, bottom=vanilla, color=BALANCED_COLOR, label="Balanced")
    axis.set_xticks(positions, [f"{label}\n(n={usage.get('n')})" for label, usage in groups.items()])
    axis.set_xlabel("Age group")
    axis.set_ylabel("Usage ratio")
    axis.set_ylim(0, 1.05)
    axis.set_title("Usage of the Vanilla and Balanced classifiers")
    figure.legend(loc="outside right upper")
    _save_figure(figure, path)


def write_reports(report: dict, out_dir: Path) -> list[Path]:
    """Write ``report.md``, ``report.json``, ``per_age.png`` and, with routing, ``routing.png``.

    Args:
        report: The ``glae eval`` report dict (JSON-safe).
        out_dir: Folder to create (with parents) and write into.

    Returns:
        The written paths, in the order above.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown_path = out_dir / "report.md"
    json_path = out_dir / "report.json"
    per_age_path = out_dir / "per_age.png"
    atomic_write_bytes(markdown_path, markdown_report(report).encode("utf-8"))
    atomic_write_bytes(json_path, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    plot_per_age(report, per_age_path)
    written = [markdown_path, json_path, per_age_path]
    routing_path = out_dir / "routing.png"
    if report.get("routing") is not None:
        plot_routing_usage(report, routing_path)
        written.append(routing_path)
    else:  # a folder reused from a routed evaluation must not show that one's figure beside this report
        routing_path.unlink(missing_ok=True)
    return written
