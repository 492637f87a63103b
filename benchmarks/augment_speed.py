"""Loader throughput of the training augmentation: today's PIL path against uint8-tensor candidates.

Every variant turns the decoded-image cache's uint8 pixels into normalized training tensors
with ColorJitter(0.4, 0.4, 0.4, 0.1) + RandAugment(2, 9) + a random flip, in this one process,
on the same real faces and seeds; the ratios are against ``pil``, measured in the same run:

  pil            glae.data.transforms.train_transform through AgeImageDataset (today: PIL kernels)
  tensor/v1      the same torchvision transforms on uint8 tensors (same random stream as pil)
  tensor/v2      torchvision.transforms.v2 on uint8 tensors (RandAugment draws its signs differently)
  batch/jitter   only ColorJitter's four v2 kernels and the normalization, on a whole uint8 batch
                 with one parameter set: a lower bound for any batched variant with per-sample
                 parameters, which needs at least this work plus RandAugment
  none           no augmentation (flip + normalize): what the augmentation costs on top

Variants are interleaved, ``--rounds`` times; the table prints each one's best round (other
processes only ever slow a round down) and the JSON keeps every round.

Usage: python benchmarks/augment_speed.py [--data ../shared/data/utkface] [--images 256]
       [--rounds 5] [--json benchmarks/results/augment_speed.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import v2

from glae.data import load_dataset
from glae.data.cache import CachedImages, ImageCache, open_image_cache
from glae.data.datasets import AgeSample
from glae.data.images import AgeImageDataset
from glae.data.transforms import train_transform
from glae.models.glae import PAPER_INPUT

SIZE = 128
MEAN, STD = PAPER_INPUT


class CachedTensors:
    """``index -> uint8 tensor [3, S, S]`` straight from the cache: no PIL image on the tensor paths."""

    def __init__(self, cache: ImageCache, indices: Sequence[int]) -> None:
        self.cache = cache
        self.indices = list(indices)

    def __call__(self, index: int) -> Tensor:
        return torch.from_numpy(np.array(self.cache.pixels[self.indices[index]])).permute(2, 0, 1)


def augmentations(ops) -> Callable[[Tensor], Tensor]:
    """Flip, ColorJitter, RandAugment from ``ops`` (torchvision.transforms or .v2), on uint8 tensors."""
    return ops.Compose([
        ops.RandomHorizontalFlip(), ops.ColorJitter(0.4, 0.4, 0.4, 0.1), ops.RandAugment(num_ops=2, magnitude=9),
    ])


def variants(samples: Sequence[AgeSample], cache: ImageCache, batch: int) -> dict[str, Callable[[], None]]:
    """Each variant draws every sample once, its augmentation seeded by its key as EpochSampler does."""
    indices = range(len(samples))
    keys = [(index, 1000 + index) for index in indices]
    v1, v2_augment = augmentations(T), augmentations(v2)
    normalize_v1 = T.Compose([T.ConvertImageDtype(torch.float32), T.Normalize(MEAN, STD)])
    normalize_v2 = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    pixels = CachedTensors(cache, indices)
    datasets = {
        "pil": AgeImageDataset(samples, train_transform(SIZE, PAPER_INPUT, augment=True, flip=True), CachedImages(cache, indices)),
        "tensor/v1": AgeImageDataset(samples, lambda image: normalize_v1(v1(image)), pixels),
        "tensor/v2": AgeImageDataset(samples, lambda image: normalize_v2(v2_augment(image)), pixels),
        "none": AgeImageDataset(samples, train_transform(SIZE, PAPER_INPUT, augment=False, flip=True), CachedImages(cache, indices)),
    }
    jitter = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)

    def draw(dataset: AgeImageDataset) -> Callable[[], None]:
        def run() -> None:
            for key in keys:
                dataset[key]
        return run

    def jitter_batches() -> None:
        for start in range(0, len(samples), batch):
            normalize_v2(jitter(torch.stack([pixels(index) for index in range(start, min(start + batch, len(samples)))])))

    return {**{name: draw(dataset) for name, dataset in datasets.items()}, "batch/jitter": jitter_batches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    samples = load_dataset(args.data, "utkface").samples[: args.images]
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = open_image_cache([s.path for s in samples], SIZE, Path(cache_dir))
        runs = variants(samples, cache, args.batch)
        rounds: dict[str, list[float]] = {name: [] for name in runs}
        for round_index in range(args.rounds):
            order = list(runs) if round_index % 2 == 0 else list(reversed(runs))
            for name in order:
                started = time.perf_counter()
                runs[name]()
                rounds[name].append(len(samples) / (time.perf_counter() - started))
    best = {name: max(speeds) for name, speeds in rounds.items()}
    print(f"{'variant':14s} {'images/s':>9s} {'ms/image':>9s} {'vs pil':>7s}")
    for name, speed in best.items():
        print(f"{name:14s} {speed:9.0f} {1e3 / speed:9.2f} {speed / best['pil']:7.2f}")
    if args.json:
        record = {
            "command": f"python benchmarks/augment_speed.py --images {args.images} --batch {args.batch} --rounds {args.rounds}",
            "torch": torch.__version__, "torchvision": torchvision.__version__, "threads": torch.get_num_threads(),
            "size": SIZE, "best_images_per_s": best, "ratio_to_pil": {n: s / best["pil"] for n, s in best.items()},
            "rounds": rounds,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
