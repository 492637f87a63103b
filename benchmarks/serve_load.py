"""Load test of ``glae serve`` on the loopback interface: latency percentiles, throughput, errors.

Sends ``--requests`` uploads of one real photo, ``--concurrency`` at a time, to
``POST /api/predict`` and prints p50/p95/p99 latency, requests/s and the error count
(anything but 200; it should be 0 while concurrency <= workers + queue). Without
``--url`` it starts a server itself (``--model``, or a tiny random ResNet-18 at 64 px
when omitted, which measures the serving path with MTCNN and a small model).
Not part of CI: it occupies the CPU for minutes.

Usage: python benchmarks/serve_load.py [--url http://127.0.0.1:8000 | --model M.safetensors]
       [--requests 500] [--concurrency 16] [--workers 2] [--image ../shared/data/utkface/X.jpg]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from glae.checkpoint import save_model
from glae.models import AgeModel, ModelConfig
from glae.serve.client import LocalServer, post_image

UTKFACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface"


def _tiny_model(folder: Path) -> Path:
    torch.manual_seed(0)
    path = folder / "tiny.safetensors"
    save_model(path, AgeModel(ModelConfig(backbone="resnet18", head="glae", max_age=116, input_size=64)), {"balanced_trained": True})
    return path


def _timed_post(url: str, data: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    try:
        status = post_image(url, data, timeout=120)[0]
    except OSError:  # refused, reset or timed out: an error all the same
        status = 0
    return time.perf_counter() - started, status


def load_test(url: str, data: bytes, requests: int, concurrency: int) -> dict:
    """Latency percentiles (ms), requests/s and the status of every failed request."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as clients:
        results = list(clients.map(lambda _: _timed_post(url + "/api/predict", data), range(requests)))
    elapsed = time.perf_counter() - started
    latencies_ms = np.array([seconds for seconds, _ in results]) * 1000
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    failed = Counter(status for _, status in results if status != 200)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(requests / elapsed, 2),
        "latency_ms": {name: round(float(value), 1) for name, value in zip(("p50", "p95", "p99", "mean"), (p50, p95, p99, latencies_ms.mean()))},
        "errors": sum(failed.values()),
        "error_statuses": dict(failed),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a running server; default: start one on a free loopback port")
    parser.add_argument("--model", help="model for the server started here (default: a tiny random one)")
    parser.add_argument("--workers", type=int, default=2, help="inference threads of the server started here")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--image", type=Path, help="photo to send (default: the first UTKFace crop)")
    args = parser.parse_args()
    image = args.image or min(UTKFACE.glob("*.jpg"))
    data = image.read_bytes()
    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            model = args.model or _tiny_model(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            url = stack.enter_context(LocalServer(["--model", str(model), "--workers", str(args.workers)])).url
        url = url.rstrip("/")
        post_image(url + "/api/predict", data)  # warm-up: first-call allocations are not load
        report = load_test(url, data, args.requests, args.concurrency)
    report["image"] = str(image)
    print(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
