"""Training throughput on this machine: the plain eager model step against every candidate speed-up.

Every phase runs in a fresh process, in one run, on the same model (EfficientNet-Lite0 with
ImageNet weights, GLAE head, L_sum), input size and batch; the ratios are against
``step/eager``, the plain eager model step (channels-last, float32, no compile) on tensors
already in memory, measured in the same run. Phases:

  step/eager        the baseline: model step on in-memory tensors
  step/tfpad        the same step with timm's own TF-"SAME" convolutions, which copy a padded
                    input (what every step ran before glae.models.backbones crops instead)
  step/bf16         the same step under CPU bfloat16 autocast
  step/compile      the same step, ``torch.compile``d (compile time reported apart)
  step/freezeN      the same step with the backbone's first N layers frozen (a stage's
                    ``freeze_backbone_layers``: 3 = stem + Lite0's first two stages of blocks)
  files/wN          the real loop (glae.engine.train_one_epoch) on the real data path of
                    today: decode JPEG + resize + augment in N loader processes
  cache/wN          the same with the decoded-image cache (glae.data.cache)
  cache+compile/wN  the cache and a compiled model
  cache+freezeN/wN  the cache and the backbone's first N layers frozen
  stage2/cache/wN   stage 2's step: frozen backbone (eval mode), class-balanced sampling,
                    only the balanced head trained

Each phase is measured ``--rounds`` times, phases interleaved and the order reversed every
other round; the table prints each phase's best round (as ``timeit`` does: other processes
on the machine only ever slow a round down) and the JSON keeps every round.

With ``--alternate`` the step phases run in this one process instead, one step of each in
turn, and the table adds each one's median per-turn ratio to the first phase: under load,
the steadier comparison of two step variants.

Usage: python benchmarks/train_speed.py [--data ../shared/data/utkface] [--steps 20]
       [--rounds 2] [--phases step/eager cache/w1 ...] [--json benchmarks/results/train_speed.json]
       python benchmarks/train_speed.py --alternate --steps 40 --phases step/eager step/tfpad
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from timm.layers import Conv2dSame
from torch.utils.data import DataLoader

from glae.data import load_dataset
from glae.data.cache import CachedImages, open_image_cache
from glae.data.images import AgeImageDataset
from glae.data.samplers import EpochSampler
from glae.data.transforms import train_transform
from glae.config import PAPER_STAGES
from glae.engine import EpochSettings, freeze, train_one_epoch
from glae.train import frozen_parts
from glae.losses import compute_loss
from glae.models import AgeModel, ModelConfig
from glae.models.glae import PAPER_INPUT

SIZE, BATCH, MAX_AGE = 128, 32, 116


def _model(padded: bool = False, frozen_layers: int = 0) -> AgeModel:
    torch.manual_seed(0)
    config = ModelConfig(backbone="efficientnet_lite0", pretrained=True, head="glae", max_age=MAX_AGE, input_size=SIZE)
    model = AgeModel(config).to(memory_format=torch.channels_last)
    if padded:
        for module in model.modules():
            if isinstance(module, Conv2dSame):
                module.__class__ = Conv2dSame
    freeze(model, frozen_parts(PAPER_STAGES[0]), frozen_layers)
    return model


def _optimizer(model: AgeModel) -> torch.optim.Optimizer:
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, nesterov=True)


def make_step(kind: str) -> Callable[[], None]:
    """One optimizer step of the ``kind`` variant on one in-memory batch."""
    model = _model(padded=kind == "tfpad", frozen_layers=_frozen_layers(kind))
    optimizer = _optimizer(model)
    forward = torch.compile(model) if kind == "compile" else model
    images = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    ages = torch.randint(1, 100, (BATCH,)).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kind == "bf16"):
            outputs = forward(images, head="vanilla")
        loss = compute_loss("sum", {k: v.float() for k, v in outputs.items()}, ages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_speed(kind: str, steps: int) -> dict[str, float]:
    """Images/s of the bare model step on one in-memory batch."""
    step = make_step(kind)
    started = time.perf_counter()
    step()
    step()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return {"images_per_s": steps * BATCH / (time.perf_counter() - started), "warmup_s": warmup}


def alternate_steps(kinds: list[str], steps: int) -> dict[str, list[float]]:
    """Seconds of each step of several step variants in one process, one step of each in turn.

    Under load, phases in separate processes meet different loads; steps taken in turn meet
    the same, so their ratio is steadier. The order is reversed every other turn.
    """
    functions = {kind: make_step(kind) for kind in kinds}
    for function in functions.values():
        function()
        function()
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for index in range(steps):
        for kind in kinds if index % 2 == 0 else kinds[::-1]:
            started = time.perf_counter()
            functions[kind]()
            times[kind].append(time.perf_counter() - started)
    return times


def report_alternate(args: argparse.Namespace) -> None:
    """``--alternate``: the step phases in this process, their steps in turn; ratios against the first."""
    kinds = [name.partition("/")[2] for name in args.phases]
    times = alternate_steps(kinds, args.steps)
    best = {f"step/{kind}": BATCH / min(seconds) for kind, seconds in times.items()}
    paired = {f"step/{kind}": statistics.median(a / b for a, b in zip(times[kinds[0]], seconds))
              for kind, seconds in times.items()}
    print(f"{'phase':18s} {'images/s':>9s} {'best vs first':>14s} {'median pair':>12s}")
    for name, speed in best.items():
        print(f"{name:18s} {speed:9.1f} {speed / best[args.phases[0]]:14.3f} {paired[name]:12.3f}")
    if args.json:
        record = {
            "command": f"python benchmarks/train_speed.py --alternate --steps {args.steps} --phases {' '.join(args.phases)}",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": BATCH, "size": SIZE,
            "best_images_per_s": best,
            "best_ratio_to_first": {name: speed / best[args.phases[0]] for name, speed in best.items()},
            "median_paired_ratio_to_first": paired,
            "step_seconds": {f"step/{kind}": seconds for kind, seconds in times.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


def _frozen_layers(name: str) -> int:
    """N of a phase name with ``freezeN`` in it, else 0."""
    _, found, rest = name.partition("freeze")
    return int(rest.split("/")[0]) if found else 0


def loop_speed(source: str, workers: int, compiled: bool, stage: int, steps: int, data: str, cache_dir: str,
               frozen_layers: int = 0) -> dict[str, float]:
    """Images/s of ``train_one_epoch`` fed by the real loader, after a 2-step warm-up."""
    samples = load_dataset(data, "utkface").samples[: BATCH * (steps + 8)]
    transform = train_transform(SIZE, PAPER_INPUT, augment=True, flip=True)
    if source == "cache":
        cache = open_image_cache([s.path for s in samples], SIZE, Path(cache_dir))
        dataset = AgeImageDataset(samples, transform, CachedImages(cache, range(len(samples))))
    else:
        dataset = AgeImageDataset(samples, transform)
    sampler = EpochSampler([s.age for s in samples], "class" if stage == 2 else "instance", seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    model = _model(frozen_layers=frozen_layers)
    if stage == 2:
        freeze(model, frozen_parts(PAPER_STAGES[1]))
    optimizer = _optimizer(model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    forward = torch.compile(model) if compiled else model
    settings = EpochSettings(head="vanilla" if stage == 1 else "balanced", loss="sum", sigma=1.0, use_label_std=False,
                             device=torch.device("cpu"), amp=False, channels_last=True, max_steps=2,
                             description="bench", show_progress=False)
    started = time.perf_counter()
    train_one_epoch(forward, loader, optimizer, scheduler, settings)
    warmup = time.perf_counter() - started
    settings.max_steps = steps
    speed = train_one_epoch(forward, loader, optimizer, scheduler, settings)["images_per_s"]
    return {"images_per_s": speed, "warmup_s": warmup}


def run_phase(name: str, args: argparse.Namespace) -> dict[str, float]:
    kind, _, variant = name.partition("/")
    if kind == "step":
        return step_speed(variant, args.steps)
    stage = 2 if kind == "stage2" else 1
    source = "cache" if "cache" in name else "files"
    workers = int(name.rsplit("/w", 1)[1])
    return loop_speed(source, workers, "compile" in kind, stage, args.steps, args.data, args.cache_dir, _frozen_layers(kind))


def _child(name: str, args: argparse.Namespace, queue) -> None:
    queue.put(run_phase(name, args))


def measure(name: str, args: argparse.Namespace) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(name, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


PHASES = ["step/eager", "step/tfpad", "step/bf16", "step/compile", "step/freeze3", "step/freeze4", "files/w2", "files/w1",
          "cache/w0", "cache/w1", "cache/w2", "cache+compile/w1", "cache+freeze3/w0", "cache+freeze3/w1", "cache+freeze4/w0",
          "cache+freeze4/w1", "stage2/cache/w1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    parser.add_argument("--alternate", action="store_true",
                        help="step phases only: in one process, one step of each in turn (steadier under load)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.alternate:
        if not all(name.startswith("step/") for name in args.phases):
            parser.error("--alternate compares step/ phases only")
        report_alternate(args)
        return
    with tempfile.TemporaryDirectory() as cache_dir:
        args.cache_dir = cache_dir
        if any(not name.startswith("step/") for name in args.phases):
            measure("cache/w0", args)  # builds the cache once, so no phase pays for it
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in args.phases}
        for round_index in range(args.rounds):
            order = args.phases if round_index % 2 == 0 else list(reversed(args.phases))
            for name in order:
                rounds[name].append(measure(name, args))
                print(f"round {round_index + 1} {name:18s} {rounds[name][-1]['images_per_s']:7.1f} images/s", flush=True)
    best = {name: max(r["images_per_s"] for r in results) for name, results in rounds.items()}
    baseline = best.get("step/eager")
    print(f"\n{'phase':18s} {'images/s':>9s} {'vs step/eager':>14s}")
    for name, speed in best.items():
        ratio = f"{speed / baseline:14.2f}" if baseline else ""
        print(f"{name:18s} {speed:9.1f} {ratio}")
    if args.json:
        record = {
            "command": "python benchmarks/train_speed.py " + " ".join(
                f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in
                (("steps", args.steps), ("rounds", args.rounds), ("phases", args.phases))),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": BATCH, "size": SIZE,
            "best_images_per_s": best,
            "ratio_to_step_eager": {n: s / baseline for n, s in best.items()} if baseline else None,
            "rounds": rounds,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
