"""Experiment configuration: typed dataclasses, YAML files, ``key=value`` overrides.

One YAML file describes one experiment (all its stages); any field can be changed from the
command line with ``--set stages.0.epochs=3`` (or its short form ``stage1.epochs=3``). The resolved configuration is saved in the
run folder, so a run can always be repeated or resumed from its own record.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .data.config import DataConfig
from .data.protocols import check_protocol
from .models.glae import HEAD_NAMES, ModelConfig, migrate_model_settings
from .models.heads import head_spec
from .routing import ROUTING_MODES, RoutingMode
from .typed import from_dict


@dataclass
class StageConfig:
    """One training stage: which head it trains, what stays fixed, how it samples and starts.

    The paper's Algorithm 1 is two of these (``PAPER_STAGES``); a run may have any number.
    """

    head: str = "vanilla"  # the model head this stage trains (vanilla / balanced); every other head stays fixed
    epochs: int = 1  # 0 skips the stage
    batch_size: int = 32  # per process (paper: 32 per GPU)
    lr: float = 0.01  # OneCycle peak learning rate
    # SGD with Nesterov momentum (Section V-A), cycled by OneCycle against the learning rate:
    # ``momentum`` at the lowest learning rate (start and end), ``base_momentum`` at its peak.
    # The defaults are PyTorch's, which every run trained with before these keys existed.
    momentum: float = 0.95
    base_momentum: float = 0.85
    weight_decay: float = 5e-4
    sampling: Literal["instance", "class"] = "instance"  # instance- or class-balanced batches
    freeze: list[str] = field(default_factory=list)  # more parts kept fixed: "backbone" (its BatchNorm statistics too)
    # The backbone's first N layers (the stem, then its stages of blocks) kept as the stage
    # finds them (pretrained, or as an earlier stage left them), BatchNorm statistics too:
    # a cheaper step (docs/training_speed.md).
    freeze_backbone_layers: int = 0
    # How the trained head starts: as it is ("keep"), as a copy of the head ``copy_from``, or
    # freshly initialised ("fresh", seeded), as classifier re-training does.
    head_init: Literal["keep", "copy", "fresh"] = "keep"
    copy_from: str = "vanilla"
    val_mode: RoutingMode = "vanilla"  # head choice of the per-epoch validation (routing needs a trained balanced head)
    max_steps_per_epoch: int | None = None  # cap an epoch (smoke runs); None = a full pass
    init_from: str | None = None  # start the stage from another run's model file (e.g. its stage1.safetensors)
    # A ``glae teach`` file: the trained head also learns its distribution of each face (the
    # KL divergence of Eq. 2 towards it, times ``distill_weight``, added to the loss).
    distill_from: str | None = None
    distill_weight: float = 1.0


PAPER_STAGES = (
    StageConfig(head="vanilla", epochs=10, sampling="instance"),
    # Stage 2 (Section III-D): backbone frozen, class-balanced batches, a balanced head that
    # starts from the trained vanilla one, validated with Adaptive Routing.
    StageConfig(head="balanced", epochs=2, sampling="class", freeze=["backbone"], head_init="copy", val_mode="routing"),
)
"""Algorithm 1's two stages: the default when a config lists no ``stages``."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[StageConfig] = field(default_factory=lambda: [dataclasses.replace(s, freeze=list(s.freeze)) for s in PAPER_STAGES])
    loss: str | None = None  # one of the head's losses; None = its default (glae: sum = Eq. 10; gap/fr: base = Eq. 5; ordinal: corn)
    sigma: float = 1.0  # σ of the Gaussian label distribution (Eq. 1)
    augment: bool = True  # ColorJitter + RandAugment in training (Section V-A)
    # Random horizontal flips in training. The paper lists none, and a flip is exactly the
    # perturbation Adaptive Routing measures (Eq. 11); the UTKFace configs keep them on.
    train_flip: bool = False
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    amp: bool = False  # bfloat16 autocast on CUDA (no effect on the CPU)
    channels_last: bool = True  # 3x faster ResNet training on CPU here
    compile: bool = False  # torch.compile the training step's model (docs/training_speed.md)
    # Not in the paper, so off by default: clipping at 5 held back short runs badly (a
    # gradient norm of 15-35 is normal here), see the clipping table in docs/results.md.
    clip_grad_norm: float | None = None
    # Validate, test and save an exponential moving average of the weights (e.g. 0.999;
    # glae/ema.py) instead of the last step's; None = off, as in the paper.
    ema_decay: float | None = None
    checkpoint_every: int = 50  # steps between mid-epoch checkpoints (resume granularity)
    eval_batch_size: int = 64

    @property
    def training_loss(self) -> str:
        """The loss the run trains with: ``loss``, or the head's default."""
        return self.loss or head_spec(self.model.head).losses[0]

    @property
    def trains_balanced_head(self) -> bool:
        return trains_balanced_head(self.stages)

    def validate(self) -> None:
        """Reject combinations that would train something other than what was asked."""
        self.model.validate()
        losses = head_spec(self.model.head).losses
        if self.loss is not None and self.loss not in losses:
            raise ValueError(f"loss {self.loss!r} is not one of {losses}, the losses model.head={self.model.head} trains with")
        if not self.stages:
            raise ValueError("stages is empty: a run needs at least one stage")
        for index in range(len(self.stages)):
            _validate_stage(self.stages, index)
        if not 1 <= self.eval_batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"eval_batch_size must be >= 1 and <= {MAX_BATCH_SIZE}, got {self.eval_batch_size}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        self.data.validate()
        check_protocol(self.data.protocol)
        check_device(self.device, "device")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            # 0 would silently mean no clipping, and a negative norm flips the gradients.
            raise ValueError(f"clip_grad_norm must be > 0 or null (no clipping), got {self.clip_grad_norm}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}")


