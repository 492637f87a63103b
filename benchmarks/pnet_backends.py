"""Can P-Net and its pyramid run faster on this CPU? Each way against today's, in one run.

P-Net over the image pyramid is most of MTCNN's cost per photo (docs/detect_speed.md). This
times the pyramid and P-Net of one 640x480 photo at ``min_face_size`` 20. Each way takes
its turn in every round, and the median is kept:
  pyramid/direct    every level an area average of the photo (today's)
  pyramid/chained   each level an area average of the one before (cheaper, changes P-Net's input)
  pnet/fp32         channels-last float32 (today's), the baseline for the rows below
  pnet/bf16         under CPU bfloat16 autocast
  pnet/onnxruntime  exported to ONNX, run by onnxruntime's CPU provider
  pnet/int8         static int8 quantization (torch.ao FX, x86 backend, calibrated on the levels)
It also reports each way's largest face-probability difference from float32 on the first level.

    OMP_NUM_THREADS=1 python benchmarks/pnet_backends.py --json benchmarks/results/pnet_backends.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from glae.faces.mtcnn import MTCNNDetector, _normalize


def pyramid(photo: torch.Tensor, chained: bool, min_face: int = 20, factor: float = 0.709) -> list[torch.Tensor]:
    height, width = photo.shape[-2:]
    scale, levels, source = 12 / min_face, [], photo
    while min(height, width) * scale >= 12:
        level = F.interpolate(source, size=(math.ceil(height * scale), math.ceil(width * scale)), mode="area")
        levels.append(level)
        source = level if chained else photo
        scale *= factor
    return levels


def milliseconds(work: Callable[[], object], repeats: int) -> float:
    work()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - started) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    pnet = MTCNNDetector().pnet
    photo = torch.rand(1, 3, 480, 640) * 255
    levels = [_normalize(level).contiguous(memory_format=torch.channels_last) for level in pyramid(photo, chained=False)]

    ways: dict[str, Callable[[], object]] = {
        "pyramid/direct": lambda: pyramid(photo, chained=False),
        "pyramid/chained": lambda: pyramid(photo, chained=True),
        "pnet/fp32": lambda: [pnet(level) for level in levels],
    }
    first: dict[str, torch.Tensor] = {"pnet/fp32": pnet(levels[0])[0]}

    def bf16(level: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return pnet(level)[0].float()

    ways["pnet/bf16"] = lambda: [bf16(level) for level in levels]
    first["pnet/bf16"] = bf16(levels[0])
    try:
        import onnxruntime

        plain = copy.deepcopy(pnet).to(memory_format=torch.contiguous_format)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "pnet.onnx"
            torch.onnx.export(plain, (levels[0].contiguous(),), str(path), input_names=["x"], output_names=["p", "o"],
                              dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}}, dynamo=False)
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = torch.get_num_threads()
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        arrays = [level.contiguous().numpy() for level in levels]
        ways["pnet/onnxruntime"] = lambda: [session.run(None, {"x": array}) for array in arrays]
        first["pnet/onnxruntime"] = torch.from_numpy(session.run(None, {"x": arrays[0]})[0])
    except ImportError:
        pass
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    prepared = prepare_fx(copy.deepcopy(pnet), get_default_qconfig_mapping("x86"), example_inputs=(levels[0],))
    for level in levels:
        prepared(level)
    quantized = convert_fx(prepared)
    ways["pnet/int8"] = lambda: [quantized(level) for level in levels]
    first["pnet/int8"] = quantized(levels[0])[0]

    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, work in ways.items():
            times[name].append(milliseconds(work, args.repeats))
    result = {"threads": torch.get_num_threads(), "rounds": args.rounds, "ways": {}}
    for name, samples in times.items():
        median = statistics.median(samples)
        baseline = statistics.median(times["pyramid/direct" if name.startswith("pyramid") else "pnet/fp32"])
        entry = {"ms": median, "vs_today": median / baseline}
        if name in first:
            entry["max_prob_diff"] = float((first[name].float() - first["pnet/fp32"]).abs().max())
        result["ways"][name] = entry
        print(f"{name:18s} {median:7.1f} ms  {median / baseline:5.2f}x today's time"
              + (f"  max |p - p_fp32| {entry['max_prob_diff']:.2g}" if "max_prob_diff" in entry else ""))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    with torch.no_grad():
        main()
