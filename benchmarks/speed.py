"""Speed of GLAE against its baselines, measured in one run (issue 5's targets).

Phases, each in a fresh process (so its peak memory is its own), on the same backbone,
input size and batch:
  train/gap       training images/s with a GAP + linear head (the ℓ_base baseline)
  train/glae      training images/s with the GLAE head (FR + PA), loss L_sum
  infer/single    inference images/s, one view, vanilla head
  infer/flip      inference images/s, image + flip in one batch, vanilla head (flip-TTA)
  infer/routing   inference images/s, image + flip, both heads, Adaptive Routing
  predict/raw     the routed model (predictor.predict_routed) on preprocessed tensors
  predict/e2e     `AgeEstimator.predict(files, aligned=True)`: file -> decoded -> result
Prints images/s, peak RSS, and the ratios the targets are stated in:
  GLAE head cost   = 1 - train/glae / train/gap          (target <= 10%)
  routing overhead = 1 - infer/routing / infer/flip      (target <= 5%)
  e2e efficiency   = predict/e2e / predict/raw           (target >= 80%)

Usage: python benchmarks/speed.py [--backbone efficientnet_lite0] [--size 128] [--batch 32]
       [--steps 10] [--data ../shared/data/utkface]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import torch

from glae.losses import compute_loss
from glae.models import AgeModel, ModelConfig
from glae.models.heads import head_spec
from glae.routing import route


def _model(args: argparse.Namespace, head: str) -> AgeModel:
    config = ModelConfig(backbone=args.backbone, head=head, max_age=116, input_size=args.size)
    return AgeModel(config).to(memory_format=torch.channels_last)


def _batch(args: argparse.Namespace) -> torch.Tensor:
    return torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)


def _timed(step, steps: int) -> float:
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - started


def train_speed(args: argparse.Namespace, head: str) -> float:
    model = _model(args, head).train()
    model.heads["balanced"].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, nesterov=True)
    images, ages = _batch(args), torch.randint(1, 100, (args.batch,)).float()
    loss_kind = head_spec(head).losses[0]

    def step() -> None:
        loss = compute_loss(loss_kind, model(images), ages)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return args.steps * args.batch / _timed(step, args.steps)


@torch.no_grad()
def infer_speed(args: argparse.Namespace, kind: str) -> float:
    model = _model(args, "glae").eval()
    images = _batch(args)
    steps = {
        "single": lambda: model(images)["logits"].softmax(-1),
        "flip": lambda: route(model.predict_views(images, ("vanilla",)), "vanilla"),
        "routing": lambda: route(model.predict_views(images), "routing"),
    }
    return args.steps * args.batch / _timed(steps[kind], args.steps)


def predict_speed(args: argparse.Namespace, kind: str) -> float:
    from glae.checkpoint import save_model
    from glae.estimator import AgeEstimator

    model = _model(args, "glae").eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_model(path, model, {"balanced_trained": True})
        estimator = AgeEstimator.load(path)
    files = sorted(Path(args.data).glob("*.jpg"))[: args.batch * args.steps]
    if kind == "raw":
        images = _batch(args)
        return args.steps * args.batch / _timed(lambda: estimator.predictor.predict_routed(images), args.steps)
    estimator.predict(files[: args.batch], aligned=True)  # warm-up
    started = time.perf_counter()
    estimator.predict(files, aligned=True)
    return len(files) / (time.perf_counter() - started)


PHASES = {
    "train/gap": lambda a: train_speed(a, "gap"),
    "train/glae": lambda a: train_speed(a, "glae"),
    "infer/single": lambda a: infer_speed(a, "single"),
    "infer/flip": lambda a: infer_speed(a, "flip"),
    "infer/routing": lambda a: infer_speed(a, "routing"),
    "predict/raw": lambda a: predict_speed(a, "raw"),
    "predict/e2e": lambda a: predict_speed(a, "e2e"),
}


def _run_phase(name: str, args: argparse.Namespace, queue) -> None:
    speed = PHASES[name](args)
    queue.put((speed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(name: str, args: argparse.Namespace) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run_phase, args=(name, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    for name in PHASES:
        speed, peak = measure(name, args)
        results[name] = {"images_per_s": speed, "peak_rss_mb": peak}
        print(f"{name:14s} {speed:8.1f} images/s   peak RSS {peak:7.0f} MB", flush=True)
    speed = {name: r["images_per_s"] for name, r in results.items()}
    ratios = {
        "glae_head_training_cost": 1 - speed["train/glae"] / speed["train/gap"],
        "routing_overhead_vs_flip_tta": 1 - speed["infer/routing"] / speed["infer/flip"],
        "flip_tta_cost_vs_single_view": 1 - speed["infer/flip"] / speed["infer/single"],
        "e2e_predict_vs_raw_forward": speed["predict/e2e"] / speed["predict/raw"],
    }
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
