"""Shared fixtures: the real UTKFace folder and a tiny, fast training configuration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

UTKFACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface"


@pytest.fixture(scope="session")
def utkface() -> Path:
    """The 18,930 real UTKFace crops; tests that need them are skipped only where they are absent."""
    if not UTKFACE.is_dir():
        pytest.skip(f"{UTKFACE} not present")
    return UTKFACE


# Both stages on 64 UTKFace images at 64 px with ResNet-18: seconds on a CPU, yet every
# part of the pipeline (FR, PA, two samplers, freezing, routing, reports) runs for real.
TINY_RUN = [
    "model.backbone=resnet18",
    "model.max_age=116",
    "model.input_size=64",
    "data.limit=64",
    "data.val_fraction=0.125",
    "data.test_fraction=0.25",
    "data.num_workers=0",
    "stage1.epochs=2",
    "stage1.batch_size=8",
    "stage1.lr=0.01",
    "stage2.epochs=1",
    "stage2.batch_size=8",
    "stage2.lr=0.01",
    "checkpoint_every=2",
    "eval_batch_size=16",
]


@pytest.fixture(scope="session")
def overrides():
    """``overrides(*extra)`` -> ``--set`` arguments for the tiny run plus ``extra`` settings."""

    def build(*extra: str) -> list[str]:
        args: list[str] = []
        for item in [*TINY_RUN, *extra]:
            args += ["--set", item]
        return args

    return build


@pytest.fixture(autouse=True)
def _single_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocesses inherit a fixed thread count, so their float results are reproducible."""
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


@pytest.fixture(scope="session")
def detector():
    """One MTCNN for the whole session: loading its three nets once keeps face tests fast."""
    from glae.faces.mtcnn import MTCNNDetector

    return MTCNNDetector()


@pytest.fixture(scope="session")
def utk_crops(utkface: Path) -> list[Path]:
    """Ten UTKFace crops spread over the sorted folder (ages, genders, races vary along it)."""
    files = sorted(utkface.glob("*.jpg.chip.jpg"))
    return files[50 :: len(files) // 10][:10]
