"""Heads (Section III-B/C): FR shapes, PA branches, parameter counts, gradients, the two heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from glae.losses import compute_loss, expected_age
from glae.models.backbones import create_backbone
from glae.models.glae import HEAD_NAMES, AgeModel, ModelConfig
from glae.models.heads import (
    HEADS,
    FeatureRearrangement,
    GAPHead,
    GLAEHead,
    HolisticBranch,
    OrdinalHead,
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


def _set(linear: nn.Linear, weight: list[list[float]], bias: list[float]) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))
        linear.bias.copy_(torch.tensor(bias))


def _fr_features() -> torch.Tensor:
    """``[1, 8, 1, 2]`` with value ``10 * channel + w``: r = 2 groups channels 0-3 and 4-7."""
    channel, col = torch.meshgrid(torch.arange(8), torch.arange(2), indexing="ij")
    return (10 * channel + col).float().reshape(1, 8, 1, 2)


def _picking_fr(num_classes: int = 3) -> FeatureRearrangement:
    """FR with r = kernel = stride = 2 whose conv reads chosen cells of each 2x2 patch.

    Class 0 reads rearranged channel 0 at patch cell (0, 1); class 1 channel 1 at (1, 0);
    class 2 sums every cell of both channels. No bias.
    """
    fr = FeatureRearrangement(8, num_classes, upscale=2, kernel_size=2, stride=2)
    weight = torch.zeros(num_classes, 2, 2, 2)
    weight[0, 0, 0, 1] = 1.0
    weight[1, 1, 1, 0] = 1.0
    weight[2] = 1.0
    with torch.no_grad():
        fr.conv.weight.copy_(weight)
        fr.conv.bias.zero_()
    return fr


def test_fr_places_adjacent_channels_in_one_patch_row_by_row() -> None:
    """Section III-B: channels 1..r^2 fill an r x r patch from upper left to lower right."""
    out = _picking_fr()(_fr_features())
    # Pixel w of the backbone map becomes patch w. Rearranged channel c' holds the input
    # channels 4c'..4c'+3 as [[4c', 4c'+1], [4c'+2, 4c'+3]]:
    # class 0 = channel 1 -> 10 + w; class 1 = channel 6 -> 60 + w;
    # class 2 = sum of channels 0..7 = 10 * 28 + 8 w.
    expected = torch.tensor([[[[10.0, 11.0]], [[60.0, 61.0]], [[280.0, 288.0]]]])
    assert torch.equal(out, expected)


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


def test_holistic_branch_depth0_is_flatten_linear_linear() -> None:
    """Eq. 8 at depth 0: flatten [K+1, H', W'] channel-major, one linear Proj, then the classifier."""
    branch = HolisticBranch(6, 3, depth=0)
    # Flattened order of [3, 1, 2]: (c0 w0, c0 w1, c1 w0, c1 w1, c2 w0, c2 w1).
    _set(branch.proj[1], [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], [0.0, 0.0, -1.0])
    _set(branch.classifier, [[1, 0, 0], [0, 2, 0], [0, 0, 1]], [0.5, 0.0, 0.0])
    maps = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]]])
    # Proj: [2, 3, 21 - 1 = 20]; classifier: [2 + 0.5, 2 * 3, 20].
    assert branch(maps).tolist() == [[2.5, 6.0, 20.0]]
    assert sum(p.numel() for p in branch.parameters()) == _linear(6, 3) + _linear(3, 3)


def test_holistic_branch_reads_a_square_map_row_by_row() -> None:
    """Flatten order of a 2x2 map is (h, w) = (0, 0), (0, 1), (1, 0), (1, 1) per channel:
    a model file's Proj weights mean the same pixels wherever it is loaded."""
    branch = HolisticBranch(4, 1, depth=0, embed_dim=1)
    _set(branch.proj[1], [[1, 10, 100, 1000]], [0.0])
    _set(branch.classifier, [[1]], [0.0])
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    # 1 * 1 + 10 * 2 + 100 * 3 + 1000 * 4
    assert branch(maps).tolist() == [[4321.0]]


