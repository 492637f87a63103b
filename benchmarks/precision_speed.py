"""Cheaper inference arithmetic for more ensemble members? Speed and accuracy of four ways to run a model.

Issue #13 bounds a shipped model by size and by CPU speed (0.8x the GPU Lite0's images/s), and
averaging more members is what would make it better (docs/better_model.md, "Session 27"). Each
model file runs routed at batch 32 (image + mirror, both heads) in: torch float32 (what ``glae
predict`` does), torch bfloat16 autocast, onnxruntime float32 (the ``glae export`` file), and
onnxruntime int8 (that file statically quantized: QDQ, per-channel weights, min-max activation
ranges from ``--calibration-faces`` training faces). Rounds are interleaved and each way keeps its
best, as in ``model_speed.py``; run it on an otherwise idle machine. With ``--split``, the
validation MAE / CMAE of the two onnxruntime files are reported as well: int8 activations round
what the network computes, not only its weights.

    python benchmarks/precision_speed.py runs/better_model/lite0_shipped_before_pair.safetensors \
        glae/weights/glae_utkface.safetensors --split runs/better_model/lite2_flip12/split.json \
        --json benchmarks/results/better_model/precision_speed.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch.utils.data import DataLoader

from glae.checkpoint import load_model
from glae.data import AgeSample, Split, load_dataset
from glae.data.images import AgeImageDataset
from glae.data.transforms import eval_transform
from glae.export import export_onnx
from glae.inference_backends import PRECISIONS, TorchRoutedPredictor
from glae.metrics import summarize
from glae.models.pair import InferenceModel
from glae.models.routed import INPUT_NAME
from glae.routing import routing_mode

BATCH = 32


def face_tensors(model: InferenceModel, samples: list[AgeSample]) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` as the model reads them (``[N, 3, S, S]`` normalized), and their ages."""
    dataset = AgeImageDataset(samples, eval_transform(model.config.input_size, model.normalization))
    batches = list(DataLoader(dataset, batch_size=64))
    return np.concatenate([b[0].numpy() for b in batches]), np.concatenate([b[1].numpy() for b in batches]).astype(float)


class _Faces(CalibrationDataReader):
    def __init__(self, faces: np.ndarray) -> None:
        self.batches = iter(faces[i:i + BATCH] for i in range(0, len(faces), BATCH))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def onnx_files(model: InferenceModel, info: dict[str, Any], folder: Path, calibration: np.ndarray) -> dict[str, Path]:
    """The model's ``glae export`` file and its int8 quantization, written into ``folder`` (new)."""
    folder.mkdir()
    fp32, int8 = folder / "float32.onnx", folder / "int8.onnx"
    export_onnx(model, fp32, info)
    quantize_static(str(fp32), str(int8), _Faces(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"onnxruntime float32": fp32, "onnxruntime int8": int8}


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def images_per_second(run: Callable[[], Any], steps: int = 4) -> float:
    run()  # warm-up: kernels are chosen on the first call
    started = time.perf_counter()
    for _ in range(steps):
        run()
    return BATCH * steps / (time.perf_counter() - started)


def validation(onnx: ort.InferenceSession, faces: np.ndarray, ages: np.ndarray) -> dict[str, Any]:
    predicted = np.concatenate([onnx.run(["age"], {INPUT_NAME: faces[i:i + 64]})[0] for i in range(0, len(faces), 64)])
    summary = summarize(ages, predicted, None)
    return {"mae": round(summary["mae"], 3), "cmae": round(summary["cmae"], 3),
            "bias": {label: round(group["bias"], 2) for label, group in summary["groups"].items() if group["n"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+", help="model files (.safetensors)")
    parser.add_argument("--split", type=Path, required=True, help="split.json: int8 calibrates on its train part; validation accuracy on its val part")
    parser.add_argument("--data", default="../shared/data/utkface")
    parser.add_argument("--format", default="utkface", help="the dataset format the models were trained on")
    parser.add_argument("--calibration-faces", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)

    index = load_dataset(args.data, args.format)
    split = Split.from_json(json.loads(args.split.read_text()), index.samples, index.root)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        runners: dict[str, dict[str, Callable[[], Any]]] = {}
        for path in args.models:
            model, info = load_model(path)
            calibration, _ = face_tensors(model, split.train[: args.calibration_faces])
            files = onnx_files(model, info, Path(folder) / str(len(rows)), calibration)
            sessions = {way: session(file) for way, file in files.items()}
            faces, ages = face_tensors(model, split.val)
            rows[str(path)] = {"validation": {way: validation(onnx, faces, ages) for way, onnx in sessions.items()}, "images_per_s": {}}
            images = torch.randn(BATCH, 3, model.config.input_size, model.config.input_size)
            torch_ways = {f"torch {precision}": TorchRoutedPredictor(model, routing_mode(info), precision) for precision in PRECISIONS}
            feed = {INPUT_NAME: images.numpy()}
            runners[str(path)] = {
                **{way: (lambda predictor=predictor, images=images: predictor.predict_routed(images)) for way, predictor in torch_ways.items()},
                **{way: (lambda onnx=onnx, feed=feed: onnx.run(None, feed)) for way, onnx in sessions.items()},
            }
        for _ in range(args.rounds):
            for name, ways in runners.items():
                for way, run in ways.items():
                    best = rows[name]["images_per_s"]
                    best[way] = round(max(best.get(way, 0.0), images_per_second(run)), 1)
    for name, row in rows.items():
        print(name, json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "batch": BATCH, "rounds": args.rounds, "models": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
