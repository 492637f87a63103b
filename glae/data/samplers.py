"""Seeded, resumable, DDP-aware samplers for instance- and class-balanced epochs.

A sampler yields ``(dataset_index, augmentation_seed)`` pairs. The order of an epoch is
a pure function of ``(seed, epoch)`` and each draw's augmentation seed of its position, so

* ``set_epoch`` changes the order every epoch (as ``DistributedSampler`` does);
* ``start_at(k)`` resumes inside an epoch without replaying the first k draws;
* every rank of a distributed run draws a disjoint shard of the same global order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch.utils.data import Sampler

from glae.metrics import age_class

SamplingMode = Literal["instance", "class"]
_SEED_STRIDE = 1_000_003


class EpochSampler(Sampler[tuple[int, int]]):
    """Instance-balanced (a shuffled pass over the data) or class-balanced sampling.

    Class-balanced (stage 2 of GLAE, as in cRT): every age that has at least one training
    image is equally likely, then an image of that age is drawn uniformly, with
    replacement. Ages with no image cannot be drawn; their share goes evenly to the ages
    that have images (the alternative, borrowing neighbours' images, would put wrong
    labels on them). An epoch has as many draws as the dataset has images.

    Args:
        ages: training labels; the class of an image is its age rounded (half up) to a whole year, as in CMAE.
        mode: ``"instance"`` or ``"class"``.
        seed: base seed of the run.
        num_replicas, rank: DDP world size and this process's rank.
    """

    def __init__(self, ages: Sequence[float], mode: SamplingMode, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if not ages:
            raise ValueError("cannot sample from an empty training set")
        if mode not in ("instance", "class"):
            raise ValueError(f"unknown sampling mode {mode!r}; choose instance or class")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.mode = mode
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.dataset_size = len(ages)
        self.num_samples = -(-self.dataset_size // num_replicas)  # per rank, padded like DistributedSampler
        self.epoch = 0
        self.start = 0
        classes: dict[int, list[int]] = {}
        for index, age in enumerate(ages):
            classes.setdefault(age_class(age), []).append(index)
        self.class_members = [torch.tensor(members) for _, members in sorted(classes.items())]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; a new epoch starts from its first draw."""
        self.epoch = epoch
        self.start = 0

    def start_at(self, position: int) -> None:
        """Skip the first ``position`` draws of this rank's epoch (resume mid-epoch); call after ``set_epoch``."""
        self.start = position

    def _global_order(self, generator: torch.Generator) -> torch.Tensor:
        total = self.num_samples * self.num_replicas
        if self.mode == "instance":
            order = torch.randperm(self.dataset_size, generator=generator)
            return torch.cat([order, order[: total - self.dataset_size]])
        class_draws = torch.randint(len(self.class_members), (total,), generator=generator)
        offsets = torch.rand(total, generator=generator)
        sizes = torch.tensor([len(members) for members in self.class_members])
        within = (offsets * sizes[class_draws]).long()
        return torch.stack([self.class_members[c][w] for c, w in zip(class_draws.tolist(), within.tolist())])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch_seed = self.seed * _SEED_STRIDE + self.epoch
        generator = torch.Generator().manual_seed(epoch_seed)
        order = self._global_order(generator)
        positions = range(self.rank, len(order), self.num_replicas)
        for local, position in enumerate(positions):
            if local >= self.start:
                yield int(order[position]), (epoch_seed * _SEED_STRIDE + position) % (2**63)

    def __len__(self) -> int:
        return self.num_samples - self.start