def test_holistic_branch_depth1_adds_linear_batchnorm_relu() -> None:
    """Table IV depth 1: Linear -> BatchNorm -> ReLU before the final projection."""
    branch = HolisticBranch(2, 2, depth=1, hidden_dim=2, embed_dim=1).eval()
    _set(branch.proj[1], [[1, 0], [0, -1]], [0.0, 0.0])
    batch_norm = branch.proj[2]
    with torch.no_grad():
        batch_norm.running_mean.copy_(torch.tensor([1.0, 0.0]))
        batch_norm.running_var.copy_(torch.tensor([4.0 - batch_norm.eps, 1.0 - batch_norm.eps]))
    _set(branch.proj[4], [[1, 1]], [0.0])
    _set(branch.classifier, [[1], [-1]], [0.0, 0.0])
    maps = torch.tensor([[[[5.0]], [[3.0]]]])
    # Linear: [5, -3]; BatchNorm: [(5 - 1) / 2, -3 / 1] = [2, -3]; ReLU: [2, 0]; Proj: 2.
    assert branch(maps).tolist() == [[pytest.approx(2.0), pytest.approx(-2.0)]]


def test_glae_head_predicts_with_the_holistic_branch_in_eval_and_train() -> None:
    """The local classifiers only train (Section III-C): test-time logits are p^hol, never a
    mean of the per-pixel ones, and the local branch is the FR map pixel by pixel."""
    head = GLAEHead(8, 3, (1, 2), upscale=2, kernel_size=2, stride=2, proj_depth=0)
    head.rearrange = _picking_fr()
    # FR map (see the FR test): [[10, 11], [60, 61], [280, 288]], flattened channel-major.
    _set(head.holistic.proj[1], [[1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], [0.0, 0.0, 7.0])
    _set(head.holistic.classifier, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0.0, 0.0, 0.0])
    features = _fr_features()
    head.eval()
    assert head(features)["logits"].tolist() == [[10.0, 61.0, 7.0]]
    head.train()
    outputs = head(features)
    assert outputs["logits"].tolist() == [[10.0, 61.0, 7.0]]
    assert outputs["local_logits"].tolist() == [[[10.0, 60.0, 280.0], [11.0, 61.0, 288.0]]]


def test_gap_head_averages_pixels_then_applies_its_classifier() -> None:
    """The plain baseline (Table II, first rows): GAP, then one linear layer."""
    head = create_head("gap", 2, 3, (2, 2))
    assert isinstance(head, GAPHead)
    _set(head.classifier, [[1, 0], [0, 1], [1, -1]], [0.0, 1.0, 0.0])
    features = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [4.0, 8.0]]]])
    # GAP: [12 / 4, 12 / 4] = [3, 3] -> [3, 3 + 1, 0]
    assert head(features)["logits"].tolist() == [[3.0, 4.0, 0.0]]
    with pytest.raises(ValueError, match="unknown head"):
        create_head("mlp", 512, 11, (3, 3))  # type: ignore[arg-type]


def test_fr_gap_head_averages_the_rearranged_age_maps() -> None:
    """Table II's "+FR" row: the K+1 FR channels averaged over pixels are the scores."""
    head = create_head("fr", 8, 3, (1, 2), upscale=2, kernel_size=2, stride=2)
    assert isinstance(head, RearrangedGAPHead)
    head.rearrange = _picking_fr()
    head.train()
    outputs = head(_fr_features())
    assert set(outputs) == {"logits"}
    assert outputs["logits"].tolist() == [[10.5, 60.5, 284.0]]


