"""Stage 2 (Algorithm 1, lines 7-10): only the balanced head learns; the backbone and its
BatchNorm statistics, and the vanilla head, stay bit-for-bit what stage 1 left."""

from __future__ import annotations

import torch
from torch import nn

from glae.engine import freeze_for_stage2, set_train_mode
from glae.losses import compute_loss
from glae.models.glae import AgeModel, ModelConfig

torch.set_num_threads(1)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running mean/var/num_batches_tracked included)."""
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def _model() -> AgeModel:
    torch.manual_seed(0)
    return AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=64))


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
