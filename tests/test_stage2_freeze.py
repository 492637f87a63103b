"""Stage 2 (Algorithm 1, lines 7-10): only the balanced head learns; the backbone and its
BatchNorm statistics, and the vanilla head, stay bit-for-bit what stage 1 left."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from glae.config import TrainConfig
from glae.engine import freeze, set_train_mode
from glae.losses import compute_loss
from glae.models.backbones import IMAGENET_INPUT, Backbone
from glae.models.glae import AgeModel, ModelConfig
from glae.train import begin_stage, frozen_parts

torch.set_num_threads(1)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running mean/var/num_batches_tracked included)."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _model() -> AgeModel:
    torch.manual_seed(0)
    return AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=64))


def freeze_for_stage2(model: AgeModel) -> None:
    """What the paper's stage 2 (the default config's second stage) keeps fixed."""
    assert frozen_parts(TrainConfig().stages[1]) == {"backbone", "vanilla"}
    freeze(model, frozen_parts(TrainConfig().stages[1]))


def test_stage1_freezes_only_the_head_it_does_not_train() -> None:
    model = _model()
    freeze(model, frozen_parts(TrainConfig().stages[0]))
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.heads["vanilla"].parameters())
    assert not any(p.requires_grad for p in model.heads["balanced"].parameters())
    with pytest.raises(ValueError, match=r"cannot freeze \['neck'\]"):
        freeze(model, {"neck"})


def test_freeze_sets_modes_and_requires_grad() -> None:
    model = _model()
    freeze_for_stage2(model)
    set_train_mode(model)
    assert model.training
    assert all(not m.training for m in model.backbone.modules())
    assert all(not m.training for m in model.heads["vanilla"].modules())
    assert all(m.training for m in model.heads["balanced"].modules())
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(not p.requires_grad for p in model.heads["vanilla"].parameters())
    assert all(p.requires_grad for p in model.heads["balanced"].parameters())
    # a later model.train() (e.g. by another epoch) followed by set_train_mode restores it
    model.train()
    set_train_mode(model)
    assert not any(m.training for m in model.backbone.modules())


def test_set_train_mode_without_freezing_trains_everything() -> None:
    model = _model().eval()
    set_train_mode(model)
    assert all(m.training for m in model.modules())


def test_stage2_steps_change_only_the_balanced_head() -> None:
    model = _model()
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    freeze_for_stage2(model)
    backbone_before = _snapshot(model.backbone)
    vanilla_before = _snapshot(model.heads["vanilla"])
    balanced_before = _snapshot(model.heads["balanced"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.heads["balanced"].parameters()}
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, nesterov=True)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        set_train_mode(model)
        images = torch.randn(2, 3, 64, 64, generator=generator)
        ages = torch.randint(0, 11, (2,), generator=generator).float()
        outputs = model(images, head="balanced")
        assert "local_logits" in outputs  # the balanced head trains with PA's local branch
        loss = compute_loss("sum", outputs, ages)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, backbone_before[name]), f"backbone {name} changed"
    for name, tensor in model.heads["vanilla"].state_dict().items():
        assert torch.equal(tensor, vanilla_before[name]), f"vanilla head {name} changed"
    assert all(p.grad is None for p in model.backbone.parameters())
    changed = [name for name, t in model.heads["balanced"].state_dict().items() if not torch.equal(t, balanced_before[name])]
    assert "rearrange.conv.weight" in changed
    assert "holistic.classifier.weight" in changed


def _stage2_config(head_init: str | None = None, seed: int = 0) -> TrainConfig:
    config = TrainConfig(seed=seed)
    if head_init is not None:
        config.stages[1] = dataclasses.replace(config.stages[1], head_init=head_init)
    return config


def test_stage2_balanced_head_starts_as_a_copy_of_the_trained_vanilla_head() -> None:
    """The default (stage2.head_init=copy): stage 2 fine-tunes the stage-1 head class-balanced."""
    model = _model()
    with torch.no_grad():  # a "trained" vanilla head that no fresh initialisation reproduces
        for parameter in model.heads["vanilla"].parameters():
            parameter.add_(0.25)
    vanilla_before = _snapshot(model.heads["vanilla"])
    backbone_before = _snapshot(model.backbone)
    begin_stage(model, _stage2_config(), 2)
    balanced = model.heads["balanced"].state_dict()
    assert balanced.keys() == vanilla_before.keys()
    for name, tensor in vanilla_before.items():
        assert torch.equal(balanced[name], tensor), f"balanced {name} is not the vanilla one"
        assert torch.equal(model.heads["vanilla"].state_dict()[name], tensor)
    for name, tensor in backbone_before.items():
        assert torch.equal(model.backbone.state_dict()[name], tensor)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.heads["balanced"].parameters()}
    assert not any(m.training for m in model.backbone.modules())


def test_stage2_fresh_head_is_reinitialised_from_the_run_seed() -> None:
    """stage2.head_init=fresh: a new classifier, the same one for the same seed whatever the
    balanced head held before, so a run is repeatable."""
    first, second = _model(), _model()
    with torch.no_grad():
        for parameter in second.heads["balanced"].parameters():
            parameter.mul_(-3.0)
    begin_stage(first, _stage2_config("fresh"), 2)
    begin_stage(second, _stage2_config("fresh"), 2)
    fresh = first.heads["balanced"].state_dict()
    for name, tensor in second.heads["balanced"].state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
    vanilla = first.heads["vanilla"].state_dict()
    assert not torch.equal(fresh["rearrange.conv.weight"], vanilla["rearrange.conv.weight"])
    other_seed = _model()
    begin_stage(other_seed, _stage2_config("fresh", seed=1), 2)
    assert not torch.equal(other_seed.heads["balanced"].state_dict()["rearrange.conv.weight"], fresh["rearrange.conv.weight"])
    assert all(p.requires_grad for p in first.heads["balanced"].parameters())
    assert not any(p.requires_grad for p in first.backbone.parameters())


def test_training_samples_stage1_by_image_and_stage2_by_age(utkface, tmp_path, monkeypatch) -> None:
    """Algorithm 1: stage 1 instance-balanced, stage 2 class-balanced. Every sampler the run
    builds is replayed over many epochs and its draws counted per age."""
    from collections import Counter

    import glae.train
    from glae.config import load_config

    built = []

    class Recording(glae.train.EpochSampler):  # type: ignore[name-defined,misc]
        def __init__(self, ages, *args, **kwargs) -> None:
            super().__init__(ages, *args, **kwargs)
            built.append((list(ages), self))

    monkeypatch.setattr(glae.train, "EpochSampler", Recording)
    config = load_config(None, [
        "model.backbone=resnet18", "model.max_age=116", "model.input_size=32", "data.limit=60",
        "data.val_fraction=0", "data.test_fraction=0.1", "data.num_workers=0", f"data.cache_dir={tmp_path / 'cache'}",
        "stage1.epochs=1", "stage1.batch_size=4", "stage1.max_steps_per_epoch=1",
        "stage2.epochs=1", "stage2.batch_size=4", "stage2.max_steps_per_epoch=1", "eval_batch_size=8",
    ])
    config.data.path = str(utkface)
    glae.train.train(config, tmp_path / "run", show_progress=False)
    assert len(built) == 2
    for stage, (ages, sampler) in enumerate(built, start=1):
        classes = [math.floor(age + 0.5) for age in ages]
        draws: Counter[int] = Counter()
        for epoch in range(200):
            sampler.set_epoch(epoch)
            draws.update(classes[index] for index, _ in sampler)
        total = sum(draws.values())
        images = Counter(classes)
        if stage == 1:  # each image once per epoch: an age's share is its share of images
            assert draws == Counter({age: 200 * n for age, n in images.items()})
        else:  # every age present equally often (200 * 54 draws, 1/M each), however rare
            assert len(images) > 10 and max(images.values()) >= 3 * min(images.values())
            for age in images:
                assert draws[age] / total == pytest.approx(1 / len(images), rel=0.25), age


def test_freezing_the_first_backbone_layers_keeps_them_exactly_and_trains_the_rest() -> None:
    """``freeze_backbone_layers: 2`` (ResNet: stem + layer1) fixes those weights and BatchNorm
    statistics through training steps; layer2 on and the vanilla head still learn."""
    model = _model()
    layers = model.backbone.input_layers()
    assert [len(layer) for layer in layers][:1] == [2]  # conv1, bn1
    assert layers[1][0] is model.backbone.net.layer1[0].conv1
    freeze(model, frozen_parts(TrainConfig().stages[0]), backbone_layers=2)
    fixed = {name: t.clone() for name, t in model.backbone.net.state_dict().items() if name.startswith(("conv1", "bn1", "layer1."))}
    learned = {name: t.clone() for name, t in model.backbone.net.state_dict().items() if name.startswith("layer2.") and name.endswith("weight")}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    generator = torch.Generator().manual_seed(2)
    for _ in range(2):
        set_train_mode(model)
        outputs = model(torch.randn(2, 3, 64, 64, generator=generator), head="vanilla")
        loss = compute_loss("sum", outputs, torch.tensor([3.0, 7.0]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    state = model.backbone.net.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in fixed.items())
    assert all(not torch.equal(state[name], tensor) for name, tensor in learned.items())
    assert not model.backbone.net.bn1.training and model.backbone.net.layer2[0].bn1.training
    # the next stage's freeze starts afresh: nothing stays fixed that it does not name
    freeze(model, frozen_parts(TrainConfig().stages[0]))
    set_train_mode(model)
    assert all(p.requires_grad for p in model.backbone.parameters()) and model.backbone.net.bn1.training
    with pytest.raises(ValueError, match=r"freeze_backbone_layers must be in 0\.\.5"):
        freeze(model, set(), backbone_layers=6)


def test_a_backbone_without_layer_grouping_says_so_instead_of_freezing_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered network without a grouping still trains and freezes whole parts; only
    counting its layers is refused, in words."""
    from glae.models import backbones

    def ungrouped(pretrained: bool = False) -> Backbone:
        net = nn.Sequential(nn.Conv2d(3, 256, 3, stride=2), nn.BatchNorm2d(256), nn.Conv2d(256, 256, 3, stride=2))
        return Backbone(net, out_channels=256, expected_input=IMAGENET_INPUT)

    monkeypatch.setitem(backbones._REGISTRY, "ungrouped", ungrouped)
    model = AgeModel(ModelConfig(backbone="ungrouped", max_age=10, input_size=32))
    freeze(model, {"backbone"})  # stage 2's usual freeze
    assert not any(p.requires_grad for p in model.backbone.parameters())
    freeze(model, set())
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no layer grouping"):
        freeze(model, set(), backbone_layers=1)


def test_lite0_layers_are_the_stem_then_each_stage_of_blocks() -> None:
    backbone = AgeModel(ModelConfig(backbone="efficientnet_lite0", max_age=10, input_size=64)).backbone
    layers = backbone.input_layers()
    net = backbone.net
    assert layers[0] == [net.conv_stem, net.bn1]
    assert layers[1] == [net.blocks[0][0].conv_dw, net.blocks[0][0].bn1, net.blocks[0][0].conv_pw, net.blocks[0][0].bn2]
    assert len(layers) == 8 and net.conv_head in layers[-1]
    covered = {id(p) for layer in layers for module in layer for p in module.parameters(recurse=False)}
    assert covered == {id(p) for p in backbone.parameters()}
