"""The tables and verdicts of docs/claims.md, from the claims plan's results.

    python benchmarks/claims_table.py --eval-lt     # first: -LT evaluation of finished runs that lack it
    python benchmarks/claims_table.py > /tmp/claims.md
    python benchmarks/claims_table.py --results benchmarks/results/claims_gpu   # runs trained on a GPU

Reads ``benchmarks/results/claims/<run>/test_metrics.json`` (written by ``glae plan``) and
``lt10.json`` (``glae eval --lt 10`` on the run's test part). Runs are grouped by name
without the seed (``glae_seed0`` -> ``glae``). The decision rule is docs/claims.md's, fixed
before the runs: a difference counts when it exceeds twice the pooled seed std, over 3 seeds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path("benchmarks/results/claims")
RUNS = Path("runs/claims")
GROUPS = ("0-17", "18-65", "66+")
# A switch and the runs it is compared with (docs/claims.md, "Switches").
SWITCHES = (("glae_flip", "glae"), ("glae_flip_fresh", "glae_flip"), ("glae_fresh", "glae"))
HEADS = (("Vanilla", "vanilla"), ("Balanced", "balanced"), ("Bigger Υ", "bigger"), ("AR", "routing"))
ROWS = (("ℓ_base", "base", "vanilla"), ("Vanilla", "glae", "vanilla"), ("Balanced", "glae", "balanced"),
        ("Bigger Υ", "glae", "bigger"), ("AR", "glae", "routing"))


def load(part: str, results: Path = RESULTS) -> dict[str, list[dict]]:
    """``{method: [report per seed]}`` for ``part`` ``test`` (test_metrics.json) or ``lt10``."""
    reports: dict[str, list[dict]] = defaultdict(list)
    for folder in sorted(results.iterdir()):
        file = folder / ("test_metrics.json" if part == "test" else "lt10.json")
        if folder.is_dir() and file.is_file():
            method, seed = re.fullmatch(r"(.+?)(?:_seed(\d+))?", folder.name).groups()  # type: ignore[union-attr]
            reports[method].append({**json.loads(file.read_text()), "seed": seed})
    return reports


def values(reports: list[dict], mode: str, key: str, group: str | None = None) -> list[float]:
    found = []
    for report in reports:
        metrics = report["modes"].get(mode)
        if metrics is not None:
            found.append(metrics["groups"][group]["mae"] if group else metrics[key])
    return found


def cell(numbers: list[float]) -> str:
    if not numbers:
        return "–"
    if len(numbers) == 1:
        return f"{numbers[0]:.3f} (1 seed)"
    return f"{statistics.mean(numbers):.3f} ± {statistics.stdev(numbers):.3f} ({len(numbers)})"


def table(reports: dict[str, list[dict]], glae_runs: str = "glae") -> str:
    """One row per head choice; ``glae_runs`` names the GLAE runs (a switch: ``glae_fresh``)."""
    lines = ["| head | MAE | CMAE | " + " | ".join(f"MAE {g}" for g in GROUPS) + " |", "|---" * (3 + len(GROUPS)) + "|"]
    for label, method, mode in ROWS:
        runs = reports.get(glae_runs if method == "glae" else method, [])
        row = [cell(values(runs, mode, "mae")), cell(values(runs, mode, "cmae"))]
        row += [cell(values(runs, mode, "mae", group)) for group in GROUPS]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def gap(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """d = mean(a) − mean(b) and the pooled seed std s, or None with fewer than 3 seeds on a side."""
    if len(a) < 3 or len(b) < 3:
        return None
    return statistics.mean(a) - statistics.mean(b), math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)


def verdict(a: list[float], b: list[float], lower_is_claimed: bool = True) -> str:
    """Whether mean(a) < mean(b) (the claim) by more than twice the pooled seed std."""
    found = gap(a, b)
    if found is None:
        return f"cannot tell ({len(a)} and {len(b)} seeds, 3 needed)"
    d, s = found
    favours = d < 0 if lower_is_claimed else d > 0
    if abs(d) > 2 * s:
        return f"{'holds' if favours else 'does not hold'} (d = {d:+.3f}, 2s = {2 * s:.3f})"
    return f"cannot tell (d = {d:+.3f}, 2s = {2 * s:.3f})"


def switch_effect(a: list[float], b: list[float]) -> str:
    """The rule applied to a switch: lower or higher than its reference by more than 2s, else cannot tell."""
    found = gap(a, b)
    if found is None:
        return f"cannot tell ({len(a)} and {len(b)} seeds)"
    d, s = found
    word = ("lower" if d < 0 else "higher") if abs(d) > 2 * s else "cannot tell"
    return f"{word} (d = {d:+.3f}, 2s = {2 * s:.3f})"


def paired(runs: list[dict], reference: list[dict], mode: str, key: str) -> str:
    """Mean ± std of the per-seed differences, over the seeds both groups have (information, not the rule)."""
    by_seed = {r["seed"]: r for r in reference}
    gaps = [values([r], mode, key)[0] - values([by_seed[r["seed"]]], mode, key)[0] for r in runs if r["seed"] in by_seed]
    if not gaps:
        return "–"
    return f"{statistics.mean(gaps):+.3f}" + (f" ± {statistics.stdev(gaps):.3f}" if len(gaps) > 1 else "") + f" ({len(gaps)})"


def switches(reports: dict[str, list[dict]]) -> str:
    """Each switch against its reference runs, per head: the rule on MAE and CMAE, and the paired seeds."""
    lines = ["| switch vs reference | head | MAE | CMAE | paired MAE | paired CMAE |", "|---" * 6 + "|"]
    for switch, reference in SWITCHES:
        runs, base = reports.get(switch, []), reports.get(reference, [])
        if not runs:
            continue
        for label, mode in HEADS:
            row = [switch_effect(values(runs, mode, key), values(base, mode, key)) for key in ("mae", "cmae")]
            row += [paired(runs, base, mode, key) for key in ("mae", "cmae")]
            lines.append(f"| {switch} vs {reference} | {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def claims(reports: dict[str, list[dict]]) -> str:
    base, glae = reports.get("base", []), reports.get("glae", [])
    lines = ["Claim 1 (Vanilla beats ℓ_base):"]
    for key in ("mae", "cmae"):
        lines.append(f"- {key.upper()}: {verdict(values(glae, 'vanilla', key), values(base, 'vanilla', key))}")
    lines.append("Claim 2 (AR has the lowest CMAE, MAE close to Vanilla):")
    for other in ("vanilla", "balanced", "bigger"):
        lines.append(f"- CMAE AR vs {other}: {verdict(values(glae, 'routing', 'cmae'), values(glae, other, 'cmae'))}")
    ar, vanilla = values(glae, "routing", "mae"), values(glae, "vanilla", "mae")
    if len(ar) >= 3:
        gaps = [x - y for x, y in zip(ar, vanilla)]
        s = math.sqrt((statistics.variance(ar) + statistics.variance(vanilla)) / 2)
        lines.append(f"- AR − Vanilla MAE: {statistics.mean(gaps):+.3f} ± {statistics.stdev(gaps):.3f}; close (≤ 2s = {2 * s:.3f}): "
                     f"{'yes' if abs(statistics.mean(gaps)) <= 2 * s else 'no'}")
    return "\n".join(lines)


def routing_shares(reports: dict[str, list[dict]]) -> str:
    lines = ["| runs | " + " | ".join(f"to balanced, {g}" for g in GROUPS) + " | AR − Vanilla MAE |", "|---" * (2 + len(GROUPS)) + "|"]
    for method, runs in sorted(reports.items()):
        runs = [r for r in runs if r.get("routing")]
        if not runs:
            continue
        shares = [cell([r["routing"]["groups"][g]["balanced"] for r in runs]) for g in GROUPS]
        gap = cell([r["modes"]["routing"]["mae"] - r["modes"]["vanilla"]["mae"] for r in runs])
        lines.append(f"| {method} | " + " | ".join(shares) + f" | {gap} |")
    return "\n".join(lines)


def eval_lt() -> None:
    """``glae eval --lt 10`` of finished runs that lack it; its printed summary goes to stderr, not into the tables."""
    from glae.cli import main

    for folder in sorted(RESULTS.iterdir()):
        run = RUNS / folder.name
        if (folder / "test_metrics.json").is_file() and not (folder / "lt10.json").is_file() and (run / "model.safetensors").is_file():
            with contextlib.redirect_stdout(sys.stderr):
                main(["eval", "--checkpoint", str(run / "model.safetensors"), "--data", "../shared/data/utkface",
                      "--split", str(run / "split.json"), "--part", "test", "--lt", "10", "--workers", "1",
                      "--json", str(folder / "lt10.json")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-lt", action="store_true", help="first evaluate the -LT subset of finished runs that lack lt10.json")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where the runs' reports are (benchmarks/gpu/claims_results.py writes GPU runs' elsewhere)")
    args = parser.parse_args()
    if args.eval_lt:
        eval_lt()
    test, lt = load("test", args.results), load("lt10", args.results)
    print("### Test split (3,785 faces): mean ± sample std (seeds)\n")
    print(table(test))
    print("\n### Balanced -LT subset of the test split (10 faces per age)\n")
    print(table(lt))
    for switch, _ in SWITCHES:
        if switch in test:
            print(f"\n### {switch} (test split)\n")
            print(table(test, glae_runs=switch))
    print("\n### Switches against their reference runs (test split; the rule: lower/higher when |d| > 2s)\n")
    print(switches(test))
    print("\n### Verdicts (test split)\n")
    print(claims(test))
    print("\n### Verdicts (-LT subset)\n")
    print(claims(lt))
    print("\n### Adaptive Routing: share of each age group sent to the balanced head (test split)\n")
    print(routing_shares(test))


if __name__ == "__main__":
    main()
