"""The weight soup of issue #13 (benchmarks/soup.py): the average, and the batch-norm statistics it re-estimates."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.data.datasets import AgeSample
from glae.data.images import read_rgb
from glae.data.transforms import eval_transform
from glae.models.glae import AgeModel, ModelConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def soup():
    sys.path.insert(0, str(BENCHMARKS))  # soup.py imports its sibling ship_rule.py, as when run as a script
    try:
        spec = importlib.util.spec_from_file_location("soup", BENCHMARKS / "soup.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_the_average_is_the_plain_mean_of_weights_and_keeps_the_first_batch_count(soup):
    first = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(7)}
    second = {"w": torch.tensor([3.0, 6.0]), "bn.num_batches_tracked": torch.tensor(9)}
    third = {"w": torch.tensor([5.0, 1.0]), "bn.num_batches_tracked": torch.tensor(2)}
    averaged = soup.average_state([first, second, third])
    assert torch.equal(averaged["w"], torch.tensor([3.0, 3.0]))
    assert averaged["bn.num_batches_tracked"].item() == 7
    assert averaged["bn.num_batches_tracked"].dtype == torch.int64


def test_batch_norm_statistics_become_the_mean_over_all_faces_and_flips(soup, tmp_path):
    model = AgeModel(ModelConfig(backbone="resnet18", max_age=10, input_size=32)).eval()
    rng = np.random.default_rng(0)
    faces = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        faces.append(AgeSample(path=path, age=float(i)))
    transform = eval_transform(32, model.normalization)
    images = torch.stack([transform(read_rgb(f.path)) for f in faces])
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    captured = []
    hook = norm.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    with torch.no_grad():
        model.predict_views(images)
    hook.remove()
    inputs = captured[0]  # what the first batch-norm layer receives from all faces and their flips
    norm.running_mean.fill_(5.0)  # statistics of a trained model, which must not count
    norm.num_batches_tracked.fill_(100)

    soup.reestimate_batch_norm(model, faces, batch_size=2)  # three equal batches: a momentum average would differ

    expected_mean = inputs.mean((0, 2, 3))
    expected_var = inputs.var((0, 2, 3), unbiased=True)
    assert torch.allclose(norm.running_mean, expected_mean, atol=1e-4)
    # Per batch, var is unbiased over that batch's pixels; the cumulative mean of those
    # equals the overall variance up to the batches' differing means, so compare loosely.
    assert torch.allclose(norm.running_var, expected_var, rtol=0.2, atol=1e-3)
    assert norm.momentum == 0.1 and not model.training and not norm.training
