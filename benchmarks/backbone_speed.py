"""Which bigger model may the shipped one become? CPU cost of backbone x input size, in one run.

Issue #13 allows a stronger model only if its CPU inference runs at >= 0.8x the shipped
model's images/s (EfficientNet-Lite0, 128 px, GLAE head, flip + both heads + routing).
Each candidate's routed inference and training step are timed in one process, rounds
interleaved (best of rounds), as ratios against the shipped set-up.

    python benchmarks/backbone_speed.py --rounds 3 --json benchmarks/results/backbone_speed.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from glae.models.routed import RoutedAgeModel
from glae.losses import compute_loss
from glae.models import AgeModel, ModelConfig

CANDIDATES = (("efficientnet_lite0", 128), ("efficientnet_lite0", 160), ("efficientnet_lite1", 128),
              ("efficientnet_lite1", 160), ("efficientnet_lite2", 128), ("efficientnet_lite2", 160))


def _model(backbone: str, size: int) -> AgeModel:
    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, head="glae", max_age=116, input_size=size)
    return AgeModel(config).to(memory_format=torch.channels_last)


def infer_rate(model: AgeModel, size: int, batch: int, steps: int) -> float:
    routed = RoutedAgeModel(model.eval(), "routing").eval()
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        routed(images)
        started = time.perf_counter()
        for _ in range(steps):
            routed(images)
    return steps * batch / (time.perf_counter() - started)


def train_rate(model: AgeModel, size: int, batch: int, steps: int) -> float:
    model.train()
    model.heads["balanced"].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    ages = torch.randint(1, 100, (batch,)).float()

    def step() -> None:
        loss = compute_loss("sum", model(images, head="vanilla"), ages)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    models = {f"{b}@{s}": (_model(b, s), s) for b, s in CANDIDATES}
    best: dict[str, dict[str, float]] = {name: {"infer": 0.0, "train": 0.0} for name in models}
    for _ in range(args.rounds):
        for name, (model, size) in models.items():
            best[name]["infer"] = max(best[name]["infer"], infer_rate(model, size, args.batch, args.steps))
            best[name]["train"] = max(best[name]["train"], train_rate(model, size, args.batch, args.steps))
    reference = best["efficientnet_lite0@128"]
    results = {}
    for name, rates in best.items():
        results[name] = {**rates, "infer_ratio": rates["infer"] / reference["infer"], "train_ratio": rates["train"] / reference["train"],
                         "parameters": sum(p.numel() for p in models[name][0].parameters())}
        print(f"{name:24s} infer {rates['infer']:6.1f}/s ({results[name]['infer_ratio']:.2f}x)  "
              f"train {rates['train']:6.1f}/s ({results[name]['train_ratio']:.2f}x)  {results[name]['parameters'] / 1e6:.1f} M params")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "batch": args.batch, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
