"""The two-stage GLAE training run (Algorithm 1), resumable at any step.

It writes a run folder (``glae/run_folder.py`` says what it holds and who may reuse it).

Stages are data, not code (as in classifier-balancing): ``config.stages`` lists them, each
naming the head it trains, what it freezes, how it samples, how its head starts and the
mode it validates in. The paper's stage 2 is stage 1 with the backbone frozen,
class-balanced sampling and the balanced head as the one trained.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from .calibration import CalibrationError
from .checkpoint import (
    CheckpointError,
    load_model,
    load_training_state,
    save_model,
    save_training_state,
)
from .config import StageConfig, TrainConfig, trains_balanced_head
from .data import AgeSample, DatasetIndex, Split, check_ages, load_dataset, read_split_file, split_dataset
from .data.cache import CachedImages, open_image_cache
from .data.images import AgeImageDataset, ages_of, readable_samples
from .data.samplers import EpochSampler
from .data.transforms import train_transform
from .devices import unwrap
from .distill import WithTeacherTargets, read_teacher_names, teacher_targets_for
from .engine import (
    DistributedContext,
    EpochSettings,
    LossTally,
    barrier,
    freeze,
    init_distributed,
    steps_per_epoch,
    train_one_epoch,
)
from .evaluate import InferencePass, calibrate_samples, evaluate_samples
from .ema import WeightAverage
from .fileio import atomic_write_text
from .models import HEAD_NAMES, AgeModel
from .reports import write_reports
from .routing import RoutingMode
from .run_folder import prepare_run_folder, run_lock

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_samples(config: TrainConfig) -> DatasetIndex:
    """Load the dataset, report what was skipped, and enforce the model's age range
    (unless ``data.clip_ages``: then :func:`clip_training_ages` applies it to the train part)."""
    assert config.data.path is not None, "data.path is unset (the CLI requires --data)"
    index = load_dataset(config.data.path, config.data.format, config.data.csv_columns)
    log.info(index.summary())
    if not config.data.clip_ages:
        check_ages(index.samples, config.model.max_age)
    return index


def _clipped(samples: list[AgeSample], max_age: int) -> list[AgeSample]:
    return [dataclasses.replace(s, age=float(max_age)) if s.age > max_age else s for s in samples]


def clip_training_ages(split: Split, max_age: int) -> Split:
    """The train part's ages above ``max_age`` set to it, so the loss sees ages the head can
    output. Validation and test keep the true ages: a face of 105 that a K = 100 model calls
    100 counts as 5 years off, as it is."""
    clipped = _clipped(split.train, max_age)
    changed = sum(a is not b for a, b in zip(clipped, split.train))
    if changed:
        log.info("data.clip_ages: %d training label(s) above max_age=%d trained as %d", changed, max_age, max_age)
    return dataclasses.replace(split, train=clipped)


def make_split(config: TrainConfig, index: DatasetIndex) -> Split:
    """Apply the configured protocol (``data.protocol``, registered in glae.data.PROTOCOLS)."""
    return split_dataset(index.samples, config.data)


def load_or_make_split(config: TrainConfig, index: DatasetIndex, out_dir: Path, context: DistributedContext) -> Split:
    """The split is made once and saved; a resumed run (and every rank) reads it back."""
    split_file = out_dir / "split.json"
    if not split_file.exists() and context.is_main:
        split = make_split(config, index)
        atomic_write_text(split_file, json.dumps(split.to_json(index.root), indent=1))
    barrier(context)
    split = Split.from_json(read_split_file(split_file, "the run's split"), index.samples, index.root)
    split = without_unreadable(split, ("val", "test") if config.data.cache else ("train", "val", "test"))
    if config.data.clip_ages:
        split = clip_training_ages(split, config.model.max_age)
    log.info("split: %d train, %d val, %d test", len(split.train), len(split.val), len(split.test))
    if not split.train:
        raise ValueError("the training split is empty")
    return split


def without_unreadable(split: Split, parts: tuple[str, ...]) -> Split:
    """``split`` without the images of ``parts`` that cannot be decoded, each one logged.

    A corrupt file is found before training, not at the first validation or after the last
    epoch. The image cache skips unreadable training images the same way, so ``data.cache``
    never changes which images a run uses.
    """
    kept = {}
    for part in parts:
        kept[part], problems = readable_samples(getattr(split, part))
        for problem in problems:
            log.warning("skipped (%s part): %s", part, problem)
    return dataclasses.replace(split, **kept)


def inference_pass(config: TrainConfig, device: torch.device) -> InferencePass:
    """How a run evaluates (validation, calibration, test): its eval batch size, workers and layout."""
    return InferencePass(device, config.eval_batch_size, config.data.num_workers, config.channels_last, config.amp)


def evaluate_model(model: AgeModel, samples: list[AgeSample], config: TrainConfig, device: torch.device, mode: RoutingMode) -> dict[str, Any]:
    return evaluate_samples(model, samples, mode, inference_pass(config, device))


class StageRunner:
    """Runs one stage epoch by epoch, checkpointing so that it can resume at any step.

    ``stage`` is the stage's number, counted from 1 (``config.stages[stage - 1]``); it
    seeds the sampler and names the stage in checkpoints, logs and TensorBoard.
    """

    def __init__(
        self, stage: int, config: TrainConfig, model: AgeModel, split: Split, out_dir: Path,
        context: DistributedContext, writer: SummaryWriter | None, history: list[dict[str, Any]],
        show_progress: bool, data_root: Path,
    ) -> None:
        self.stage = stage
        self.data_root = data_root  # what a teacher-targets file's image names are relative to
        self.stage_config: StageConfig = config.stages[stage - 1]
        self.config = config
        self.model = model
        self.split = split
        self.out_dir = out_dir
        self.context = context
        self.writer = writer
        self.history = history
        self.show_progress = show_progress and context.is_main
        self.head = self.stage_config.head
        self.checkpoint_path = out_dir / "checkpoints" / "last.pt"
        self.average: WeightAverage | None = None  # the weight average of this stage, when ema_decay is set

    def _training_images(self) -> AgeImageDataset | WithTeacherTargets:
        """The training part, read through the decoded-image cache unless ``data.cache`` is off,
        with the teacher's distribution of each face when the stage distils."""
        config = self.config
        transform = train_transform(config.model.input_size, unwrap(self.model).normalization, config.augment, config.train_flip)
        samples = self.split.train
        if not config.data.cache:
            images = AgeImageDataset(samples, transform)
        else:
            folder = Path(config.data.cache_dir) if config.data.cache_dir else None
            cache = open_image_cache([s.path for s in samples], config.model.input_size, folder)
            usable = cache.usable()
            if not usable:
                raise ValueError("no training image could be read (see the skipped files above)")
            images = AgeImageDataset([samples[i] for i in usable], transform, CachedImages(cache, usable))
        teacher = self.stage_config.distill_from
        if teacher is None:
            return images
        targets = teacher_targets_for(teacher, images.samples, self.data_root, config.model.max_age + 1)
        return WithTeacherTargets(images, targets)

    def _loader(self) -> tuple[DataLoader, EpochSampler]:
        config, device = self.config, self.context.device
        dataset = self._training_images()
        sampler = EpochSampler(
            ages_of(dataset.samples), self.stage_config.sampling,
            seed=config.seed * 10 + self.stage, num_replicas=self.context.world_size, rank=self.context.rank,
        )
        workers = config.data.num_workers
        loader = DataLoader(
            dataset, batch_size=self.stage_config.batch_size, sampler=sampler, drop_last=True,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        )
        return loader, sampler

    def _save(self, epoch: int, step: int, optimizer: torch.optim.SGD, scheduler: torch.optim.lr_scheduler.OneCycleLR,
              tally: LossTally) -> None:
        """Checkpoint after ``step`` steps of ``epoch``; ``tally`` is that epoch's loss so far."""
        if not self.context.is_main:
            return
        save_training_state(
            self.checkpoint_path,
            {
                "stage": self.stage, "epoch": epoch, "step": step, "world_size": self.context.world_size,
                "model": unwrap(self.model).state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(), "history": self.history,
                "epoch_loss_sum": tally.loss_sum, "epoch_images": tally.images,
                **({"ema": self.average.state_dict()} if self.average is not None else {}),
            },
        )

    def run(self, resume: dict[str, Any] | None) -> None:
        stage_config, context = self.stage_config, self.context
        model = unwrap(self.model)
        loader, sampler = self._loader()
        steps = steps_per_epoch(sampler.num_samples, stage_config.batch_size, stage_config.max_steps_per_epoch)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer, scheduler = one_cycle_optimizer(trainable, stage_config, stage_config.epochs * steps)
        if self.config.ema_decay:
            self.average = WeightAverage(model, self.config.ema_decay)
        start_epoch, start_step, start_tally = 0, 0, LossTally()
        if resume is not None:
            if self.average is not None:
                self.average.load_state_dict(resume["ema"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            torch.set_rng_state(resume["rng"])
            start_epoch, start_step = resume["epoch"], resume["step"]
            # Checkpoints written before the tally was saved lack it: their epoch's mean starts afresh.
            start_tally = LossTally(resume.get("epoch_loss_sum", 0.0), resume.get("epoch_images", 0))
            log.info("stage %d: resuming at epoch %d, step %d", self.stage, start_epoch + 1, start_step)
        wrapped: torch.nn.Module = self.model
        if context.distributed:
            wrapped = DistributedDataParallel(model, device_ids=[context.device.index] if context.device.type == "cuda" else None)
        if self.config.compile:
            # Only the training step is compiled; evaluation and saving use the plain model,
            # whose parameters the compiled one shares.
            wrapped = cast(torch.nn.Module, torch.compile(wrapped))  # a module compiles to an OptimizedModule
        settings = EpochSettings(
            head=self.head, loss=self.config.training_loss, sigma=self.config.sigma, use_label_std=self.config.data.use_label_std,
            device=context.device, amp=self.config.amp, channels_last=self.config.channels_last,
            max_steps=steps, description="", show_progress=self.show_progress,
            clip_grad_norm=self.config.clip_grad_norm, distill_weight=stage_config.distill_weight,
        )
        for epoch in range(start_epoch, stage_config.epochs):
            sampler.set_epoch(epoch)
            resumed = epoch == start_epoch
            first_step = start_step if resumed else 0
            tally = start_tally if resumed else LossTally()
            sampler.start_at(first_step * stage_config.batch_size)
            settings.description = f"stage {self.stage} epoch {epoch + 1}/{stage_config.epochs}"

            def checkpoint(step: int, epoch: int = epoch, tally: LossTally = tally) -> None:
                if self.average is not None:
                    self.average.update(model)
                if step % self.config.checkpoint_every == 0 and step < steps:
                    self._save(epoch, step, optimizer, scheduler, tally)

            result = train_one_epoch(wrapped, loader, optimizer, scheduler, settings, first_step, checkpoint, tally)
            self._end_epoch(epoch, result, optimizer, scheduler)

    def _end_epoch(self, epoch: int, result: dict[str, float], optimizer: torch.optim.SGD,
                   scheduler: torch.optim.lr_scheduler.OneCycleLR) -> None:
        """Validate (with the averaged weights when ``ema_decay`` is set), checkpoint and log one epoch.

        With an average, the last step's weights are validated too (``val_last_weights``):
        one run then tells whether averaging helps, at the cost of a second validation pass.
        After a stage's last epoch the model keeps the averaged weights for good, before
        the checkpoint: the next stage, stageN.safetensors and the final model build on them.
        """
        last = epoch + 1 == self.stage_config.epochs
        record: dict[str, Any] = {
            "stage": self.stage, "epoch": epoch + 1, "train_loss": result["loss"],
            "train_images_per_s": result["images_per_s"] * self.context.world_size,
            "lr": scheduler.get_last_lr()[0],
        }
        validate = self.context.is_main and bool(self.split.val)
        if validate and self.average is not None:
            # The last step's weights too, so one run tells whether the average helps.
            record["val_last_weights"] = self._validate()
        if self.average is not None and last:
            self.average.copy_to(unwrap(self.model))
        if validate:
            with self.average.applied(unwrap(self.model)) if self.average is not None else nullcontext():
                record["val"] = self._validate()
        self.history.append(record)
        self._save(epoch + 1, 0, optimizer, scheduler, LossTally())
        if self.context.is_main:
            write_history(self.out_dir, self.history)
            if self.writer is not None:
                global_epoch = epoch + 1 + sum(stage.epochs for stage in self.config.stages[: self.stage - 1])
                for key in ("train_loss", "train_images_per_s", "lr"):
                    self.writer.add_scalar(f"stage{self.stage}/{key}", record[key], global_epoch)
                for mode, values in record.get("val", {}).items():
                    for name, value in values.items():
                        self.writer.add_scalar(f"val/{mode}/{name}", value, global_epoch)
                self.writer.flush()
            log.info("%s", json.dumps(record))
        barrier(self.context)

    def _validate(self) -> dict[str, dict[str, float]]:
        """MAE and CMAE on the val part, per head choice of the stage's ``val_mode``."""
        val = evaluate_model(unwrap(self.model), self.split.val, self.config, self.context.device, self.stage_config.val_mode)
        return {name: {"mae": m["mae"], "cmae": m["cmae"]} for name, m in val["modes"].items()}


def one_cycle_optimizer(
    parameters: list[torch.nn.Parameter], stage: StageConfig, total_steps: int,
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.OneCycleLR]:
    """SGD with Nesterov momentum under OneCycle (Section V-A) for ``total_steps`` steps.

    The learning rate climbs to ``stage.lr`` and falls again while the momentum moves the
    other way: ``stage.momentum`` at the start and end, ``stage.base_momentum`` at the peak.
    """
    optimizer = torch.optim.SGD(
        parameters, lr=stage.lr, momentum=stage.momentum, nesterov=True, weight_decay=stage.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=stage.lr, total_steps=total_steps,
        base_momentum=stage.base_momentum, max_momentum=stage.momentum,
    )
    return optimizer, scheduler


def write_history(out_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl is rewritten from the checkpointed history: a resumed run never logs an epoch twice."""
    atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in history))


def frozen_parts(stage: StageConfig) -> set[str]:
    """What a stage keeps fixed: what it lists, and every head but the one it trains."""
    return set(stage.freeze) | (set(HEAD_NAMES) - {stage.head})


def begin_stage(model: AgeModel, config: TrainConfig, number: int) -> None:
    """Set up stage ``number`` (from 1) before its first step: starting weights, its head, what is frozen.

    ``init_from`` replaces the weights with another run's model file (e.g. its
    stage1.safetensors). ``head_init``: ``copy`` starts the trained head as a copy of
    ``copy_from``; ``fresh`` re-initialises it (seeded by ``seed``), as classifier
    re-training does; ``keep`` leaves it as it is.
    """
    stage = config.stages[number - 1]
    if stage.init_from:
        model.load_state_dict(init_source(model, config, number).state_dict())
    head = model.heads[stage.head]
    if stage.head_init == "copy":
        head.load_state_dict(model.heads[stage.copy_from].state_dict())
    elif stage.head_init == "fresh":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed * 10 + number)
            for module in head.modules():
                if module is not head and hasattr(module, "reset_parameters"):
                    # Linear, norms...; torch types an unknown module attribute as Tensor | Module.
                    cast("Callable[[], None]", module.reset_parameters)()
    freeze_for_stage(model, stage)


def freeze_for_stage(model: AgeModel, stage: StageConfig) -> None:
    """Fix what ``stage`` keeps fixed: at its start and again when a run resumes inside it."""
    freeze(model, frozen_parts(stage), stage.freeze_backbone_layers)


def init_source(model: AgeModel, config: TrainConfig, number: int) -> AgeModel:
    """Stage ``number``'s ``init_from`` model, refused unless it is this run's network fed the same pixels.

    The pixel normalization is compared on its own: with ``normalization: backbone`` it
    follows ``pretrained``, which the settings comparison leaves out (``init_from``
    replaces the ImageNet weights anyway).
    """
    path = config.stages[number - 1].init_from
    assert path is not None
    source, _ = load_model(path)
    if not isinstance(source, AgeModel):
        raise ValueError(f"stages.{number - 1}.init_from {path} is a model pair (glae pair); a stage starts from one network")
    if dataclasses.replace(source.config, pretrained=model.config.pretrained) != model.config:
        raise ValueError(f"stages.{number - 1}.init_from {path}: its model settings differ from this run's")
    if source.normalization != model.normalization:
        raise ValueError(
            f"stages.{number - 1}.init_from {path} was trained on pixels normalized as {source.normalization}, "
            f"this run would feed {model.normalization}; set model.normalization to match"
        )
    return source


def check_backbone_layers(model: AgeModel, config: TrainConfig) -> None:
    """Every stage's ``freeze_backbone_layers`` against the backbone's layers, before any stage trains.

    A count too high for stage 2 would otherwise fail only after stage 1's hours. Layers
    frozen before anything trained them are random features: allowed (tests, ablations),
    but said in the log.
    """
    stages = config.stages
    wanted = [index for index, stage in enumerate(stages) if stage.epochs > 0 and stage.freeze_backbone_layers]
    if not wanted:
        return
    available = len(model.backbone.input_layers())
    for index in wanted:
        count = stages[index].freeze_backbone_layers
        if count > available:
            raise ValueError(f"stages.{index}.freeze_backbone_layers is {count}, but {config.model.backbone} has {available} layers")
        trained_before = any(stage.epochs > 0 for stage in stages[:index])
        if not (config.model.pretrained or trained_before or stages[index].init_from):
            log.warning("stages.%d freezes %d backbone layers that nothing trained (model.pretrained is off): "
                        "they stay at their random initialisation", index, count)


def check_batch_sizes(config: TrainConfig, train_images: int, processes: int) -> None:
    """Every stage's batch size against the training images, before any stage trains.

    Batches are full (``drop_last``), so a batch larger than a process's share of the
    images would give epochs of no step: a run that trains nothing yet saves a model.
    """
    per_process = -(-train_images // processes)  # padded as EpochSampler pads
    share = f"{train_images} training images" + (f" ({per_process} per process)" if processes > 1 else "")
    for index, stage in enumerate(config.stages):
        if stage.epochs > 0 and stage.batch_size > per_process:
            raise ValueError(
                f"stages.{index}.batch_size is {stage.batch_size}, more than the {share}: an epoch would have "
                f"no full batch; lower it with --set stages.{index}.batch_size=N"
            )


def train(config: TrainConfig, out_dir: str | Path, show_progress: bool = True) -> Path:
    """Run (or resume) every stage and the final test evaluation; returns the final model file."""
    out_dir = Path(out_dir)
    context = init_distributed(config.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(out_dir) if context.is_main else nullcontext():
        return _train(config, out_dir, context, show_progress)


def _train(config: TrainConfig, out_dir: Path, context: DistributedContext, show_progress: bool) -> Path:
    prepare_run_folder(config, out_dir, context)
    index = load_samples(config)
    split = load_or_make_split(config, index, out_dir, context)
    check_batch_sizes(config, len(split.train), context.world_size)
    seed_everything(config.seed)
    model = AgeModel(config.model)
    check_backbone_layers(model, config)
    checkpoint_path = out_dir / "checkpoints" / "last.pt"
    state = load_training_state(checkpoint_path) if checkpoint_path.exists() else None
    if state is not None and state.get("world_size", context.world_size) != context.world_size:
        # The process count fixes the steps per epoch, the schedule's length and each process's share of the data.
        processes = state["world_size"]
        raise CheckpointError(
            f"{checkpoint_path} was written by a run on {processes} process(es); resume it on {processes} "
            f"(torchrun --nproc_per_node={processes}), not {context.world_size}"
        )
    with torch.random.fork_rng(devices=[]):  # building the source draws random numbers the run must not lose
        for number, stage in enumerate(config.stages, 1):
            if stage.init_from and state is None:
                init_source(model, config, number)  # a wrong source fails now, not after the stages before it
    for stage in config.stages:
        if stage.epochs > 0 and stage.distill_from:
            read_teacher_names(stage.distill_from)  # so does a missing or damaged teacher file
    model.to(context.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    history: list[dict[str, Any]] = list(state["history"]) if state else []
    writer = SummaryWriter(str(out_dir / "tensorboard")) if context.is_main else None
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:
            raise CheckpointError(
                f"{checkpoint_path}: its weights do not fit the model of this run's config.yaml; it was written by "
                "another run or GLAE version (move it away to restart the run)"
            ) from None
        if context.is_main:
            write_history(out_dir, history)  # a kill between the last checkpoint and its log line loses no epoch
    numbers = [number for number, stage in enumerate(config.stages, start=1) if stage.epochs > 0]
    for number in numbers:
        stage = config.stages[number - 1]
        finished = state is not None and (state["stage"], state["epoch"]) >= (number, stage.epochs)
        if not finished:
            resume = state if state is not None and state["stage"] == number else None
            if resume is None:
                begin_stage(model, config, number)
            else:
                freeze_for_stage(model, stage)
            StageRunner(number, config, model, split, out_dir, context, writer, history, show_progress, index.root).run(resume)
        stage_file = out_dir / f"stage{number}.safetensors"
        if number < len(config.stages) and context.is_main and not stage_file.exists():
            save_model(stage_file, model, {"stages": numbers[: numbers.index(number) + 1], "balanced_trained": trains_balanced_head(config.stages[:number])})
        barrier(context)
    if writer is not None:
        writer.close()
    return finish(config, model, split, index, out_dir, context, numbers)


def finish(
    config: TrainConfig, model: AgeModel, split: Split, index: DatasetIndex, out_dir: Path,
    context: DistributedContext, stages: list[int],
) -> Path:
    """Fit the 90% interval on the validation part, save the final model, evaluate it on the test split."""
    final = out_dir / "model.safetensors"
    balanced = config.trains_balanced_head
    mode: RoutingMode = "routing" if balanced else "vanilla"
    if context.is_main:
        info = {
            "stages": stages, "balanced_trained": balanced, "data_format": config.data.format,
            "train_images": len(split.train), "loss": config.training_loss, "seed": config.seed,
        }
        if split.val:
            try:
                model.calibration = calibrate_samples(model, split.val, mode, inference_pass(config, context.device))
                log.info("90%% interval: temperature %.3f covers %.1f%% of %d validation faces",
                         model.calibration.temperature, 100 * model.calibration.coverage, model.calibration.faces)
            except CalibrationError as error:  # the trained model is still worth keeping
                log.warning("90%% interval not calibrated (%s); the model keeps its raw quantiles "
                            "(glae calibrate can fit them later)", error)
        save_model(final, model, info)
        if split.test:
            report = evaluate_model(model, split.test, config, context.device, mode)
            report["checkpoint"] = str(final)
            report["data"] = str(index.root)
            atomic_write_text(out_dir / "test_metrics.json", json.dumps(report, indent=2))
            write_reports(report, out_dir / "report")
            log.info("test (%s): MAE %.3f, CMAE %.3f on %d images", report["mode"], report["mae"], report["cmae"], report["n_images"])
    barrier(context)
    return final
