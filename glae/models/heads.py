"""Age heads: Feature Rearrangement (FR), Pixel-level Auxiliary learning (PA), the GAP
baseline and an ordinal (CORN) head, behind a registry.

Every head maps a backbone feature map ``[B, C, H, W]`` to a dict of scores:

* ``"logits"``: the holistic scores used at test time (``[B, K+1]`` for softmax heads,
  ``[B, K]`` rank scores for the ordinal head);
* ``"local_logits"``: ``[B, H'W', K+1]`` per-pixel scores of the PA local branch,
  present only in training mode (the paper removes the local classifiers at test time).

Heads never apply a loss; ``glae.losses`` does. Each head turns its scores into an age
distribution over ``0..K`` (``AgeHead.probabilities``), which is all that inference,
Adaptive Routing and the metrics read. A new head is one ``@register_head`` entry here
(its settings class, its losses) and, if it needs one, one ``@register_loss`` entry in
``glae.losses``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..typed import from_dict


class AgeHead(nn.Module):
    """A head: ``forward`` gives scores, ``probabilities`` the age distribution they mean."""

    def probabilities(self, outputs: dict[str, Tensor]) -> Tensor:
        """``[B, K+1]`` probabilities of the ages ``0..K`` (a softmax of ``logits`` by default)."""
        return outputs["logits"].float().softmax(-1)

    def log_probabilities(self, outputs: dict[str, Tensor]) -> Tensor:
        """``log`` of ``probabilities``, for distillation's KL; a head that overrides
        ``probabilities`` overrides this too (the default, a log-softmax, stays finite where
        the softmax underflows)."""
        return outputs["logits"].float().log_softmax(-1)


class FeatureRearrangement(nn.Module):
    """Section III-B: pixel shuffle by ``r`` then a convolution to K+1 age channels.

    The shuffle moves each group of ``r*r`` adjacent channels into an ``r x r`` patch, so
    the values a pixel carried across channels become spatial neighbours; the convolution
    (kernel ``r`` or ``2r``, stride ``r`` or ``r/2``) then reads each patch whole and emits
    one channel per age, which makes a fully connected classifier unnecessary.

    Shapes (ResNet-18 at 224 px, r=16, kernel=stride=16):
    ``[B, 512, 7, 7] -> shuffle -> [B, 2, 112, 112] -> conv -> [B, K+1, 7, 7]``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        upscale: int = 16,
        kernel_size: int = 16,
        stride: int = 16,
    ) -> None:
        super().__init__()
        if upscale < 1 or in_channels % (upscale * upscale):
            raise ValueError(
                f"Feature Rearrangement needs the channel count C={in_channels} to be divisible "
                f"by r*r={upscale * upscale} (r={upscale}); pick another r (model.head_options.upscale) or backbone"
            )
        self.upscale = upscale
        self.rearranged_channels = in_channels // (upscale * upscale)
        self.conv = nn.Conv2d(self.rearranged_channels, num_classes, kernel_size, stride)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size H', W' of the K+1-channel map for a backbone map of ``height x width``."""
        kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
        rows = (height * self.upscale - kernel) // stride + 1
        cols = (width * self.upscale - kernel) // stride + 1
        if rows < 1 or cols < 1:
            raise ValueError(
                f"feature map {height}x{width} is too small for kernel {kernel} after r={self.upscale}"
            )
        return rows, cols

    def forward(self, features: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, K+1, H', W']``."""
        return self.conv(F.pixel_shuffle(features, self.upscale))


def local_branch(age_maps: Tensor) -> Tensor:
    """PA local branch (Eq. 6): every pixel of the FR output is its own K+1-way classifier.

    ``[B, K+1, H', W'] -> [B, H'W', K+1]``; the softmax over the last axis happens in the loss.
    There are no parameters: the FR convolution already produced one channel per age.
    """
    return age_maps.flatten(2).transpose(1, 2)


