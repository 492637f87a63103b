"""Does the input pipeline keep the model fed? Loader alone vs. model alone vs. both.

Measures, in one run on the same images:
  * loader: images/s of the training DataLoader alone (decode + ColorJitter + RandAugment),
    for each worker count in --workers;
  * model: training images/s of the model alone on tensors already in memory;
  * pipeline: training images/s with the real loader feeding the model.
Prints each as images/s and as a ratio to the model-alone speed (pipeline/model close
to 1.0 means the loader is not the bottleneck).

Usage: python benchmarks/input_pipeline.py [--data ../shared/data/utkface] [--size 128]
       [--backbone efficientnet_lite0] [--batches 20] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from glae.data import load_dataset
from glae.data.images import AgeImageDataset
from glae.data.samplers import EpochSampler
from glae.data.transforms import train_transform
from glae.models.glae import PAPER_INPUT
from glae.engine import EpochSettings, train_one_epoch
from glae.models import AgeModel, ModelConfig


def make_loader(samples, size: int, batch: int, workers: int) -> DataLoader:
    dataset = AgeImageDataset(samples, train_transform(size, PAPER_INPUT))
    sampler = EpochSampler([s.age for s in samples], "instance", seed=0)
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def loader_speed(loader: DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * loader.batch_size / (time.perf_counter() - started)


def training_speed(model: AgeModel, loader, batches: int, batch: int) -> float:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    settings = EpochSettings(head="vanilla", loss="sum", sigma=1.0, use_label_std=False, device=torch.device("cpu"),
                             amp=False, channels_last=True, max_steps=batches + 2, description="bench", show_progress=False)
    train_one_epoch(model, loader, optimizer, scheduler, settings, start_step=batches)  # warm-up: 2 steps
    settings.max_steps = batches
    return train_one_epoch(model, loader, optimizer, scheduler, settings)["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    samples = load_dataset(args.data, "utkface").samples[: args.batch * (args.batches + 4)]
    model = AgeModel(ModelConfig(backbone=args.backbone, max_age=116, input_size=args.size)).to(memory_format=torch.channels_last)
    images = torch.randn(args.batch, 3, args.size, args.size)
    ages = torch.randint(1, 100, (args.batch,)).float()
    in_memory = [(images, ages, torch.full_like(ages, float("nan")))] * (args.batches + 2)
    model_alone = training_speed(model, in_memory, args.batches, args.batch)
    print(f"model alone ({args.backbone}, {args.size} px): {model_alone:.1f} images/s (1.00)")
    for workers in args.workers:
        loader = make_loader(samples, args.size, args.batch, workers)
        alone = loader_speed(loader, args.batches)
        fed = training_speed(model, make_loader(samples, args.size, args.batch, workers), args.batches, args.batch)
        print(f"workers={workers}: loader alone {alone:.1f} images/s ({alone / model_alone:.2f}), "
              f"model fed by loader {fed:.1f} images/s ({fed / model_alone:.2f})")


if __name__ == "__main__":
    main()
