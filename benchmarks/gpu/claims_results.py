"""Evaluate claims runs trained on a GPU, here, on the original test images.

``benchmarks/gpu/utkface_h200.sh`` with a ``RUN_LIST`` of claims runs (docs/claims.md, "On a
GPU") brings back ``NAME.safetensors`` per run and ``runs.tar.gz``. The GPU machine had only
the packed train and validation images, so for each returned model this writes, into
``RESULTS/NAME/``:
  config.yaml, metrics.jsonl   the run's, from runs.tar.gz
  test_metrics.json            ``glae eval`` on the test part of the run config's seeded split
  lt10.json                    the same on its balanced -LT subset (10 faces per age)
after which ``python benchmarks/claims_table.py --results RESULTS`` gives the tables and verdicts.

Usage: python benchmarks/gpu/claims_results.py DEVICE_OUT --data ../shared/data/utkface
       [--results benchmarks/results/claims_gpu]
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from pathlib import Path

from glae.cli import main as glae
from glae.config import load_config
from glae.train import load_samples, make_split

RUNS_IN_ARCHIVE = "runs/utkface_gpu_all"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("device_out", type=Path, help="the folder utkface_h200.sh wrote ($OUT)")
    parser.add_argument("--data", required=True, help="the UTKFace folder")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/claims_gpu"))
    args = parser.parse_args()
    models = sorted(args.device_out.glob("*.safetensors"))
    if not models:
        raise SystemExit(f"no model files in {args.device_out}")
    with tarfile.open(args.device_out / "runs.tar.gz") as archive, tempfile.TemporaryDirectory() as scratch:
        for model in models:
            name, folder = model.stem, args.results / model.stem
            folder.mkdir(parents=True, exist_ok=True)
            for file in ("config.yaml", "metrics.jsonl"):
                member = archive.extractfile(f"{RUNS_IN_ARCHIVE}/{name}/{file}")
                if member is None:
                    raise SystemExit(f"runs.tar.gz has no {name}/{file}")
                (folder / file).write_bytes(member.read())
            # The run trained on packed copies (csv); its split is the seeded split of the originals.
            config = load_config(folder / "config.yaml", [f"data.path={args.data}", "data.format=utkface"])
            index = load_samples(config)
            split = Path(scratch) / f"{name}_split.json"
            split.write_text(json.dumps(make_split(config, index).to_json(index.root)))
            common = ["eval", "--checkpoint", str(model), "--data", args.data, "--format", "utkface",
                      "--split", str(split), "--part", "test", "--workers", "1"]
            for extra, output in (([], "test_metrics.json"), (["--lt", "10"], "lt10.json")):
                if glae([*common, *extra, "--json", str(folder / output)]) != 0:
                    raise SystemExit(f"glae eval failed for {name}")
            print(f"{name}: {folder}")


if __name__ == "__main__":
    main()
