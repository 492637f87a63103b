"""Heads (Section III-B/C): FR shapes, PA branches, parameter counts, gradients, the two heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from glae.losses import compute_loss
from glae.models.backbones import create_backbone
from glae.models.glae import HEAD_NAMES, AgeModel, ModelConfig
from glae.models.heads import (
    FeatureRearrangement,
    GAPHead,
    GLAEHead,
    HolisticBranch,
    RearrangedGAPHead,
    create_head,
    local_branch,
)

torch.set_num_threads(1)


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return create_backbone("resnet18").eval()


def _shuffle_shape(head: FeatureRearrangement, features: torch.Tensor) -> tuple[tuple[int, ...], torch.Tensor]:
    """Runs ``head`` and returns the shape of the pixel-shuffled map the FR convolution received."""
    seen: list[torch.Size] = []
    hook = head.conv.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    try:
        out = head(features)
    finally:
        hook.remove()
    return tuple(seen[0]), out


@pytest.mark.parametrize("max_age", [100, 116])
def test_fr_shapes_resnet18_224(resnet18: nn.Module, max_age: int) -> None:
    with torch.no_grad():
        features = resnet18(_images(224))
        assert features.shape == (2, 512, 7, 7)
        fr = FeatureRearrangement(512, max_age + 1)
        shuffled, out = _shuffle_shape(fr, features)
    assert shuffled == (2, 2, 112, 112)
    assert out.shape == (2, max_age + 1, 7, 7)
    assert fr.output_size(7, 7) == (7, 7)


def test_fr_shapes_resnet18_112(resnet18: nn.Module) -> None:
    with torch.no_grad():
        features = resnet18(_images(112))
        assert features.shape == (2, 512, 4, 4)
        shuffled, out = _shuffle_shape(FeatureRearrangement(512, 101), features)
    assert shuffled == (2, 2, 64, 64)
    assert out.shape == (2, 101, 4, 4)


def test_fr_shapes_resnet50_224() -> None:
    backbone = create_backbone("resnet50").eval()
    with torch.no_grad():
        features = backbone(_images(224, batch=1))
        assert features.shape == (1, 2048, 7, 7)
        shuffled, out = _shuffle_shape(FeatureRearrangement(2048, 101), features)
    assert shuffled == (1, 8, 112, 112)
    assert out.shape == (1, 101, 7, 7)


def test_fr_shapes_efficientnet_lite0_224() -> None:
    backbone = create_backbone("efficientnet_lite0").eval()
    with torch.no_grad():
        features = backbone(_images(224, batch=1))
        assert features.shape == (1, 1280, 7, 7)
        shuffled, out = _shuffle_shape(FeatureRearrangement(1280, 101), features)
    assert shuffled == (1, 5, 112, 112)
    assert out.shape == (1, 101, 7, 7)


def test_fr_rejects_channels_not_divisible_by_r_squared() -> None:
    with pytest.raises(ValueError, match=r"C=500.*r\*r=256"):
        FeatureRearrangement(500, 101, upscale=16)
    with pytest.raises(ValueError, match="divisible"):
        create_head("glae", 512, 101, (7, 7), upscale=3, kernel_size=3, stride=3)


@pytest.mark.parametrize(
    ("kernel", "stride", "side"),
    [(16, 8, 13), (16, 16, 7), (32, 8, 11), (32, 16, 6)],
)
def test_table3_kernel_stride_output_sizes(resnet18: nn.Module, kernel: int, stride: int, side: int) -> None:
    with torch.no_grad():
        features = resnet18(_images(224, batch=1))
        fr = FeatureRearrangement(512, 101, upscale=16, kernel_size=kernel, stride=stride)
        out = fr(features)
    assert out.shape == (1, 101, side, side)
    assert fr.output_size(7, 7) == (side, side)
    head = GLAEHead(512, 101, (7, 7), 16, kernel, stride).eval()
    assert head.holistic.proj[1].in_features == 101 * side * side
    with torch.no_grad():
        assert head(features)["logits"].shape == (1, 101)


def test_fr_output_size_too_small_raises() -> None:
    fr = FeatureRearrangement(512, 101, upscale=16, kernel_size=32, stride=16)
    with pytest.raises(ValueError, match="too small"):
        fr.output_size(1, 1)


def test_local_branch_reorders_exactly() -> None:
    # [B=2, C=3, H=2, W=2] with value = 1000*b + 100*c + 10*h + w
    b, c, h, w = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(2), torch.arange(2), indexing="ij")
    maps = (1000 * b + 100 * c + 10 * h + w).float()
    out = local_branch(maps)
    assert out.shape == (2, 4, 3)
    expected = torch.tensor(
        [
            [[0, 100, 200], [1, 101, 201], [10, 110, 210], [11, 111, 211]],
            [[1000, 1100, 1200], [1001, 1101, 1201], [1010, 1110, 1210], [1011, 1111, 1211]],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(out, expected)


def test_local_logits_only_in_train_mode() -> None:
    head = GLAEHead(512, 11, (2, 2))
    features = torch.randn(2, 512, 2, 2, generator=torch.Generator().manual_seed(1))
    head.train()
    out = head(features)
    assert set(out) == {"logits", "local_logits"}
    assert out["logits"].shape == (2, 11)
    assert out["local_logits"].shape == (2, 4, 11)  # 2*16=32 px, kernel=stride=16 -> 2x2 pixels
    # the local logits are the FR map itself, pixel by pixel
    assert torch.allclose(out["local_logits"], local_branch(head.rearrange(features)))
    head.eval()
    out = head(features)
    assert set(out) == {"logits"}
    assert out["logits"].shape == (2, 11)


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_holistic_branch_parameter_counts(depth: int) -> None:
    classes, rows, cols, hidden = 101, 7, 7, 64
    in_features = classes * rows * cols
    branch = HolisticBranch(in_features, classes, depth=depth, hidden_dim=hidden)
    embed = classes  # default embed_dim = K+1
    width, expected = in_features, 0
    for _ in range(depth):  # Linear -> BatchNorm (weight + bias) -> ReLU
        expected += _linear(width, hidden) + 2 * hidden
        width = hidden
    expected += _linear(width, embed) + _linear(embed, classes)
    assert sum(p.numel() for p in branch.parameters()) == expected
    # depth 0 is a single linear layer: no BatchNorm, no activation
    kinds = [type(m) for m in branch.proj]
    assert kinds.count(nn.BatchNorm1d) == depth and kinds.count(nn.ReLU) == depth


def test_holistic_branch_custom_embed_and_bad_depth() -> None:
    branch = HolisticBranch(20, 5, depth=0, embed_dim=7)
    assert sum(p.numel() for p in branch.parameters()) == _linear(20, 7) + _linear(7, 5)
    with pytest.raises(ValueError, match="depth"):
        HolisticBranch(20, 5, depth=-1)


def test_depth0_resnet18_adds_about_half_a_million() -> None:
    # Table IV: the depth-0 Proj on ResNet-18 at 224 px: 101*49 -> 101 -> 101
    branch = HolisticBranch(101 * 49, 101, depth=0)
    count = sum(p.numel() for p in branch.parameters())
    assert count == 101 * 49 * 101 + 101 + 101 * 101 + 101
    assert 0.4e6 < count < 0.6e6


def test_gap_and_fr_gap_heads() -> None:
    features = torch.randn(2, 512, 3, 3, generator=torch.Generator().manual_seed(2))
    gap = create_head("gap", 512, 11, (3, 3))
    assert isinstance(gap, GAPHead)
    out = gap(features)
    assert set(out) == {"logits"} and out["logits"].shape == (2, 11)
    assert torch.allclose(out["logits"], gap.classifier(features.mean(dim=(2, 3))))

    fr = create_head("fr", 512, 11, (3, 3))
    assert isinstance(fr, RearrangedGAPHead)
    fr.train()
    out = fr(features)
    assert set(out) == {"logits"} and out["logits"].shape == (2, 11)
    assert torch.allclose(out["logits"], fr.rearrange(features).mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="unknown head"):
        create_head("mlp", 512, 11, (3, 3))  # type: ignore[arg-type]


def test_glae_loss_gradients_reach_backbone_and_both_branches() -> None:
    model = AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=64))
    model.train()
    outputs = model(_images(64), head="vanilla")
    loss = compute_loss("sum", outputs, torch.tensor([3.0, 7.0]))
    loss.backward()
    first_conv = next(p for p in model.backbone.parameters() if p.dim() == 4)
    head = model.heads["vanilla"]
    for name, param in [
        ("backbone first conv", first_conv),
        ("FR conv", head.rearrange.conv.weight),
        ("Proj", head.holistic.proj[1].weight),
        ("classifier", head.holistic.classifier.weight),
    ]:
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    # the balanced head was not used: no gradient
    assert all(p.grad is None for p in model.heads["balanced"].parameters())


def test_age_model_heads_and_predict_views() -> None:
    torch.manual_seed(0)
    model = AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=64)).eval()
    assert set(model.heads) == set(HEAD_NAMES) == {"vanilla", "balanced"}
    images = _images(64)
    views = model.predict_views(images)
    assert set(views) == {"vanilla", "balanced"}
    with torch.no_grad():
        for head in HEAD_NAMES:
            assert views[head].shape == (2, 2, 11)
            assert torch.allclose(views[head].sum(-1), torch.ones(2, 2), atol=1e-5)
            original = model(images, head=head)["logits"].softmax(-1)
            flipped = model(images.flip(-1), head=head)["logits"].softmax(-1)
            assert torch.allclose(views[head][0], original, atol=1e-5)
            assert torch.allclose(views[head][1], flipped, atol=1e-5)
    # the two heads are separate modules with their own weights
    assert not torch.allclose(views["vanilla"], views["balanced"])
    only = model.predict_views(images, heads=("vanilla",))
    assert set(only) == {"vanilla"}