class HolisticBranch(nn.Module):
    """PA holistic branch (Eqs. 8-9): ``Proj`` replaces GAP, then K+1 scores.

    Our reading of the paper, which leaves Proj's sizes open: Proj flattens the FR output
    ``[K+1, H', W']`` (so no pixel is averaged away) and maps it to an embedding of
    ``embed_dim`` values. ``depth`` 0 is "only a linear layer ... no activation or batch
    normalization" (Table IV); each extra depth inserts a ``Linear -> BatchNorm -> ReLU``
    block of width ``hidden_dim`` before that final projection. A linear classifier then
    gives the K+1 scores. ``embed_dim`` defaults to K+1: with ResNet-18/50 at 224 px,
    depth 0 adds about 0.5 M parameters, the size of the jump Table IV reports between the
    plain backbone and depth 0 (23 M) better than a C-wide embedding (10 M) would. Both
    widths are configurable (``model.head_options.embed_dim``, ``hidden_dim``).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        depth: int = 0,
        embed_dim: int | None = None,
        hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"projection depth must be >= 0, got {depth}")
        embed_dim = embed_dim or num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        layers.append(nn.Linear(width, embed_dim))
        self.proj = nn.Sequential(*layers)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, age_maps: Tensor) -> Tensor:
        """``[B, K+1, H', W'] -> [B, K+1]`` scores."""
        return self.classifier(self.proj(age_maps))


class GLAEHead(AgeHead):
    """FR + PA: the head GLAE trains in both stages (Algorithm 1, lines 7-10)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feature_size: tuple[int, int],
        upscale: int = 16,
        kernel_size: int = 16,
        stride: int = 16,
        proj_depth: int = 0,
        embed_dim: int | None = None,
        hidden_dim: int = 512,
    ) -> None:
        super().__init__()
        self.rearrange = FeatureRearrangement(in_channels, num_classes, upscale, kernel_size, stride)
        rows, cols = self.rearrange.output_size(*feature_size)
        self.holistic = HolisticBranch(num_classes * rows * cols, num_classes, proj_depth, embed_dim, hidden_dim)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        age_maps = self.rearrange(features)
        outputs = {"logits": self.holistic(age_maps)}
        if self.training:
            outputs["local_logits"] = local_branch(age_maps)
        return outputs


class RearrangedGAPHead(AgeHead):
    """Table II's "+FR" row: FR gives K+1 age channels, GAP turns them into scores (no PA)."""

    def __init__(self, in_channels: int, num_classes: int, upscale: int = 16, kernel_size: int = 16, stride: int = 16) -> None:
        super().__init__()
        self.rearrange = FeatureRearrangement(in_channels, num_classes, upscale, kernel_size, stride)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {"logits": self.rearrange(features).mean(dim=(2, 3))}


class GAPHead(AgeHead):
    """The plain baseline of Table II (ℓ_kl and ℓ_base rows): GAP + linear classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {"logits": self.classifier(features.mean(dim=(2, 3)))}


class OrdinalHead(AgeHead):
    """CORN (Shi, Cao & Raschka, 2021): GAP, then K rank scores ``f_k = P(age > k | age > k-1)``.

    The probabilities of "older than k" are cumulative products of sigmoids, so they
    always decrease with k and every age gets a non-negative probability: the head plugs
    into expectation, intervals and Adaptive Routing like the softmax heads.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_classes - 1)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {"logits": self.classifier(features.mean(dim=(2, 3)))}

    def probabilities(self, outputs: dict[str, Tensor]) -> Tensor:
        """``P(age = k) = P(age > k-1) - P(age > k)``, with ``P(age > -1) = 1`` and ``P(age > K) = 0``."""
        older = torch.sigmoid(outputs["logits"].float()).cumprod(-1)
        ones = older.new_ones(older.shape[:-1] + (1,))
        survival = torch.cat([ones, older, torch.zeros_like(ones)], dim=-1)
        return survival[..., :-1] - survival[..., 1:]

    def log_probabilities(self, outputs: dict[str, Tensor]) -> Tensor:
        return self.probabilities(outputs).clamp_min(1e-12).log()  # an age of probability 0 would give -inf


@dataclass(frozen=True)
class HeadInputs:
    """What every head builder gets: the backbone map's channels and size, and K+1."""

    in_channels: int
    feature_size: tuple[int, int]
    num_classes: int


@dataclass(frozen=True)
class HeadSpec:
    """A registered head: its builder, its settings class and the losses it trains with (first = default)."""

    build: Callable[[HeadInputs, Any], AgeHead]
    options: type
    losses: tuple[str, ...]


