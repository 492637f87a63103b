"""Does freezing the backbone's first layers cost validation accuracy? The rule of docs/training_speed.md.

Reads the per-epoch metrics that ``glae plan benchmarks/plans/freeze_ablation.yaml`` copies
into ``benchmarks/results/freeze_ablation/<run>/metrics.jsonl`` (runs ``frozenN``: stage 1
with the backbone's first N layers frozen), prints each run's last stage-1 validation MAE
and CMAE (vanilla head) and the N that the rule adopts: the deepest whose MAE is at most
0.10 and CMAE at most 0.15 above N = 0's. The test part is never read.

    python benchmarks/freeze_ablation.py [--results benchmarks/results/freeze_ablation]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

MAE_TOLERANCE, CMAE_TOLERANCE = 0.10, 0.15


def last_stage1_val(metrics: Path) -> dict[str, float]:
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    last = [r for r in records if r["stage"] == 1][-1]
    return {"epoch": last["epoch"], **last["val"]["vanilla"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/freeze_ablation"))
    args = parser.parse_args()
    runs = {int(folder.name.removeprefix("frozen")): last_stage1_val(folder / "metrics.jsonl")
            for folder in sorted(args.results.glob("frozen*"))
            if re.fullmatch(r"frozen\d+", folder.name) and (folder / "metrics.jsonl").exists()}
    if 0 not in runs:
        raise SystemExit("frozen0 (the unfrozen reference) has no metrics yet")
    reference = runs[0]
    print(f"{'frozen layers':>13s} {'epoch':>5s} {'val MAE':>8s} {'val CMAE':>8s} {'dMAE':>7s} {'dCMAE':>7s}")
    adopted = 0
    for layers, val in sorted(runs.items()):
        d_mae, d_cmae = val["mae"] - reference["mae"], val["cmae"] - reference["cmae"]
        print(f"{layers:13d} {val['epoch']:5d} {val['mae']:8.3f} {val['cmae']:8.3f} {d_mae:+7.3f} {d_cmae:+7.3f}")
        if layers > 0 and d_mae <= MAE_TOLERANCE and d_cmae <= CMAE_TOLERANCE:
            adopted = max(adopted, layers)
    print(f"adopted: freeze_backbone_layers = {adopted}")


if __name__ == "__main__":
    main()
