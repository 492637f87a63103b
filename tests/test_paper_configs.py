"""The paper's dataset configs (configs/*_resnet*.yaml) train end to end on their real formats.

MORPH II, CACD, ChaLearn LAP 2015 and MIVIA cannot be shipped or downloaded here, so each
test writes a small dataset in that format's real layout (generated images, real file and
column names) and runs ``glae train --config`` with only what makes it fast overridden:
random init instead of an ImageNet download, 64 px, one step per stage, no AMP on CPU.
Everything the config itself says about the data (format, protocol, label std) is kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glae.checkpoint import load_model
from glae.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

FAST = [
    "model.pretrained=false",
    "model.input_size=64",
    "data.num_workers=0",
    "stage1.epochs=1",
    "stage1.batch_size=4",
    "stage1.max_steps_per_epoch=1",
    "stage2.epochs=1",
    "stage2.batch_size=4",
    "stage2.max_steps_per_epoch=1",
    "amp=false",
    "clip_grad_norm=5",
    "eval_batch_size=8",
]

AGES = [3, 9, 15, 22, 28, 34, 41, 47, 55, 63, 71, 80]


def _image(path: Path, seed: int) -> Path:
    """A small random RGB JPEG: decodable, different per file, nothing copied from a dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


def _morph(root: Path) -> tuple[Path, int]:
    """MORPH II Album 2: the official CSV (mixed-case columns) next to the Album2 folder."""
    lines = ["ID_NUM,picture_num,dob,doa,Race,Gender,facial_hair,AGE,age_diff,glasses,Photo"]
    for i, age in enumerate(AGES * 2):
        name = f"Album2/{i:06d}_0M{age:02d}.JPG"
        _image(root / name, i)
        lines.append(f"{i:06d},0,1/1/1950,1/1/2000,W,M,0,{age},0,0,{name}")
    (root / "morph.csv").write_text("\n".join(lines) + "\n")
    return root / "morph.csv", round(len(AGES) * 2 * 0.2)


def _cacd(root: Path) -> tuple[Path, int]:
    """CACD as the config asks: a manifest whose split column gives the paper's celebrity split."""
    lines = ["path,age,subject,split"]
    for i, age in enumerate(AGES * 2):
        celebrity = f"Celebrity_{i % 6}"
        name = f"CACD2000/{age}_{celebrity}_{i:04d}.jpg"
        _image(root / name, i)
        lines.append(f"{name},{age},{celebrity},{'test' if i % 6 == 5 else 'train'}")
    (root / "cacd_split.csv").write_text("\n".join(lines) + "\n")
    return root / "cacd_split.csv", sum(1 for i in range(len(AGES) * 2) if i % 6 == 5)


def _lap2015(root: Path) -> tuple[Path, int]:
    """The ChaLearn LAP 2015 challenge folder: Train/Validation/Test image folders and CSVs."""
    sizes = {"Train": 16, "Validation": 4, "Test": 6}
    seed = 0
    for part, count in sizes.items():
        lines = ["image;mean;stdv"]
        for i in range(count):
            seed += 1
            _image(root / part / f"image_{seed:06d}.jpg", seed)
            lines.append(f"image_{seed:06d}.jpg;{AGES[seed % len(AGES)] + 0.5};{1 + seed % 5}.25")
        (root / f"{part}.csv").write_text("\n".join(lines) + "\n")
    return root, sizes["Test"]


def _mivia(root: Path) -> tuple[Path, int]:
    """MIVIA Age Dataset (GTA 2021 challenge): a headerless path,age CSV."""
    lines = []
    for i, age in enumerate(AGES * 2):
        _image(root / "training_caip_contest" / f"{i:06d}.jpg", i)
        lines.append(f"training_caip_contest/{i:06d}.jpg,{age}")
    (root / "training_caip_contest.csv").write_text("\n".join(lines) + "\n")
    return root / "training_caip_contest.csv", round(len(AGES) * 2 * 0.2)


@pytest.mark.parametrize(
    "config, build",
    [
        ("morph2_resnet18.yaml", _morph),
        ("morph2_resnet50.yaml", _morph),
        ("cacd_resnet18.yaml", _cacd),
        ("lap2015_resnet18.yaml", _lap2015),
        ("mivia_resnet18.yaml", _mivia),
    ],
)
def test_paper_config_trains_both_stages_on_its_format(config: str, build, tmp_path: Path, monkeypatch) -> None:
    import glae.engine

    data, n_test = build(tmp_path / "data")
    run = tmp_path / "run"
    args = ["train", "--config", str(CONFIGS / config), "--data", str(data), "--out", str(run), "--no-progress"]
    for setting in FAST:
        args += ["--set", setting]
    sigmas: list = []  # the σ of Eq. 1 each training step used
    loss = glae.engine.compute_loss
    monkeypatch.setattr(glae.engine, "compute_loss", lambda kind, outputs, ages, sigma: sigmas.append(sigma) or loss(kind, outputs, ages, sigma))

    assert main(args) == 0

    if config == "lap2015_resnet18.yaml":  # the annotated std of each face (1.25 .. 5.25), not the fixed σ
        assert sigmas and all(isinstance(s, torch.Tensor) and set(s.tolist()) <= {1.25, 2.25, 3.25, 4.25, 5.25} for s in sigmas)
    else:
        assert sigmas and all(isinstance(s, float) for s in sigmas)

    report = json.loads((run / "test_metrics.json").read_text())
    assert report["n_images"] == n_test
    assert report["mode"] == "routing" and np.isfinite(report["mae"])
    _, info = load_model(run / "model.safetensors")
    assert info["balanced_trained"] and info["stages"] == [1, 2]
