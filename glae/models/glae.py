"""The GLAE network: one backbone, two heads (vanilla from stage 1, balanced from stage 2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..calibration import IntervalCalibration
from ..typed import from_dict
from .backbones import IMAGENET_INPUT, TF_INPUT, InputNormalization, create_backbone
from .heads import HEADS, AgeHead, create_head, parse_head_options

HEAD_NAMES = ("vanilla", "balanced")

PAPER_INPUT = InputNormalization((127.5 / 255,) * 3, (128 / 255,) * 3)
"""The paper's ``(x - 127.5) / 128`` (Section V-A), for networks trained from scratch."""

NORMALIZATIONS: dict[str, InputNormalization] = {"paper": PAPER_INPUT, "imagenet": IMAGENET_INPUT, "tensorflow": TF_INPUT}
"""Named pixel normalizations ``model.normalization`` may pick besides ``backbone``."""

LEGACY_HEAD_SETTINGS = {"upscale": 16, "kernel_size": 16, "stride": 16, "proj_depth": 0, "embed_dim": None, "hidden_dim": 512}
"""Head settings that model files and configs before ``model.head_options`` kept at the top
of the model section, with the defaults they had."""


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; stored inside every checkpoint."""

    backbone: str = "resnet18"  # resnet18 / resnet50 (the paper's), efficientnet_lite0/1/2, or any timm name
    pretrained: bool | str = False  # True: ImageNet weights (offline only for efficientnet_lite0/1/2); or a local file
    head: str = "glae"  # a registered head (glae.models.heads.HEADS): glae = FR + PA; fr = FR + GAP; gap; ordinal
    head_options: dict[str, Any] = field(default_factory=dict)  # the head's own settings, e.g. {proj_depth: 1}; defaults filled in
    max_age: int = 100  # K: the heads score ages 0..K (paper 100; UTKFace needs 116)
    input_size: int = 224  # square input side in pixels (paper 224; smaller for CPU runs)
    # Pixel normalization: "backbone" = what the backbone's pretrained weights expect, or the
    # paper's (x - 127.5) / 128 when it trains from scratch; or one of NORMALIZATIONS.
    normalization: str = "backbone"

    def __post_init__(self) -> None:
        # Completed at construction, so that two configs of the same network compare equal
        # and a model file records every head setting.
        if self.head in HEADS and isinstance(self.head_options, dict):
            self.head_options = dataclasses.asdict(parse_head_options(self.head, self.head_options))

    @property
    def num_classes(self) -> int:
        return self.max_age + 1

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """A validated config from a mapping (a model file's metadata, a config's model section)."""
        config = from_dict(cls, migrate_model_settings(data), "model.")
        config.validate()
        return config

    def validate(self) -> None:
        """Refuse sizes that would crash deep inside the network or allocate without bound.

        The caps are far above any face model (the paper: K=100, 224 px, r=k=s=16); every
        message names the ``--set model.*`` key. They do not bound memory: a model file's
        metadata can still describe billions of parameters, which ``load_model`` refuses by
        comparing the shapes with the file's tensors before allocating anything.
        """
        parse_head_options(self.head, self.head_options)  # the head exists, its settings fit it
        if self.normalization != "backbone" and self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"model.normalization {self.normalization!r} is not one of backbone, {', '.join(NORMALIZATIONS)}"
            )
        for name, (low, high) in {"max_age": (1, 200), "input_size": (32, 1024)}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"model.{name} must be an integer in {low}..{high}, got {value!r}; fix it with --set model.{name}=N")


def migrate_model_settings(data: dict[str, Any]) -> dict[str, Any]:
    """Move the flat head settings of older files and configs into ``head_options``.

    A complete old record (a model file or a run folder's config.yaml, which always held
    all six settings) was trained on the paper's normalization, so it gets ``paper``. A
    flat setting the head does not have is dropped when it holds its old default, and
    refused otherwise (``--set model.proj_depth=2`` on a gap head means nothing).
    """
    if not isinstance(data, dict):
        raise ValueError(f"model: expected a mapping of model settings, got {type(data).__name__}")
    legacy = {name: data[name] for name in LEGACY_HEAD_SETTINGS if name in data}
    if not legacy:
        return data
    migrated = {name: value for name, value in data.items() if name not in LEGACY_HEAD_SETTINGS}
    if len(legacy) == len(LEGACY_HEAD_SETTINGS):
        migrated.setdefault("normalization", "paper")
    head = migrated.get("head", "glae")
    stored_options = migrated.get("head_options")
    if not isinstance(head, str) or not isinstance(stored_options or {}, dict):
        raise ValueError(f"model.head must be a name and model.head_options a mapping, got {head!r} and {stored_options!r}")
    known = {f.name for f in fields(HEADS[head].options)} if head in HEADS else set(legacy)
    options = dict(stored_options or {})
    for name, value in legacy.items():
        if name in known:
            options.setdefault(name, value)
        elif value != LEGACY_HEAD_SETTINGS[name]:
            raise ValueError(f"model.{name} is not a setting of head {head!r}; its settings: {sorted(known) or 'none'}")
    migrated["head_options"] = options
    return migrated


class AgeModel(nn.Module):
    """Backbone -> (vanilla head, balanced head).

    ``forward_features`` runs the backbone once; ``forward_head`` applies one head, so a
    batch holding images and their flips goes through the backbone once and through both
    heads (Adaptive Routing needs all four distributions, Eq. 11).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = create_backbone(config.backbone, config.pretrained)
        feature_size = self._feature_size(config.input_size)
        self.heads = nn.ModuleDict(
            {
                name: create_head(config.head, self.backbone.out_channels, config.num_classes, feature_size, **config.head_options)
                for name in HEAD_NAMES
            }
        )
        self.normalization = resolve_normalization(config, self.backbone.expected_input)
        # How the 90% interval is read from the distribution; fitted after training (glae.calibration).
        self.calibration: IntervalCalibration | None = None

    def _feature_size(self, input_size: int) -> tuple[int, int]:
        """Spatial size of the backbone map, measured once: strides differ between timm models."""
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            height, width = self.backbone(torch.zeros(1, 3, input_size, input_size)).shape[-2:]
        self.backbone.train(was_training)
        return int(height), int(width)

    def forward_features(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S] -> [B, C, H, W]``."""
        return self.backbone(images)

    def forward_head(self, features: Tensor, head: str = "vanilla") -> dict[str, Tensor]:
        """Scores of one head: ``{"logits": [B, K+1]}`` plus ``"local_logits"`` in training."""
        return self.heads[head](features)

    def forward(self, images: Tensor, head: str = "vanilla") -> dict[str, Tensor]:
        return self.forward_head(self.forward_features(images), head)

    @torch.no_grad()
    def predict_views(self, images: Tensor, heads: tuple[str, ...] = HEAD_NAMES) -> dict[str, Tensor]:
        """Probabilities of each head for the images and their horizontal flips, in one batch.

        Returns ``{head: [2, B, K+1]}`` where index 0 is the original view and 1 the flip.
        """
        both = self.predict_probabilities(torch.cat([images, images.flip(-1)]), heads)
        return {head: probs.unflatten(0, (2, images.shape[0])) for head, probs in both.items()}

    @torch.no_grad()
    def predict_probabilities(self, images: Tensor, heads: tuple[str, ...] = HEAD_NAMES) -> dict[str, Tensor]:
        """``{head: [B, K+1]}``: each head's distribution for the images as given, one backbone pass."""
        features = self.forward_features(images)
        return {head: self.probabilities(self.forward_head(features, head), head) for head in heads}

    def probabilities(self, outputs: dict[str, Tensor], head: str = "vanilla") -> Tensor:
        """``[B, K+1]`` age distribution from one head's outputs, as that head defines it."""
        return cast(AgeHead, self.heads[head]).probabilities(outputs)

    def log_probabilities(self, outputs: dict[str, Tensor], head: str = "vanilla") -> Tensor:
        """``log`` of ``probabilities``: what distillation compares with a teacher's distribution."""
        return cast(AgeHead, self.heads[head]).log_probabilities(outputs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def resolve_normalization(config: ModelConfig, backbone_expects: InputNormalization) -> InputNormalization:
    """The pixel normalization a network is trained and used with (see ``ModelConfig.normalization``)."""
    if config.normalization != "backbone":
        return NORMALIZATIONS[config.normalization]
    return backbone_expects if config.pretrained else PAPER_INPUT
