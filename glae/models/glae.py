"""The GLAE network: one backbone, two heads (vanilla from stage 1, balanced from stage 2)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import create_backbone
from .heads import HeadKind, create_head

HEAD_NAMES = ("vanilla", "balanced")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; stored inside every checkpoint."""

    backbone: str = "resnet18"  # resnet18 / resnet50 (the paper's), efficientnet_lite0, or any timm name
    pretrained: bool | str = False  # True: ImageNet weights (offline only for efficientnet_lite0); or a local file
    head: HeadKind = "glae"  # glae = FR + PA; fr = FR + GAP; gap = the plain GAP + linear baseline
    max_age: int = 100  # K: the heads score ages 0..K (paper 100; UTKFace needs 116)
    input_size: int = 224  # square input side in pixels (paper 224; smaller for CPU runs)
    upscale: int = 16  # FR pixel-shuffle factor r
    kernel_size: int = 16  # FR convolution kernel (r or 2r, Table III)
    stride: int = 16  # FR convolution stride (r or r/2, Table III)
    proj_depth: int = 0  # depth of PA's Proj MLP (Table IV: 0, 1 or 2)
    embed_dim: int | None = None  # Proj output width; None = K+1 (see HolisticBranch)
    hidden_dim: int = 512  # width of Proj's hidden layers when proj_depth > 0

    @property
    def num_classes(self) -> int:
        return self.max_age + 1

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def validate(self) -> None:
        """Refuse sizes that would crash deep inside the network or allocate without bound.

        The caps are far above any face model (the paper: K=100, 224 px, r=k=s=16) and far
        below what exhausts memory; every message names the ``--set model.*`` key.
        """
        limits = {
            "max_age": (1, 200),  # K: nobody is older than 200 years; K+1 output channels
            "input_size": (32, 1024),  # the backbone needs a few pixels per stride; 4x the paper's side
            "upscale": (1, 64),
            "kernel_size": (1, 64),
            "stride": (1, 64),
            "proj_depth": (0, 8),
            "hidden_dim": (1, 8192),
        }
        if self.embed_dim is not None:
            limits["embed_dim"] = (1, 8192)
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"model.{name} must be an integer in {low}..{high}, got {value!r}; fix it with --set model.{name}=N")


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
                name: create_head(
                    config.head,
                    self.backbone.out_channels,
                    config.num_classes,
                    feature_size,
                    config.upscale,
                    config.kernel_size,
                    config.stride,
                    config.proj_depth,
                    config.embed_dim,
                    config.hidden_dim,
                )
                for name in HEAD_NAMES
            }
        )

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
        batch = torch.cat([images, images.flip(-1)])
        features = self.forward_features(batch)
        return {
            head: self.forward_head(features, head)["logits"].float().softmax(-1).unflatten(0, (2, images.shape[0]))
            for head in heads
        }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