def trains_balanced_head(stages: list[StageConfig]) -> bool:
    """Whether one of these stages trains the balanced head (routing needs it)."""
    return any(stage.epochs > 0 and stage.head == "balanced" for stage in stages)


def _validate_stage(stages: list[StageConfig], index: int) -> None:
    """One stage's settings, and what it needs from the stages before it; messages name ``stages.N.key``."""
    stage, key = stages[index], f"stages.{index}"
    parts = ("backbone", *HEAD_NAMES)
    if stage.head not in HEAD_NAMES:
        raise ValueError(f"{key}.head {stage.head!r} is not one of {HEAD_NAMES}")
    if stage.epochs < 0:
        raise ValueError(f"{key}.epochs must be >= 0, got {stage.epochs}")
    if not 1 <= stage.batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"{key}.batch_size must be >= 1 and <= {MAX_BATCH_SIZE}, got {stage.batch_size}; fix it with --set {key}.batch_size=N")
    if not stage.lr > 0:
        raise ValueError(f"{key}.lr must be > 0, got {stage.lr}")
    if not (0 <= stage.base_momentum <= stage.momentum < 1 and stage.momentum > 0):  # Nesterov needs momentum
        raise ValueError(f"{key}.base_momentum and {key}.momentum must satisfy 0 <= base_momentum <= momentum < 1 "
                         f"and momentum > 0, got {stage.base_momentum} and {stage.momentum}")
    if not stage.weight_decay >= 0:
        raise ValueError(f"{key}.weight_decay must be >= 0, got {stage.weight_decay}")
    if stage.max_steps_per_epoch is not None and stage.max_steps_per_epoch < 1:
        raise ValueError(f"{key}.max_steps_per_epoch must be >= 1 or null, got {stage.max_steps_per_epoch}")
    if stage.freeze_backbone_layers < 0:
        raise ValueError(f"{key}.freeze_backbone_layers must be >= 0, got {stage.freeze_backbone_layers}")
    for part in stage.freeze:
        if part not in parts:
            raise ValueError(f"{key}.freeze: {part!r} is not one of {parts}")
        if part == stage.head:
            raise ValueError(f"{key}.freeze lists {part!r}, the head this stage trains")
    if not stage.distill_weight > 0:
        raise ValueError(f"{key}.distill_weight must be > 0, got {stage.distill_weight}")
    if stage.head_init == "copy" and (stage.copy_from not in HEAD_NAMES or stage.copy_from == stage.head):
        raise ValueError(f"{key}.copy_from must be another head than {stage.head!r}: one of {HEAD_NAMES}")
    if stage.val_mode not in ROUTING_MODES:
        raise ValueError(f"{key}.val_mode {stage.val_mode!r} is not one of {ROUTING_MODES}")
    if stage.epochs > 0 and stage.val_mode != "vanilla" and not trains_balanced_head(stages[: index + 1]):
        raise ValueError(f"{key}.val_mode {stage.val_mode} needs a balanced head trained by this stage or an earlier one")
    trained_before = any(s.epochs > 0 for s in stages[:index])
    if stage.epochs > 0 and "backbone" in stage.freeze and not trained_before and not stage.init_from:
        raise ValueError(
            f"{key} freezes a backbone no earlier stage trained: it needs {key}.init_from "
            "(a model file to start from, e.g. another run's stage1.safetensors)"
        )


