"""What a rerun of ``glae train`` may do with its run folder, and the training flip switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.cli import main
from glae.data.transforms import train_transform
from glae.models.glae import PAPER_INPUT


@pytest.mark.slow
def test_a_run_that_failed_at_start_accepts_the_corrected_command(utkface: Path, tmp_path: Path, overrides, capsys) -> None:
    """Nothing was trained, so the first attempt's settings must not lock the folder."""
    run = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny = overrides("stage1.epochs=1", "stage2.epochs=0")
    assert main(["train", "--data", str(empty), "--out", str(run), "--no-progress", *tiny]) == 2
    assert (run / "config.yaml").exists()
    assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *tiny]) == 0
    assert (run / "model.safetensors").exists()
    # Once trained, the folder is protected, but settings that only change speed may differ.
    assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *tiny, "--set", "data.cache=false"]) == 0
    assert main(["train", "--data", str(utkface), "--out", str(run), "--no-progress", *tiny, "--set", "seed=5"]) == 2
    assert "different configuration" in capsys.readouterr().err


def _left_half_white(size: int = 16) -> Image.Image:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:, : size // 2] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("flip, mirrored_share", [(False, 0.0), (True, 0.5)])
def test_training_flip_switch(flip: bool, mirrored_share: float) -> None:
    """train_flip=false (the paper's augmentations) never mirrors a face; true mirrors half of them."""
    transform = train_transform(16, PAPER_INPUT, augment=False, flip=flip)
    mirrored = 0
    for seed in range(200):
        torch.manual_seed(seed)
        image = transform(_left_half_white())
        mirrored += int(image[0, 0, 0] < image[0, 0, -1])
    assert mirrored / 200 == pytest.approx(mirrored_share, abs=0.1)
