"""Pick each method's GPU run on validation, then evaluate the picks once on the test part.

Reads what benchmarks/gpu/utkface_h200.sh brought back (RUN.safetensors in fp16 and
runs.tar.gz), and for each method (``glae_*`` and ``base_*`` runs) keeps the learning rate
whose final validation MAE + CMAE is lowest, in the mode that method deploys (Adaptive
Routing for GLAE, the single head for ℓ_base). The rule was fixed before the runs. Only
the two picks are evaluated on the test part, on the original UTKFace files here; the
other runs' test numbers are never computed.

Each pick becomes a run folder under --runs, like one `glae train` writes (config, split,
metrics log, model, test_metrics.json, report), so benchmarks/ship_model.py can ship it.
The split is recomputed from the UTKFace folder with the run's split settings and checked
against the packed train/val lists the GPU run trained on.

Usage: python benchmarks/gpu/select_runs.py DEVICE_OUT --data ../shared/data/utkface
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import torch

from glae.checkpoint import load_model, save_model
from glae.config import dump_config, load_config
from glae.fileio import atomic_write_text
from glae.reports import write_reports
from glae.train import evaluate_model, load_samples, make_split

DEPLOYED_MODE = {"glae": "routing", "base": "vanilla"}
RECIPE = """\
- Training: `bash benchmarks/gpu/utkface_h200.sh` on one NVIDIA H200 (configs/utkface_gpu_{method}.yaml,
  bfloat16 autocast, {clip}): stage 1 {stage1.epochs} epochs at batch {stage1.batch_size},
  learning rate {stage1.lr} (picked on validation by `benchmarks/gpu/select_runs.py` among {candidates}); stage 2
  {stage2.epochs} epochs, backbone frozen, class-balanced sampling.
- To travel to the GPU machine, the train and val images were resized to 128 px and stored as WebP
  (`benchmarks/gpu/pack_utkface.py`); the test images are the original files, evaluated here.
"""


def final_val(run: Path, mode: str) -> dict[str, float]:
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return last["val"][mode]


def stems(paths: list[str]) -> list[str]:
    return sorted(Path(p).name.split(".")[0] for p in paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("device_out", type=Path, help="the folder utkface_h200.sh wrote ($OUT)")
    parser.add_argument("--data", required=True, help="the UTKFace folder")
    parser.add_argument("--runs", type=Path, default=Path("runs/utkface_gpu"), help="where the picked run folders go")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/utkface_gpu.json"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp())
    with tarfile.open(args.device_out / "runs.tar.gz") as archive:
        archive.extractall(workdir, filter="data")
    device_runs = workdir / "runs" / "utkface_gpu_all"
    summary: dict = {"rule": "lowest final val MAE + CMAE in the deployed mode", "runs": {}, "picked": {}}
    for method, mode in DEPLOYED_MODE.items():
        candidates = [run for run in sorted(device_runs.glob(f"{method}_*")) if (args.device_out / f"{run.name}.safetensors").exists()]
        if not candidates:
            raise SystemExit(f"no finished {method} run in {args.device_out}")
        for run in candidates:
            summary["runs"][run.name] = {"val": final_val(run, mode), "mode": mode}
        pick = min(candidates, key=lambda run: sum(final_val(run, mode).values()))
        summary["picked"][method] = pick.name
        summary["runs"][pick.name]["test"] = publish(pick, args, method, mode, [run.name for run in candidates])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2))
    for name, result in summary["runs"].items():
        test = result.get("test")
        line = f"{name:18s} val MAE {result['val']['mae']:.3f} CMAE {result['val']['cmae']:.3f}"
        print(line + (f"  -> picked; test MAE {test['mae']:.3f} CMAE {test['cmae']:.3f}" if test else ""))
    shutil.rmtree(workdir)


def publish(device_run: Path, args: argparse.Namespace, method: str, mode: str, candidates: list[str]) -> dict[str, float]:
    """Make a local run folder (--runs/METHOD) for a picked run and evaluate it on the test part."""
    config = load_config(device_run / "config.yaml", [f"data.path={args.data}", "data.format=utkface", "data.num_workers=2"])
    index = load_samples(config)
    split = make_split(config, index)
    packed = json.loads((device_run / "split.json").read_text())
    for part in ("train", "val"):
        if stems(packed[part]) != stems([s.path.name for s in getattr(split, part)]):
            raise SystemExit(f"{device_run.name}: its {part} images are not this split's {part} part")
    out = args.runs / method
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "train.log"):
        shutil.copy(device_run / name, out / name)
    atomic_write_text(out / "config.yaml", dump_config(config))
    atomic_write_text(out / "split.json", json.dumps(split.to_json(index.root), indent=1))
    model, info = load_model(args.device_out / f"{device_run.name}.safetensors")
    info = {**info, "data_format": "utkface", "trained_on": "UTKFace train part packed by benchmarks/gpu/pack_utkface.py (128 px WebP)"}
    save_model(out / "model.safetensors", model, info, half=True)
    atomic_write_text(out / "recipe.md", RECIPE.format(
        candidates=", ".join(candidates), stage1=config.stages[0], stage2=config.stages[1], method=method,
        clip=f"gradient-norm clip {config.clip_grad_norm}" if config.clip_grad_norm else "no gradient clipping",
    ))
    report = evaluate_model(model, split.test, config, torch.device("cpu"), mode)
    report["checkpoint"] = str(out / "model.safetensors")
    report["data"] = str(index.root)
    atomic_write_text(out / "test_metrics.json", json.dumps(report, indent=2))
    write_reports(report, out / "report")
    return {"mae": report["mae"], "cmae": report["cmae"]}


if __name__ == "__main__":
    main()
