"""One epoch of training, one pass of inference, freezing, and distributed helpers.

``glae.train`` strings these together into a run's stages; nothing here knows about
run folders or configs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .devices import pick_device, unwrap
from .losses import compute_loss, kl_loss
from .models.glae import HEAD_NAMES, AgeModel
from .models.pair import InferenceModel


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; continuing would only waste time."""


@dataclass
class DistributedContext:
    """Where this process sits in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


PROCESS_GROUP_TIMEOUT = timedelta(hours=2)
"""How long a rank waits at a collective. Rank 0 alone evaluates the validation part after
every epoch and the test part at the end while the other ranks wait at a barrier; NCCL's
default of 10 minutes would kill a run whose evaluation set is large."""


def init_distributed(preference: str = "auto") -> DistributedContext:
    """Join the process group torchrun describes in the environment (a no-op without torchrun).

    CUDA ranks use NCCL, one GPU each (``LOCAL_RANK``); CPU ranks use gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(preference)
    if world_size <= 1:
        return DistributedContext(device=device)
    rank = int(os.environ["RANK"])
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return DistributedContext(rank=rank, world_size=world_size, device=device)


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()


def freeze(model: AgeModel, names: Iterable[str], backbone_layers: int = 0) -> None:
    """Freeze the named parts (``backbone`` and head names) and let every other part learn.

    Frozen parts leave the optimizer and DDP's gradient bookkeeping (a parameter that never
    receives a gradient stalls DDP), and stay in eval mode, so a frozen backbone's
    BatchNorm statistics cannot drift under class-balanced batches; ``set_train_mode``
    keeps them there every epoch (the bug classifier-balancing had).

    ``backbone_layers`` also freezes the backbone's first layers (``Backbone.input_layers``:
    the stem, then its stages of blocks): no gradient flows below the first trained layer,
    so a stage-1 step skips their backward pass, the most expensive per parameter on a CPU.
    """
    parts: dict[str, nn.Module] = {"backbone": model.backbone, **model.heads}
    names = set(names)
    unknown = names - set(parts)
    if unknown:
        raise ValueError(f"cannot freeze {sorted(unknown)}: the model's parts are {sorted(parts)}")
    layers = model.backbone.input_layers() if backbone_layers else []  # a backbone may have no grouping
    if backbone_layers < 0 or backbone_layers > len(layers):
        raise ValueError(f"freeze_backbone_layers must be in 0..{len(layers)} (the backbone's layers), got {backbone_layers}")
    frozen = [module for name, module in parts.items() if name in names]
    frozen += [module for layer in layers[:backbone_layers] for module in layer]
    frozen_ids = {id(module) for module in frozen}
    model.requires_grad_(True)
    for module in model.modules():
        is_frozen = id(module) in frozen_ids
        setattr(module, "frozen", is_frozen)  # a plain flag that set_train_mode reads back
        if is_frozen:
            module.requires_grad_(False)
    set_train_mode(model)


def set_train_mode(model: AgeModel) -> None:
    """``model.train()`` except for frozen parts, which stay in eval mode."""
    model.train()
    for module in model.modules():
        if getattr(module, "frozen", False):
            module.eval()


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CUDA when AMP is on; CPU autocast is slower than float32 here."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(images: Tensor, device: torch.device, channels_last: bool) -> Tensor:
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def _finite_everywhere(loss: Tensor) -> bool:
    """Whether the loss is finite on every rank: one diverged rank must stop them all, or
    the others would wait forever for its gradients."""
    finite = torch.isfinite(loss.detach()).to(torch.int32)
    if dist.is_initialized():
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite)


@dataclass
class EpochSettings:
    """What ``train_one_epoch`` needs besides the model, data and optimizer."""

    head: str
    loss: str
    sigma: float
    use_label_std: bool
    device: torch.device
    amp: bool
    channels_last: bool
    max_steps: int
    description: str
    clip_grad_norm: float | None = None
    show_progress: bool = True
    distill_weight: float = 1.0  # of the teacher's term, for batches that carry teacher distributions (glae.distill)