HEADS: dict[str, HeadSpec] = {}
"""Heads by the name used in configs (``model.head``)."""


def register_head(name: str, options: type, losses: tuple[str, ...]) -> Callable:
    """Decorator: ``build(inputs, options) -> AgeHead`` becomes the head ``name``."""

    def decorator(build: Callable[[HeadInputs, Any], AgeHead]) -> Callable[[HeadInputs, Any], AgeHead]:
        HEADS[name] = HeadSpec(build, options, losses)
        return build

    return decorator


def _check_range(options: Any, limits: dict[str, tuple[int, int]]) -> None:
    for name, (low, high) in limits.items():
        value = getattr(options, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(
                f"model.head_options.{name} must be an integer in {low}..{high}, got {value!r}; "
                f"fix it with --set model.head_options.{name}=N"
            )


@dataclass(frozen=True)
class NoOptions:
    """A head without settings of its own."""

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class FROptions:
    """Feature Rearrangement: pixel-shuffle factor r, kernel and stride (Table III: r or 2r, r or r/2)."""

    upscale: int = 16
    kernel_size: int = 16
    stride: int = 16

    def validate(self) -> None:
        _check_range(self, {"upscale": (1, 64), "kernel_size": (1, 64), "stride": (1, 64)})


@dataclass(frozen=True)
class GLAEOptions(FROptions):
    """FR plus PA's Proj (Table IV): depth, embedding width (None = K+1) and hidden width."""

    proj_depth: int = 0
    embed_dim: int | None = None
    hidden_dim: int = 512

    def validate(self) -> None:
        super().validate()
        _check_range(self, {"proj_depth": (0, 8), "embed_dim": (1, 8192), "hidden_dim": (1, 8192)})


@register_head("glae", GLAEOptions, losses=("sum",))
def _glae(inputs: HeadInputs, options: GLAEOptions) -> AgeHead:
    """FR + PA, trained on L_sum (Eq. 10)."""
    return GLAEHead(inputs.in_channels, inputs.num_classes, inputs.feature_size, **dataclasses.asdict(options))


@register_head("fr", FROptions, losses=("base", "kl"))
def _fr(inputs: HeadInputs, options: FROptions) -> AgeHead:
    """Table II's "+FR" row."""
    return RearrangedGAPHead(inputs.in_channels, inputs.num_classes, **dataclasses.asdict(options))


@register_head("gap", NoOptions, losses=("base", "kl"))
def _gap(inputs: HeadInputs, options: NoOptions) -> AgeHead:
    """Table II's baseline rows (ℓ_base, ℓ_kl)."""
    return GAPHead(inputs.in_channels, inputs.num_classes)


@register_head("ordinal", NoOptions, losses=("corn",))
def _ordinal(inputs: HeadInputs, options: NoOptions) -> AgeHead:
    """GAP + CORN rank scores."""
    return OrdinalHead(inputs.in_channels, inputs.num_classes)


def head_spec(name: str) -> HeadSpec:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)} (--set model.head=NAME)")
    return HEADS[name]


def parse_head_options(name: str, options: Mapping[str, Any]) -> Any:
    """The head's settings object from a mapping: types and ranges checked, defaults filled in."""
    spec = head_spec(name)
    parsed = from_dict(spec.options, dict(options), "model.head_options.")
    parsed.validate()
    return parsed


def create_head(name: str, in_channels: int, num_classes: int, feature_size: tuple[int, int], **options: Any) -> AgeHead:
    """Build a head by the name used in configs, e.g. ``create_head("glae", 512, 101, (7, 7), proj_depth=1)``."""
    parsed = parse_head_options(name, options)
    return head_spec(name).build(HeadInputs(in_channels, feature_size, num_classes), parsed)


__all__ = [
    "HEADS",
    "AgeHead",
    "FeatureRearrangement",
    "GAPHead",
    "GLAEHead",
    "HeadInputs",
    "HeadSpec",
    "HolisticBranch",
    "OrdinalHead",
    "RearrangedGAPHead",
    "create_head",
    "head_spec",
    "local_branch",
    "parse_head_options",
    "register_head",
]
