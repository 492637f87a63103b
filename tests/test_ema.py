"""The weight average (``ema_decay``): its arithmetic by hand, and that a run saves the average."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from glae.checkpoint import load_model, load_training_state
from glae.cli import main
from glae.ema import WeightAverage


def _linear(weight: float) -> nn.Linear:
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(weight)
    return layer


def test_average_ramps_its_decay_up_then_holds_it() -> None:
    layer = _linear(0.0)
    average = WeightAverage(layer, decay=0.5)
    with torch.no_grad():
        layer.weight.fill_(11.0)
    average.update(layer)  # n = 1: decay min(0.5, 2/11): 0 + (1 - 2/11) * 11 = 9
    assert average.shadow["weight"].item() == pytest.approx(9.0)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    for _ in range(8):
        average.update(layer)  # n = 9: (1 + 9) / (10 + 9) > 0.5, the decay is 0.5 from n = 8 on
    expected = 9.0
    for n in range(2, 10):
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * 1.0
    assert average.shadow["weight"].item() == pytest.approx(expected)
    assert average.updates == 9


def test_applied_swaps_the_average_in_and_back() -> None:
    layer = _linear(4.0)
    average = WeightAverage(layer, decay=0.9)
    with torch.no_grad():
        layer.weight.fill_(-2.0)
    with average.applied(layer):
        assert layer.weight.item() == 4.0
    assert layer.weight.item() == -2.0
    state = average.state_dict()
    other = WeightAverage(_linear(0.0), decay=0.1)
    other.load_state_dict(state)
    assert (other.decay, other.updates, other.shadow["weight"].item()) == (0.9, 0, 4.0)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(layer, decay=1.0)


def test_a_run_with_ema_validates_and_saves_the_average(utkface: Path, tmp_path: Path, overrides) -> None:
    run = tmp_path / "ema"
    code = main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *overrides("ema_decay=0.9", "stage2.epochs=0")])
    assert code == 0
    state = load_training_state(run / "checkpoints" / "last.pt")
    model, _ = load_model(run / "model.safetensors")
    shadow = state["ema"]["shadow"]
    assert state["ema"]["updates"] > 0
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, shadow[name].to(tensor.dtype)), name  # the saved model is the average
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all("val" in record for record in history)
    # the last step's weights are validated too, and the average is not them
    assert all(set(record["val_last_weights"]) == set(record["val"]) for record in history)
    assert any(record["val_last_weights"] != record["val"] for record in history)
    # The average leaves training alone: the same run without it validates, after epoch 1,
    # exactly what the EMA run logged as its last weights (not its average).
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(utkface), "--out", str(plain), "--no-progress", *overrides("stage2.epochs=0")]) == 0
    first = json.loads((plain / "metrics.jsonl").read_text().splitlines()[0])
    assert first["val"] == history[0]["val_last_weights"] != history[0]["val"]