@dataclass
class LossTally:
    """An epoch's summed per-image loss and image count so far.

    The caller checkpoints it with the step, so an epoch resumed mid-way logs the mean
    loss of all its steps, as an uninterrupted one does.
    """

    loss_sum: float = 0.0
    images: int = 0


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    settings: EpochSettings,
    start_step: int = 0,
    after_step: Callable[[int], None] | None = None,
    tally: LossTally | None = None,
) -> dict[str, float]:
    """Train ``settings.head`` for up to ``settings.max_steps`` steps, counting from ``start_step``.

    ``loader`` yields ``(images, ages, stds)``, or with a fourth element, the teacher's
    distribution of each face, when the stage distils (glae.distill).

    ``after_step(step)`` runs after every optimizer step (the caller checkpoints there).
    ``tally`` holds the epoch's loss before ``start_step`` and is updated in place (a
    fresh one when None). Returns the epoch's mean loss (over ``tally``) and the images/s
    of the steps run in this call.

    Raises:
        TrainingDiverged: the loss is not finite.
    """
    set_train_mode(unwrap(model))
    tally = tally if tally is not None else LossTally()
    images_before, steps = tally.images, start_step
    started = time.perf_counter()
    progress = tqdm(
        total=settings.max_steps, initial=start_step, desc=settings.description,
        disable=not settings.show_progress, dynamic_ncols=True, leave=False,
    )
    for batch in loader:
        if steps >= settings.max_steps:
            break
        images, ages, stds = batch[:3]
        images = to_device(images, settings.device, settings.channels_last)
        ages = ages.to(settings.device, dtype=torch.float32)
        sigma: float | Tensor = settings.sigma
        if settings.use_label_std:
            stds = stds.to(settings.device, dtype=torch.float32)
            sigma = torch.where(torch.isfinite(stds) & (stds > 0), stds, torch.full_like(stds, settings.sigma))
        with autocast(settings.device, settings.amp):
            outputs = model(images, head=settings.head)
        loss = compute_loss(settings.loss, {k: v.float() for k, v in outputs.items()}, ages, sigma)
        if len(batch) > 3:  # a teacher's distribution of each face (glae.distill)
            teacher = batch[3].to(settings.device, dtype=torch.float32)
            # log-probabilities are logits of the same distribution, whatever scores the head gives
            student = unwrap(model).log_probabilities(outputs, settings.head)
            loss = loss + settings.distill_weight * kl_loss(teacher, student)
        if not _finite_everywhere(loss):
            progress.close()
            raise TrainingDiverged(
                f"{settings.description}: loss became {loss.item()} at step {steps}; "
                "lower the learning rate (stageN.lr) or check the labels"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for group in optimizer.param_groups for p in group["params"]], settings.clip_grad_norm
            )
        optimizer.step()
        scheduler.step()
        steps += 1
        tally.loss_sum += loss.item() * len(ages)
        tally.images += len(ages)
        speed = (tally.images - images_before) / max(time.perf_counter() - started, 1e-9)
        progress.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{speed:.1f}")
        progress.update()
        if after_step is not None:
            after_step(steps)
    progress.close()
    elapsed = time.perf_counter() - started
    return {
        "loss": tally.loss_sum / max(tally.images, 1),
        "images_per_s": (tally.images - images_before) / max(elapsed, 1e-9),
    }


@torch.no_grad()
def predict_views_dataset(
    model: InferenceModel,
    loader: DataLoader,
    device: torch.device,
    heads: tuple[str, ...] = HEAD_NAMES,
    channels_last: bool = True,
    amp: bool = False,
    show_progress: bool = False,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Run every image and its flip through ``heads``.

    Returns ``(views, ages, stds)`` with ``views[head]`` of shape ``[2, N, K+1]`` (CPU
    float32 probabilities; index 1 = flipped view) and ``stds`` NaN where unknown.
    """
    model.eval()
    collected: dict[str, list[Tensor]] = {head: [] for head in heads}
    all_ages: list[Tensor] = []
    all_stds: list[Tensor] = []
    for images, ages, stds in tqdm(loader, desc="predict", disable=not show_progress, leave=False):
        with autocast(device, amp):
            views = model.predict_views(to_device(images, device, channels_last), heads)
        for head in heads:
            collected[head].append(views[head].float().cpu())
        all_ages.append(ages.float())
        all_stds.append(stds.float())
    return (
        {head: torch.cat(parts, dim=1) for head, parts in collected.items()},
        torch.cat(all_ages),
        torch.cat(all_stds),
    )


def steps_per_epoch(num_samples_per_rank: int, batch_size: int, cap: int | None) -> int:
    """Optimizer steps in one epoch: its full batches (the loader drops a partial last one), at most ``cap``.

    0 when not even one batch is full: a training run refuses such a batch size before it starts.
    """
    steps = num_samples_per_rank // batch_size
    return min(steps, cap) if cap else steps


__all__ = [
    "DistributedContext",
    "EpochSettings",
    "LossTally",
    "TrainingDiverged",
    "barrier",
    "freeze",
    "init_distributed",
    "predict_views_dataset",
    "set_train_mode",
    "steps_per_epoch",
    "train_one_epoch",
]