MAX_BATCH_SIZE = 4096
"""Per-process batch cap: 128x the paper's 32, and a bound before a typo allocates terabytes."""


def check_device(preference: str, key: str = "--device") -> None:
    """Refuse a device name torch does not know, or a GPU this machine does not have, in one line."""
    if preference == "auto":
        return
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ValueError(f"{key} {preference!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"{key} {preference}: no CUDA GPU is visible on this machine; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ValueError(f"{key} {preference}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{key} mps: Apple's MPS is not available on this machine; use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{key} {preference!r}: GLAE runs on cpu, cuda or mps; use one of those or auto")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    data = with_stage_list(data)
    if isinstance(data.get("model"), dict):
        data = {**data, "model": migrate_model_settings(data["model"])}
    config = from_dict(TrainConfig, data)
    config.validate()
    return config


def run_record_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A run folder's ``config.yaml`` (a full dump of its config), read as the run trained.

    Runs recorded before ``base_momentum`` existed trained with PyTorch's OneCycle cycle,
    0.95 down to 0.85, whatever their ``momentum`` said: they read as that, so they resume.
    """

    def as_trained(stage: Any) -> Any:
        if isinstance(stage, dict) and "base_momentum" not in stage:
            return {**stage, "momentum": 0.95, "base_momentum": 0.85}
        return stage

    data = {key: as_trained(value) if _STAGE_SECTION.fullmatch(key) else value for key, value in data.items()}
    if isinstance(data.get("stages"), list):
        data["stages"] = [as_trained(stage) for stage in data["stages"]]
    return config_from_dict(data)


_STAGE_SECTION = re.compile(r"stage([1-9][0-9]*)")
"""``stage1``, ``stage2``...: the older sections, and the short form of ``stages.0``, ``stages.1``."""
_YAML_COMMENT = re.compile(r"(^|\s)#")


def with_stage_list(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with an explicit ``stages`` list.

    A config without one gets the paper's two stages; the older ``stage1`` / ``stage2``
    sections (configs and run folders written before ``stages`` existed) are merged into
    them, so their runs resume and reproduce unchanged.
    """
    sections = {key: data[key] for key in data if _STAGE_SECTION.fullmatch(key)}
    if "stages" in data:
        if sections:
            raise ValueError(f"use either a stages list or {', '.join(sections)} sections, not both")
        return data
    stages = [dataclasses.asdict(stage) for stage in PAPER_STAGES]
    for key, section in sections.items():
        index = int(key[len("stage"):]) - 1
        if index >= len(stages):
            raise ValueError(f"{key}: the default has {len(stages)} stages; write a stages list for more")
        if not isinstance(section, dict):
            raise ValueError(f"{key}: expected a mapping")
        section = dict(section)
        if index == 0 and section.get("head_init") == "copy":
            section.pop("head_init")  # older files recorded stage 2's setting for stage 1 too, where it did nothing
        stages[index].update(section)
    return {**{k: v for k, v in data.items() if k not in sections}, "stages": stages}


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3``, ``true``, ``null``).

    ``stages.N.key`` indexes the stage list; ``stageN.key`` is short for ``stages.(N-1).key``.
    """
    if overrides:
        data = with_stage_list(data)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--set expects key=value, got {override!r}")
        key, raw = override.split("=", 1)
        parts = key.strip().split(".")
        if _STAGE_SECTION.fullmatch(parts[0]):
            parts = ["stages", str(int(parts[0][len("stage"):]) - 1), *parts[1:]]
        node: Any = data
        for part in parts[:-1]:
            node = _child(node, part, key)
        value = _override_value(raw, override)
        if isinstance(node, list):
            node[_list_index(node, parts[-1], key)] = value
        else:
            node[parts[-1]] = value
    return data


def _override_value(raw: str, override: str) -> Any:
    """``raw`` read as YAML, except that an unquoted `` #`` is text, not a comment: on a command
    line it can only be part of the value (``init_from=runs/a #1/stage1.safetensors``)."""
    if _YAML_COMMENT.search(raw) and not raw.lstrip().startswith(("'", '"', "[", "{")):
        return raw.strip()
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ValueError(f"--set {override}: not a YAML value ({error})") from None


def _child(node: Any, part: str, key: str) -> Any:
    """The section ``part`` of ``node`` (created when missing), or the list entry it numbers."""
    if isinstance(node, list):
        return node[_list_index(node, part, key)]
    if not isinstance(node, dict):
        raise ValueError(f"--set {key}: {part} is not a section")
    child = node.setdefault(part, {})
    if not isinstance(child, (dict, list)):
        raise ValueError(f"--set {key}: {part} is not a section")
    return child


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"--set {key}: {part} is not an index of a list of {len(node)} entries (0..{len(node) - 1})")
    return int(part)


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping at the top of a YAML file (empty for an empty file), or one line saying why not."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return loaded or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML experiment file (or the defaults when ``path`` is None) and apply overrides."""
    data = read_yaml_mapping(path, "config file") if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides or []))


