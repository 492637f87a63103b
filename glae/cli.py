"""The ``glae`` command: parse arguments, call the library, report errors in one line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .fileio import atomic_write_text
from .data import DATASET_FORMATS, DatasetError
from .data.images import ImageReadError
from .engine import TrainingDiverged
from .models import BackboneError
from .routing import ROUTING_MODES

USER_ERRORS = (DatasetError, CheckpointError, BackboneError, ImageReadError, ValueError, FileNotFoundError)


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--data", required=required, help="dataset folder or manifest file")
    parser.add_argument("--format", choices=sorted(DATASET_FORMATS), help="dataset layout (default: the config's, else utkface)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glae", description="GLAE facial age estimation")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train both stages, then evaluate on the test split")
    train.add_argument("--config", help="experiment YAML (configs/); defaults apply when omitted")
    _add_data_arguments(train, required=False)
    train.add_argument("--out", required=True, help="run folder; rerunning the same command resumes it")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. stage1.epochs=3")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")

    evaluate = commands.add_parser("eval", help="evaluate a model on a dataset (flip TTA, routing, reports)")
    evaluate.add_argument("--checkpoint", required=True, help="model file (.safetensors) written by glae train")
    _add_data_arguments(evaluate, required=True)
    evaluate.add_argument("--mode", choices=ROUTING_MODES, default=None, help="head choice for the top-level numbers (default: routing when the model has a balanced head)")
    evaluate.add_argument("--split", type=Path, help="a run's split.json: evaluate only one part of it (see --part)")
    evaluate.add_argument("--part", choices=("train", "val", "test"), default="test")
    evaluate.add_argument("--json", type=Path, help="write the report as JSON here")
    evaluate.add_argument("--report", type=Path, help="write Markdown + PNG reports into this folder")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--workers", type=int, default=2)
    evaluate.add_argument("--device", default="auto")
    return parser


def run_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={json.dumps(args.data)}")
    if args.format:
        overrides.append(f"data.format={args.format}")
    config = load_config(args.config, overrides)
    if config.data.path is None:
        raise ValueError("no dataset: pass --data PATH (or set data.path in the config)")
    final = train(config, args.out, show_progress=not args.no_progress)
    print(f"final model: {final}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .checkpoint import load_model
    from .data import Split, load_dataset
    from .data.images import AgeImageDataset
    from .data.transforms import eval_transform
    from .engine import pick_device, predict_views_dataset
    from .evaluate import evaluate_views
    from .reports import markdown_report, write_reports

    device = pick_device(args.device)
    model, info = load_model(args.checkpoint, device)
    heads = ("vanilla", "balanced") if info.get("balanced_trained") else ("vanilla",)
    mode = args.mode or ("routing" if "balanced" in heads else "vanilla")
    index = load_dataset(args.data, args.format or "utkface")
    logging.getLogger(__name__).info(index.summary())
    samples = index.samples
    if args.split is not None:
        samples = getattr(Split.from_json(json.loads(args.split.read_text()), samples, index.root), args.part)
    loader = DataLoader(
        AgeImageDataset(samples, eval_transform(model.config.input_size)),
        batch_size=args.batch_size, num_workers=args.workers,
    )
    channels_last = device.type == "cpu"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    views, ages, stds = predict_views_dataset(model, loader, device, heads, channels_last, show_progress=True)
    report = evaluate_views(views, ages, stds, mode)
    report["checkpoint"] = str(args.checkpoint)
    report["data"] = str(args.data)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    if args.report:
        write_reports(report, args.report)
    print(markdown_report(report).split("\n## ")[0].strip())
    summary = ", ".join(f"{key.upper()} {report[key]:.3f}" for key in ("mae", "cmae", "aar"))
    print(f"{mode}: {summary} on {report['n_images']} images")
    return 0


COMMANDS = {"train": run_train, "eval": run_eval}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except TrainingDiverged as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 3
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
