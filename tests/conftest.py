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
    "clip_grad_norm=5",  # random init, batch 8: without it the tiny run diverges
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


@pytest.fixture(autouse=True, scope="session")
def _image_cache_in_temp(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Training runs of the tests cache decoded images in a temporary folder, not in ~/.cache."""
    os.environ["GLAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))


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


# ``glae serve`` tests (test_serve.py, test_serve_browser.py) share one tiny model and one
# server process with limits tight enough that every refusal is reachable with small files.
SERVE_MAX_AGE = 116
STRICT_LIMITS = ["--max-upload-mb", "1", "--max-pixels", "1000000", "--workers", "2"]


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ResNet-18 at 64 px with both heads, saved as a real model file."""
    import torch

    from glae.checkpoint import save_model
    from glae.models.glae import AgeModel, ModelConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    config = ModelConfig(backbone="resnet18", head="glae", max_age=SERVE_MAX_AGE, input_size=64)
    save_model(path, AgeModel(config), {"balanced_trained": True})
    return path


@pytest.fixture(scope="session")
def server(model_file: Path):
    """``python -m glae serve`` in a child process, terminated (killed if need be) at the end."""
    from glae.serve.client import LocalServer

    with LocalServer(["--model", str(model_file), "--device", "cpu", *STRICT_LIMITS]) as running:
        yield running


@pytest.fixture(scope="session")
def two_faces_photo(utk_crops: list[Path]):
    """Two UTKFace crops side by side on a grey canvas (a PIL image)."""
    from PIL import Image

    canvas = Image.new("RGB", (440, 240), (128, 128, 128))
    for index, path in enumerate(utk_crops[:2]):
        canvas.paste(Image.open(path).convert("RGB"), (10 + 220 * index, 20))
    return canvas