def test_sum_loss_training_fits_holistic_and_every_pixel() -> None:
    """A few optimizer steps on L_sum through the whole model fit a tiny batch in both
    branches: the holistic expected age and each pixel's expected age reach the labels."""
    torch.manual_seed(0)
    model = AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=32))
    model.train()
    images = _images(32, batch=4)
    ages = torch.tensor([1.0, 4.0, 7.0, 9.0])
    optimizer = torch.optim.Adam(
        [*model.backbone.parameters(), *model.heads["vanilla"].parameters()], lr=3e-3
    )
    for _ in range(60):
        loss = compute_loss("sum", model(images, head="vanilla"), ages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        outputs = model(images, head="vanilla")
    holistic = expected_age(outputs["logits"].softmax(-1))
    local = expected_age(outputs["local_logits"].softmax(-1))  # [B, H'W']
    assert (holistic - ages).abs().max() < 0.5, holistic
    assert (local - ages[:, None]).abs().max() < 0.5, local
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


def test_ordinal_head_turns_rank_scores_into_an_age_distribution() -> None:
    """CORN: P(age > k) = prod_{j<=k} sigmoid(f_j); P(age = k) = P(age > k-1) - P(age > k)."""
    head = create_head("ordinal", 2, 3, (1, 1))
    assert isinstance(head, OrdinalHead)
    _set(head.classifier, [[1, 0], [0, 1]], [0.0, 0.0])
    features = torch.tensor([[[[0.0]], [[0.0]]], [[[math.log(3.0)]], [[-math.log(3.0)]]]])
    outputs = head(features)
    assert outputs["logits"].shape == (2, 2)  # K rank scores for ages 0..K, K = 2
    probs = head.probabilities(outputs)
    # Row 0: sigmoid(0) = 0.5 twice -> P(>0) = 0.5, P(>1) = 0.25 -> [0.5, 0.25, 0.25].
    # Row 1: sigmoid(log 3) = 0.75, sigmoid(-log 3) = 0.25 -> P(>0) = 0.75, P(>1) = 0.1875.
    expected = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5625, 0.1875]])
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(expected_age(probs), torch.tensor([0.75, 0.9375]))  # = P(>0) + P(>1)
    assert torch.allclose(head.log_probabilities(outputs), expected.log(), atol=1e-6)  # what distillation compares


def test_ordinal_head_probabilities_stay_a_distribution_for_any_scores() -> None:
    head = create_head("ordinal", 4, 101, (2, 2))
    probs = head.probabilities({"logits": torch.randn(64, 100) * 20})
    assert bool((probs >= 0).all())
    assert torch.allclose(probs.sum(-1), torch.ones(64), atol=1e-5)


def test_ordinal_model_predicts_views_through_its_own_probabilities() -> None:
    """AgeModel asks each head for its distribution: the ordinal head's is not a softmax of its scores."""
    torch.manual_seed(0)
    model = AgeModel(ModelConfig(backbone="resnet18", head="ordinal", max_age=10, input_size=32)).eval()
    images = _images(32)
    views = model.predict_views(images)
    with torch.no_grad():
        for head in HEAD_NAMES:
            outputs = model(images, head=head)
            assert outputs["logits"].shape == (2, 10)
            assert views[head].shape == (2, 2, 11)
            assert torch.allclose(views[head][0], model.heads[head].probabilities(outputs), atol=1e-6)


def test_corn_training_fits_ages_through_the_model() -> None:
    """A few optimizer steps on the CORN loss bring the ordinal head's expected ages to the labels."""
    torch.manual_seed(0)
    model = AgeModel(ModelConfig(backbone="resnet18", head="ordinal", max_age=10, input_size=32)).train()
    images = _images(32, batch=4)
    ages = torch.tensor([1.0, 4.0, 7.0, 9.0])
    optimizer = torch.optim.Adam([*model.backbone.parameters(), *model.heads["vanilla"].parameters()], lr=3e-3)
    for _ in range(60):
        loss = compute_loss("corn", model(images, head="vanilla"), ages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = expected_age(model.probabilities(model(images, head="vanilla")))
    assert (predicted - ages).abs().max() < 0.5, predicted


def test_head_registry_lists_each_head_with_its_losses() -> None:
    assert {name: spec.losses for name, spec in HEADS.items()} == {
        "glae": ("sum",), "fr": ("base", "kl"), "gap": ("base", "kl"), "ordinal": ("corn",),
    }
    with pytest.raises(ValueError, match=r"model\.head_options\.proj_depth: expected an integer"):
        create_head("glae", 512, 11, (1, 1), proj_depth="deep")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) model\.head_options\.upscale"):
        create_head("gap", 512, 11, (1, 1), upscale=4)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_every_heads_log_probabilities_are_the_log_of_its_probabilities(name: str) -> None:
    """Distillation compares a teacher with ``log_probabilities``: a head that defines its own
    distribution must define its log too, or it would distill against the wrong one."""
    torch.manual_seed(0)
    model = AgeModel(ModelConfig(backbone="resnet18", head=name, max_age=10, input_size=32, pretrained=False)).eval()
    with torch.no_grad():
        outputs = model(torch.randn(3, 3, 32, 32), head="vanilla")
        probabilities, log_probabilities = model.probabilities(outputs), model.log_probabilities(outputs)
    torch.testing.assert_close(log_probabilities.exp(), probabilities, atol=1e-6, rtol=1e-5)
