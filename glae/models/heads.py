"""Age heads: Feature Rearrangement (FR), Pixel-level Auxiliary learning (PA) and the GAP baseline.

Every head maps a backbone feature map ``[B, C, H, W]`` to a dict of scores:

* ``"logits"``: ``[B, K+1]`` holistic age scores (the prediction used at test time);
* ``"local_logits"``: ``[B, H'W', K+1]`` per-pixel scores of the PA local branch,
  present only in training mode (the paper removes the local classifiers at test time).

Heads never apply a loss or a softmax; ``glae.losses`` does.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torch.nn import functional as F

HeadKind = Literal["gap", "fr", "glae"]


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
                f"by r*r={upscale * upscale} (r={upscale}); pick another r (model.upscale) or backbone"
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
    widths are configurable (``model.embed_dim``, ``model.hidden_dim``).
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


class GLAEHead(nn.Module):
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


class RearrangedGAPHead(nn.Module):
    """Table II's "+FR" row: FR gives K+1 age channels, GAP turns them into scores (no PA)."""

    def __init__(self, in_channels: int, num_classes: int, upscale: int = 16, kernel_size: int = 16, stride: int = 16) -> None:
        super().__init__()
        self.rearrange = FeatureRearrangement(in_channels, num_classes, upscale, kernel_size, stride)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {"logits": self.rearrange(features).mean(dim=(2, 3))}


class GAPHead(nn.Module):
    """The plain baseline of Table II (ℓ_kl and ℓ_base rows): GAP + linear classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        return {"logits": self.classifier(features.mean(dim=(2, 3)))}


def create_head(
    kind: HeadKind,
    in_channels: int,
    num_classes: int,
    feature_size: tuple[int, int],
    upscale: int = 16,
    kernel_size: int = 16,
    stride: int = 16,
    proj_depth: int = 0,
    embed_dim: int | None = None,
    hidden_dim: int = 512,
) -> nn.Module:
    """Build a head by the name used in configs: ``gap`` | ``fr`` | ``glae``."""
    if kind == "glae":
        return GLAEHead(in_channels, num_classes, feature_size, upscale, kernel_size, stride, proj_depth, embed_dim, hidden_dim)
    if kind == "fr":
        return RearrangedGAPHead(in_channels, num_classes, upscale, kernel_size, stride)
    if kind == "gap":
        return GAPHead(in_channels, num_classes)
    raise ValueError(f"unknown head {kind!r}; choose gap, fr or glae")


__all__ = [
    "FeatureRearrangement",
    "GAPHead",
    "GLAEHead",
    "HeadKind",
    "HolisticBranch",
    "RearrangedGAPHead",
    "create_head",
    "local_branch",
]