def dump_config(config: TrainConfig) -> str:
    return dump_settings(config_to_dict(config))


def dump_settings(settings: dict[str, Any]) -> str:
    """Settings as a run folder's ``config.yaml`` holds them: YAML, in the dataclasses' order."""
    return yaml.safe_dump(settings, sort_keys=False)


EXECUTION_SETTINGS = ("data.num_workers", "data.cache", "data.cache_dir", "checkpoint_every", "eval_batch_size")
"""Settings that change how fast a run goes or how often it saves, not what it learns: a resume may change them."""

FILE_SETTINGS = ("data.path", "data.train_list", "data.val_list", "data.test_list", "model.pretrained")
"""Settings naming files, compared as the files they name (``data`` and ``data/`` are one folder);
``model.pretrained`` names one only when it is not True or False."""
STAGE_FILE_SETTINGS = ("init_from", "distill_from")


def _run_identity(config: TrainConfig) -> dict[str, Any]:
    """What makes two runs the same experiment: every setting but the execution ones, files resolved."""
    record = config_to_dict(config)
    for key in EXECUTION_SETTINGS:
        *sections, name = key.split(".")
        _section(record, sections).pop(name)
    for key in FILE_SETTINGS:
        *sections, name = key.split(".")
        _resolve(_section(record, sections), name)
    for stage in record["stages"]:
        for name in STAGE_FILE_SETTINGS:
            _resolve(stage, name)
    return record


def _section(record: dict[str, Any], sections: list[str]) -> dict[str, Any]:
    for section in sections:
        record = record[section]
    return record


def _resolve(section: dict[str, Any], name: str) -> None:
    if isinstance(section.get(name), str):
        section[name] = str(Path(section[name]).expanduser().resolve())


def identity_changes(recorded: TrainConfig, asked: TrainConfig) -> list[str]:
    """Each setting where two runs differ as experiments, as ``key: recorded value, asked value``."""
    before, after = _flat(_run_identity(recorded)), _flat(_run_identity(asked))
    keys = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    return [f"{key}: {before.get(key)!r} recorded, {after.get(key)!r} now" for key in keys]


def _flat(record: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1]}}`` as ``{"a.b.0": 1}``: a changed setting is named by its full key."""
    if isinstance(record, dict):
        return {k: v for key, value in record.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(record, list):
        return {k: v for index, value in enumerate(record) for k, v in _flat(value, f"{prefix}{index}.").items()}
    return {prefix.rstrip("."): record}


__all__ = [
    "MAX_BATCH_SIZE",
    "PAPER_STAGES",
    "DataConfig",
    "StageConfig",
    "TrainConfig",
    "apply_overrides",
    "check_device",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "identity_changes",
    "load_config",
    "read_yaml_mapping",
    "run_record_from_dict",
    "trains_balanced_head",
]
