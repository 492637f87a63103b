"""Table IX from run folders: ℓ_base against GLAE's Vanilla, Balanced, Bigger Υ and AR rows.

Usage: python benchmarks/compare_runs.py BASE_RUN GLAE_RUN [--json OUT]
Reads each run's test_metrics.json (written by ``glae train`` on its test split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = (("ℓ_base", "base", "vanilla"), ("Vanilla", "glae", "vanilla"), ("Balanced", "glae", "balanced"),
        ("Bigger Υ", "glae", "bigger"), ("Smaller Υ (AR)", "glae", "routing"))


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base", type=Path)
    parser.add_argument("glae", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reports = {name: json.loads((path / "test_metrics.json").read_text()) for name, path in (("base", args.base), ("glae", args.glae))}
    groups = list(reports["glae"]["groups"])
    print(f"test images: {reports['glae']['n_images']}")
    print("| method | MAE | CMAE | " + " | ".join(f"CMAE {g}" for g in groups) + " |")
    print("|---" * (3 + len(groups)) + "|")
    table = {}
    for label, run, mode in ROWS:
        metrics = reports[run]["modes"][mode]
        table[label] = metrics
        cells = [fmt(metrics["mae"]), fmt(metrics["cmae"])] + [fmt(metrics["groups"][g]["cmae"]) for g in groups]
        print(f"| {label} | " + " | ".join(cells) + " |")
    usage = reports["glae"]["routing"]["groups"]
    print("\nAR usage of the balanced head per group: " + ", ".join(f"{g} {fmt(u['balanced'])}" for g, u in usage.items()))
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
