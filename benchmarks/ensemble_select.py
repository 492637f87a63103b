"""Choose an ensemble's members on validation, as session 30 of docs/better_model.md fixes.

An ensemble is built as a pair (``glae pair``) is, with more members: they alternate between the
image (1st, 3rd, ...) and its mirror image (2nd, 4th, ...), each head's two views are the means of
the two groups' distributions, and Adaptive Routing reads them unchanged (Eq. 11). Each member runs
as it would ship: weights rounded to int8 (one scale per output channel) and bfloat16 autocast.
Greedy forward selection starts from the best single model (validation MAE + CMAE, routed) and adds
the member that lowers that sum most while the int8 file stays within ``--max-bytes``.

    R=runs/better_model
    python benchmarks/ensemble_select.py l0=$R/lite0_gpu/model.safetensors l2f=$R/lite2_flip/model.safetensors ... \
        --split $R/lite2_flip12/split.json --json benchmarks/results/better_model/ensemble_select.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glae.checkpoint import load_model
from glae.data import AgeSample, Split, load_dataset
from glae.evaluate import InferencePass, predict_samples
from glae.metrics import summarize
from glae.models.glae import HEAD_NAMES
from glae.routing import route

INT8_LEVELS = 127


def round_weights_to_int8(model: nn.Module) -> None:
    """Round every convolution's and linear layer's weight to int8 levels, one symmetric scale per output channel."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                rows = layer.weight.reshape(layer.weight.shape[0], -1)
                scale = rows.abs().amax(1, keepdim=True).clamp_min(1e-12) / INT8_LEVELS
                layer.weight.copy_((torch.round(rows / scale) * scale).reshape(layer.weight.shape))


def int8_file_bytes(model: nn.Module) -> int:
    """Bytes of the weights stored as int8 with a float16 scale per output channel, everything else float16."""
    layers = [layer for layer in model.modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]
    int8 = sum(layer.weight.numel() for layer in layers)
    scales = sum(layer.weight.shape[0] for layer in layers)
    rest = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()) - int8
    return int8 + 2 * (scales + rest)


def member_views(path: Path, faces: list[AgeSample]) -> tuple[dict[str, Tensor], Tensor, int]:
    """``({head: [2, N, K+1]}, ages, int8 bytes)`` of one model on ``faces``, as it would ship."""
    model, info = load_model(path)
    if not info.get("balanced_trained"):
        raise SystemExit(f"{path} has no trained balanced head; ensemble members are routed as the pair's are")
    round_weights_to_int8(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views, ages, _ = predict_samples(model, faces, "routing", InferencePass(torch.device("cpu"), 64, num_workers=1))
    return views, ages, int8_file_bytes(model)


def ensemble_views(members: list[str], views: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """Each head's two views: the image group's mean on the image, the mirror group's mean on the mirror image."""
    image, mirror = members[0::2], members[1::2] or members[0::2]  # one member alone keeps its own flip view
    return {head: torch.stack([torch.stack([views[m][head][0] for m in image]).mean(0),
                               torch.stack([views[m][head][1] for m in mirror]).mean(0)]) for head in HEAD_NAMES}


def scored(members: list[str], views: dict[str, dict[str, Tensor]], ages: Tensor) -> dict[str, Any]:
    summary = summarize(ages.numpy(), route(ensemble_views(members, views), "routing").ages.numpy(), None)
    return {"members": members, "mae": round(summary["mae"], 3), "cmae": round(summary["cmae"], 3),
            "bias": {label: round(group["bias"], 2) for label, group in summary["groups"].items() if group["n"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="NAME=model.safetensors, all trained on --split's train part")
    parser.add_argument("--split", type=Path, required=True, help="the split.json the models share")
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--format", default="utkface", help="the dataset format the models were trained on")
    parser.add_argument("--max-bytes", type=int, default=25_000_000, help="the size limit of the int8 file (issue #13: 25 MB)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)

    index = load_dataset(args.data, args.format)
    validation = Split.from_json(json.loads(args.split.read_text()), index.samples, index.root).val
    views: dict[str, dict[str, Tensor]] = {}
    sizes: dict[str, int] = {}
    for item in args.models:
        name, _, path = item.partition("=")
        views[name], ages, sizes[name] = member_views(Path(path), validation)
        print(f"{name}: {sizes[name] / 1e6:.1f} MB in int8", flush=True)

    singles = {name: scored([name], views, ages) for name in views}
    fitting_alone = [name for name in singles if sizes[name] <= args.max_bytes]
    if not fitting_alone:
        raise SystemExit(f"no model fits in --max-bytes {args.max_bytes} alone")
    chosen = [min(fitting_alone, key=lambda name: singles[name]["mae"] + singles[name]["cmae"])]
    steps = [singles[chosen[0]]]
    while True:
        fitting = [name for name in views if name not in chosen and sum(sizes[m] for m in chosen) + sizes[name] <= args.max_bytes]
        trials = [scored(chosen + [name], views, ages) for name in fitting]
        best = min(trials, key=lambda trial: trial["mae"] + trial["cmae"], default=None)
        if best is None or best["mae"] + best["cmae"] >= steps[-1]["mae"] + steps[-1]["cmae"]:
            break
        chosen, steps = best["members"], steps + [best]
    for step in steps:
        print(f"{' + '.join(step['members'])}: val MAE {step['mae']}, CMAE {step['cmae']}, bias {step['bias']}")
    if args.json:
        record = {"split": str(args.split), "max_bytes": args.max_bytes, "int8_bytes": sizes, "singles": singles,
                  "steps": steps, "chosen": steps[-1], "chosen_bytes": sum(sizes[m] for m in chosen)}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
