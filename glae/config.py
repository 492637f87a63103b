"""Experiment configuration: typed dataclasses, YAML files, ``key=value`` overrides.

One YAML file describes one experiment (both stages); any field can be changed from the
command line with ``--set stage1.epochs=3``. The resolved configuration is saved in the
run folder, so a run can always be repeated or resumed from its own record.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from .data.config import DataConfig
from .data.protocols import check_protocol
from .models.glae import ModelConfig


@dataclass
class StageConfig:
    epochs: int = 1  # 0 skips the stage
    batch_size: int = 32  # per process (paper: 32 per GPU)
    lr: float = 0.01  # OneCycle peak learning rate
    momentum: float = 0.9  # SGD with Nesterov momentum (Section V-A)
    weight_decay: float = 5e-4
    sampling: Literal["instance", "class"] = "instance"
    max_steps_per_epoch: int | None = None  # cap an epoch (smoke runs); None = a full pass
    init_from: str | None = None  # stage 2 only: a stage-1 checkpoint of another run to start from
    # Stage 2 only: the balanced head starts as a copy of the trained vanilla head, or
    # freshly initialised ("retrains a balanced classifier", as classifier re-training does).
    head_init: Literal["copy", "fresh"] = "copy"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(epochs=10, sampling="instance"))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(epochs=2, sampling="class", lr=0.01))
    loss: Literal["kl", "base", "sum"] = "sum"  # ℓ_kl (Eq. 2), ℓ_base (Eq. 5) or L_sum (Eq. 10, needs head glae)
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
    checkpoint_every: int = 50  # steps between mid-epoch checkpoints (resume granularity)
    eval_batch_size: int = 64

    def validate(self) -> None:
        """Reject combinations that would train something other than what was asked."""
        if self.loss == "sum" and self.model.head != "glae":
            raise ValueError("loss 'sum' (L_loc + L_hol) needs model.head=glae; use loss 'base' or 'kl' for gap/fr heads")
        if self.model.head == "glae" and self.loss != "sum":
            raise ValueError("model.head=glae is trained with loss 'sum'; for the ablation rows use head gap or fr")
        if self.stage1.epochs < 0 or self.stage2.epochs < 0:
            raise ValueError("epochs must be >= 0")
        self.model.validate()
        for name, value in (("stage1.batch_size", self.stage1.batch_size), ("stage2.batch_size", self.stage2.batch_size),
                            ("eval_batch_size", self.eval_batch_size)):
            if not 1 <= value <= MAX_BATCH_SIZE:
                raise ValueError(f"{name} must be >= 1 and <= {MAX_BATCH_SIZE}, got {value}; fix it with --set {name}=N")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        self.data.validate()
        check_protocol(self.data.protocol)
        check_device(self.device, "device")
        for name, cap in (("stage1", self.stage1.max_steps_per_epoch), ("stage2", self.stage2.max_steps_per_epoch)):
            if cap is not None and cap < 1:
                raise ValueError(f"{name}.max_steps_per_epoch must be >= 1 or null, got {cap}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.stage1.epochs == 0 < self.stage2.epochs and not self.stage2.init_from:
            raise ValueError("stage 2 without stage 1 needs stage2.init_from (a stage-1 model file to start from)")


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


def model_config_from_dict(data: Any) -> ModelConfig:
    """A ``ModelConfig`` from untrusted data (a model file's metadata): types checked, sizes validated."""
    if not isinstance(data, dict):
        raise ValueError(f"model: expected a mapping of model settings, got {type(data).__name__}")
    config = _from_dict(ModelConfig, data, "model.")
    config.validate()
    return config


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check and convert one YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping")
        return _from_dict(typing.cast(type, annotation), value, key + ".")  # an annotation: a class, not an instance
    if origin is typing.Literal:
        if value not in typing.get_args(annotation):
            raise ValueError(f"{key}: {value!r} is not one of {typing.get_args(annotation)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{key}: {value!r} does not fit {annotation}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 1e-3 as a string: accept numbers written that way.
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields_by_name)
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(prefix + k for k in sorted(unknown))}; known: {sorted(names)}")
    values = {}
    for name, value in data.items():
        factory = fields_by_name[name].default_factory
        if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict) and factory is not dataclasses.MISSING:
            # A partial section keeps the rest of this field's own default: ``stage2.lr=0.1``
            # must leave stage 2 class-balanced with its 2 epochs, not reset it to StageConfig().
            values[name] = _from_dict(hints[name], value, prefix + name + ".", factory())
        else:
            values[name] = _convert(value, hints[name], prefix + name)
    return cls(**values) if base is None else dataclasses.replace(base, **values)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    config = _from_dict(TrainConfig, data)
    config.validate()
    return config


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``3``, ``true``, ``null``)."""
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"--set expects key=value, got {override!r}")
        key, raw = override.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ValueError(f"--set {override}: not a YAML value ({error})") from None
    return data


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
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
