"""The ``glae`` command: parse arguments, call the library, report errors in one line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .checkpoint import CheckpointError
from .config import MAX_BATCH_SIZE, check_device
from .data import DATASET_FORMATS, AgeSample, CsvColumns, DatasetError, read_split_file
from .engine import TrainingDiverged
from .errors import MissingExtraError
from .export import DEFAULT_OPSET
from .fileio import atomic_write_text
from .models import BackboneError
from .predict_options import FACE_FINDING, PredictOptions
from .routing import ROUTING_MODES
from .serve import ServeSettings
from .typed import parse_json

if TYPE_CHECKING:
    from .evaluate import InferencePass

USER_ERRORS = (BackboneError, MissingExtraError, ValueError, OSError)  # every glae data, image and model error is a ValueError


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--data", required=required, help="dataset folder or manifest file")
    parser.add_argument("--format", choices=sorted(DATASET_FORMATS), help="dataset layout (default: the config's for train and for calibrate --config; else the model's training data)")


def _add_model_pass_arguments(parser: argparse.ArgumentParser) -> None:
    """What eval, calibrate and teach share: columns of a csv manifest, and how the model goes over the faces."""
    parser.add_argument("--csv-column", dest="csv_columns", action="append", default=[], metavar="FIELD=NAME", help="format csv: read FIELD (path, age, std, subject, split) from column NAME, e.g. age=real_age")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glae", description="GLAE facial age estimation")
    parser.add_argument("--version", action="version", version=f"glae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train every stage of a config, then evaluate on the test split")
    train.add_argument("--config", help="experiment YAML (configs/); defaults apply when omitted")
    _add_data_arguments(train, required=False)
    train.add_argument("--out", required=True, help="run folder; rerunning the same command resumes it")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. stage1.epochs=3")
    train.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")

    plan = commands.add_parser("plan", help="start or resume, in the background, every unfinished run of a plan file")
    plan.add_argument("plan", metavar="PLAN", help="plan YAML (benchmarks/plans/); rerunning it is harmless")
    plan.add_argument("--status", action="store_true", help="print where each run stands and exit")
    plan.add_argument("--foreground", action="store_true", help="train in this process instead of in the background")

    evaluate = commands.add_parser("eval", help="evaluate a model on a dataset (flip TTA, routing, reports)")
    evaluate.add_argument("--checkpoint", help="model file (.safetensors) written by glae train; default: the shipped model")
    _add_data_arguments(evaluate, required=True)
    _add_model_pass_arguments(evaluate)
    evaluate.add_argument("--mode", choices=ROUTING_MODES, default=None, help="head choice for the top-level numbers (default: routing when the model has a balanced head)")
    evaluate.add_argument("--split", type=Path, help="a run's split.json: evaluate only one part of it (see --part)")
    evaluate.add_argument("--part", choices=("train", "val", "test"), help="with --split: the part to evaluate (default: test)")
    evaluate.add_argument("--lt", type=int, metavar="N", help="evaluate the balanced long-tail subset instead: N images per age (ages with fewer are dropped)")
    evaluate.add_argument("--lt-seed", type=int, default=0)
    evaluate.add_argument("--json", type=Path, help="write the report as JSON here")
    evaluate.add_argument("--report", type=Path, help="write Markdown + PNG reports into this folder")

    calibrate = commands.add_parser("calibrate", help="fit a model's 90%% interval on faces it never trained on (a validation part)")
    calibrate.add_argument("--checkpoint", help="model file (.safetensors); default: the shipped model")
    _add_data_arguments(calibrate, required=True)
    _add_model_pass_arguments(calibrate)
    calibrate.add_argument("--split", type=Path, help="the split.json of the run that trained the model")
    calibrate.add_argument("--config", help="instead of --split: the config whose seeded split the model was trained on")
    calibrate.add_argument("--part", choices=("val", "test", "train"), default="val", help="the part to fit on (default: val; never the part you report)")
    calibrate.add_argument("--out", type=Path, required=True, help="the calibrated model file to write (the input is never changed)")

    pair = commands.add_parser("pair", help="two trained models as one: the first reads each image, the second its mirror image")
    pair.add_argument("first", type=Path, metavar="FIRST", help="model file (.safetensors) run on the image")
    pair.add_argument("second", type=Path, metavar="SECOND", help="model file (.safetensors) run on the mirror image")
    pair.add_argument("--out", type=Path, required=True, help="the pair's model file to write; calibrate its interval next (glae calibrate)")
    pair.add_argument("--half", action="store_true", help="store float16 weights (half the file size, as the shipped model)")

    teach = commands.add_parser("teach", help="distillation targets: several models' mean distribution of each training face (stages.N.distill_from)")
    teach.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="model files (.safetensors), each trained on the train part of --split only "
                       "(with --held-out: RUN/model.safetensors of runs with data.train_folds); an earlier glae teach file counts as one teacher of the faces it holds")
    _add_data_arguments(teach, required=True)
    _add_model_pass_arguments(teach)
    teach.add_argument("--split", type=Path, required=True, help="the split.json whose train part the student will train on")
    teach.add_argument("--out", type=Path, required=True, help="the targets file to write (.safetensors: tensors and image names, no code)")
    teach.add_argument("--held-out", action="store_true", help="each face's target averages only the models that never trained on it "
                       "(their run folder's split.json says which they did); every face needs one")
    teach.add_argument("--partial", action="store_true", help="write only the faces that have a teacher, e.g. one fold's held-out labels, "
                       "to merge with the other folds' files by a later glae teach")

    align = commands.add_parser("align", help="detect and align every face of a dataset into a folder of the same format")
    align.add_argument("source", metavar="SRC", help="dataset folder or manifest file")
    align.add_argument("destination", metavar="DST", help="output folder; rerunning skips crops already there")
    align.add_argument("--format", choices=sorted(DATASET_FORMATS), default="utkface", help="dataset layout (default: utkface)")
    align.add_argument("--workers", type=int, default=2, help="detection processes (0: this process)")
    align.add_argument("--size", type=int, default=224, help="aligned crop side in pixels")
    PredictOptions.add_arguments(align, FACE_FINDING)
    align.add_argument("--no-progress", action="store_true", help="no progress bar")

    predict = commands.add_parser("predict", help="ages of the faces in photos")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or globs")
    predict.add_argument("--model", help="model file (.safetensors) or ONNX export (.onnx); default: the model shipped with GLAE")
    output = predict.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON: [{file, faces: [{box, age, ...}], error}]")
    output.add_argument("--jsonl", action="store_true", help="print JSON Lines, one {file, faces, error} per photo as it is done (large runs)")
    output.add_argument("--csv", action="store_true", help="print CSV, one row per face")
    predict.add_argument("--annotate", type=Path, metavar="DIR", help="write copies with boxes, landmarks and ages here")
    predict.add_argument("--aligned", action="store_true", help="inputs are aligned face crops: skip detection")
    PredictOptions.add_arguments(predict)

    export = commands.add_parser("export", help="export a model to ONNX, both heads and routing in the graph")
    export.add_argument("--onnx", required=True, type=Path, help="ONNX file to write")
    export.add_argument("--model", help="model file (.safetensors); default: the model shipped with GLAE")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, {DEFAULT_OPSET} or newer (default {DEFAULT_OPSET}: the oldest, for the most runtimes)")

    serve = commands.add_parser("serve", help="a web page and a JSON API (POST /api/predict) for the ages in photos")
    serve.add_argument("--model", help="model file (.safetensors) or ONNX export (.onnx); default: the model shipped with GLAE")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=ServeSettings.max_upload_mb, help="largest upload (413 above)")
    serve.add_argument("--max-pixels", type=int, default=ServeSettings.max_pixels, help="largest image in pixels (422 above)")
    serve.add_argument("--max-faces", type=int, default=ServeSettings.max_faces, help="faces estimated per photo, the largest first")
    serve.add_argument("--timeout", type=float, default=ServeSettings.timeout_s, help="seconds per request (504 after)")
    serve.add_argument("--workers", type=int, default=ServeSettings.workers, help="inference threads")
    serve.add_argument("--queue", type=int, default=ServeSettings.queue, help="requests waiting for a worker before 503")
    serve.add_argument("--header-timeout", type=float, default=ServeSettings.header_timeout_s, help="seconds a connection may take to send its request headers")
    serve.add_argument("--max-connections", type=int, default=ServeSettings.max_connections, help="open connections; one more gets 503 and is closed")
    PredictOptions.add_arguments(serve)
    return parser


def _check_output_folder(path: str | Path, flag: str) -> None:
    """Fail before the work, not after it, when an output folder's place is taken by a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is an existing file, not a folder; choose another path")
    _check_parents(path, flag)


def _check_output_file(path: Path, flag: str, inputs: Sequence[str | Path | None] = ()) -> None:
    """Fail before the work when an output file's place is taken by a folder or by one of the command's inputs."""
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    for source in inputs:
        if source is not None and Path(source).resolve() == path.resolve():
            raise ValueError(f"{flag} {path} is one of this command's inputs: writing it would destroy it; choose another path")
    _check_parents(path, flag)


def _check_parents(path: Path, flag: str) -> None:
    """No file may stand where one of ``path``'s folders has to be created."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
            return


def run_train(args: argparse.Namespace) -> int:
    from .config import load_config

    try:
        from .train import train
    except ImportError as missing:
        raise MissingExtraError(f"glae train needs {missing.name}: pip install 'glae[train]'") from None

    _check_output_folder(args.out, "--out")
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


def run_plan(args: argparse.Namespace) -> int:
    from .plan import describe, execute, load_plan, start_in_background

    if args.status:
        print(describe(load_plan(args.plan)))
        return 0
    if args.foreground:
        return 1 if execute(load_plan(args.plan)) else 0
    print(start_in_background(args.plan))
    return 0


def _check_model_pass_arguments(args: argparse.Namespace) -> None:
    """Everything eval, calibrate and teach can refuse without reading a model or a dataset."""
    if args.split is not None and not args.split.is_file():
        raise ValueError(f"--split {args.split} does not exist; pass the split.json of the run that trained the model")
    check_device(args.device)
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"--batch-size must be in 1..{MAX_BATCH_SIZE}, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    _csv_columns(args.csv_columns)


def _check_eval_arguments(args: argparse.Namespace, checkpoint: Path) -> None:
    if args.part is not None and args.split is None:
        raise ValueError(f"--part {args.part} needs --split RUN/split.json (the run's split); without it every image is evaluated")
    if args.lt is not None and args.lt < 1:
        raise ValueError(f"--lt must be at least 1 face per age, got {args.lt}")
    _check_model_pass_arguments(args)
    if args.json is not None:
        _check_output_file(args.json, "--json", (checkpoint, args.data, args.split))
        if args.json.exists() and not _is_eval_report(args.json):
            raise ValueError(f"--json {args.json} exists and is not a glae eval report, so it is not replaced; choose another path")
    if args.report is not None:
        from .reports import require_figures

        require_figures()
        _check_output_folder(args.report, "--report")
        report_files = [args.report / name for name in ("report.md", "report.json", "per_age.png", "routing.png")]
        if any(path.exists() for path in report_files) and not _is_eval_report(args.report / "report.json"):
            raise ValueError(f"--report {args.report} holds report files that glae eval did not write (no report.json of its own), "
                             "so they are not replaced; choose another folder")


def _is_eval_report(path: Path) -> bool:
    """Whether ``path`` is a JSON report ``glae eval`` wrote, which a new evaluation may replace."""
    try:
        report = parse_json(path.read_text())
    except (OSError, ValueError):  # ValueError: not UTF-8, or not JSON
        return False
    return isinstance(report, dict) and {"mode", "mae", "n_images"} <= report.keys()


def _csv_columns(pairs: list[str]) -> CsvColumns:
    """``--csv-column FIELD=NAME`` pairs as the column names of a csv manifest."""
    fields = {field.name for field in dataclasses.fields(CsvColumns)}
    renamed = {}
    for pair in pairs:
        label, _, name = pair.partition("=")
        if label not in fields or not name:
            raise ValueError(f"--csv-column expects FIELD=NAME with FIELD one of {', '.join(sorted(fields))}, got {pair!r}")
        renamed[label] = name
    return CsvColumns(**renamed)


def _faces(args: argparse.Namespace, info: dict[str, Any], part: str | None) -> list[AgeSample]:
    """The faces eval, calibrate or teach go over: the dataset at --data, or one part of its split.

    The split is the run's split.json (--split) or, for calibrate, the seeded split a config
    gives (--config); without either, every face (eval only).
    """
    from .config import load_config
    from .data import Split, load_dataset, split_dataset
    from .data.images import readable_samples

    config = load_config(args.config, [f"data.format={args.format}"] if args.format else []) if getattr(args, "config", None) else None
    data_format = args.format or (config.data.format if config else info.get("data_format", "utkface"))
    csv_columns = _csv_columns(args.csv_columns) if args.csv_columns or config is None else config.data.csv_columns
    index = load_dataset(args.data, data_format, csv_columns)
    logging.getLogger(__name__).info(index.summary())
    if args.split is not None:
        samples = list(getattr(Split.from_json(read_split_file(args.split, "--split"), index.samples, index.root), part or "test"))
    elif config is not None:
        samples = list(getattr(split_dataset(index.samples, config.data), part or "test"))
    else:
        samples = index.samples
    samples, problems = readable_samples(samples)  # as training does, so a run's split.json scores the same faces
    for problem in problems:
        logging.getLogger(__name__).warning("skipped: %s", problem)
    return samples


def _warn_beyond_model_range(samples: list[AgeSample], max_age: int) -> None:
    """Faces older than the model's last age class are scored as they are, but the user should know."""
    too_old = [sample for sample in samples if sample.age > max_age]
    if too_old:
        logging.getLogger(__name__).warning(
            "%d face(s) are older than this model's oldest age (%d), e.g. %s (age %g): it cannot predict their age",
            len(too_old), max_age, too_old[0].path, too_old[0].age)


def run_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .data import balanced_test_subset
    from .evaluate import evaluate_samples
    from .estimator import resolve_model_path
    from .reports import markdown_report, write_reports
    from .routing import routing_mode

    checkpoint = resolve_model_path(args.checkpoint)
    _check_eval_arguments(args, checkpoint)
    run = _inference_pass(args)
    model, info = load_model(checkpoint, run.device)
    samples = _faces(args, info, args.part)
    _warn_beyond_model_range(samples, model.config.max_age)
    if args.lt is not None:
        samples = balanced_test_subset(samples, args.lt, seed=args.lt_seed)
    if not samples:
        raise ValueError("nothing to evaluate: the selected part (or its -LT subset) is empty")
    mode = args.mode or routing_mode(info)
    if mode != "vanilla" and routing_mode(info) == "vanilla":
        raise ValueError(f"--mode {mode} needs a balanced head (trained by a balanced stage); {checkpoint} has only the vanilla head")
    report = evaluate_samples(model, samples, mode, run, routing_mode(info))
    report["checkpoint"] = str(checkpoint)
    report["data"] = str(args.data)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    if args.report:
        write_reports(report, args.report)
    print(markdown_report(report).split("\n## ")[0].strip())
    summary = ", ".join(f"{key.upper()} {report[key]:.3f}" for key in ("mae", "cmae", "aar"))
    print(f"{mode}: {summary} on {report['n_images']} images")
    return 0


def _check_model_out(out: Path, command: str, inputs: Sequence[str | Path | None] = ()) -> None:
    """``--out`` of calibrate and pair may replace the command's own earlier output, nothing else.

    Any other model file may be hours of training (a run's ``model.safetensors``), so it is
    refused as firmly as a file that is no model at all.
    """
    from .checkpoint import read_model_metadata
    from .estimator import default_model_path

    _check_output_file(out, "--out", inputs)
    if not out.exists():
        return
    if out.resolve() == default_model_path().resolve():
        raise ValueError(f"--out {out} is the model shipped with GLAE, so it is not replaced; write to a new file")
    try:
        info = read_model_metadata(out)["info"]
    except CheckpointError as error:
        raise ValueError(f"--out {out} exists and is not a GLAE model file, so it is not replaced; choose another path or remove it ({error})") from None
    own = "calibrated_on" in info if command == "calibrate" else "pair_of" in info and "calibrated_on" not in info
    if not own:
        raise ValueError(f"--out {out} is a GLAE model that glae {command} did not write, so it is not replaced; choose another path")


def run_calibrate(args: argparse.Namespace) -> int:
    from .calibration import IntervalCalibration
    from .checkpoint import load_model, save_model, stores_half
    from .estimator import resolve_model_path
    from .evaluate import calibrate_samples
    from .routing import routing_mode

    if (args.split is None) == (args.config is None):
        raise ValueError("give the part to fit on with --split RUN/split.json or --config CONFIG (its seeded split)")
    _check_model_pass_arguments(args)
    checkpoint = resolve_model_path(args.checkpoint)
    if args.out.resolve() == checkpoint.resolve():
        raise ValueError(f"--out {args.out} is the model itself; write the calibrated model to a new file")
    _check_model_out(args.out, "calibrate", (args.data, args.split, args.config))
    run = _inference_pass(args)
    model, info = load_model(checkpoint, run.device)
    samples = _faces(args, info, args.part)
    if not samples:
        raise ValueError(f"the {args.part} part is empty: nothing to fit the interval on")
    _warn_beyond_model_range(samples, model.config.max_age)
    calibration: IntervalCalibration = calibrate_samples(model, samples, routing_mode(info), run)
    model.calibration = calibration
    save_model(args.out, model, {**info, "calibrated_on": f"{args.part} part, {calibration.faces} faces"}, half=stores_half(checkpoint))
    print(f"90% interval: temperature {calibration.temperature:.3f} covers {calibration.coverage:.1%} of "
          f"{calibration.faces} {args.part} faces; wrote {args.out}")
    return 0


def run_teach(args: argparse.Namespace) -> int:
    from .checkpoint import read_model_metadata
    from .data import Split
    from .distill import eval_faces_digest, is_teacher_file, read_teacher_names, save_teacher_targets, teacher_distributions

    _check_model_pass_arguments(args)
    _check_output_file(args.out, "--out", (args.data, args.split, *args.models))
    if args.out.exists():
        try:
            read_teacher_names(args.out)
        except DatasetError as error:
            raise ValueError(f"--out {args.out} exists and is not a glae teach file, so it is not replaced ({error})") from None
    # The dataset is read once, in the format the first model records: every teacher labels the same faces.
    models = [path for path in args.models if not is_teacher_file(path)]
    samples = _faces(args, read_model_metadata(models[0])["info"] if models else {}, "train")
    names = Split(samples).to_json(Path(args.data).expanduser())["train"]
    student = read_split_file(args.split, "--split")
    eval_faces = {*student.get("val", []), *student.get("test", [])}
    rows, probabilities = teacher_distributions(args.models, samples, names, _inference_pass(args), args.held_out,
                                                eval_faces, args.partial)
    save_teacher_targets(args.out, [names[row] for row in rows], probabilities, [str(path) for path in args.models],
                         eval_faces_digest(eval_faces))
    count = len(args.models)
    teachers = f"the {count} teacher{'s' if count > 1 else ''}" + (", each face by the models that never trained on it," if args.held_out else "")
    print(f"wrote the mean distribution of {teachers} for {len(rows)} of {len(names)} training faces to {args.out}")
    return 0


def _inference_pass(args: argparse.Namespace) -> InferencePass:
    """How eval, calibrate and teach run a model over faces: --device, --batch-size, --workers."""
    from .devices import pick_device
    from .evaluate import InferencePass

    device = pick_device(args.device)
    return InferencePass(device, args.batch_size, args.workers, channels_last=device.type == "cpu", show_progress=True)


def run_pair(args: argparse.Namespace) -> int:
    from .checkpoint import load_model, save_model
    from .models import AgeModel, ModelPair
    from .routing import routing_mode

    for flag, path in (("FIRST", args.first), ("SECOND", args.second)):
        if args.out.resolve() == path.resolve():
            raise ValueError(f"--out {args.out} is {flag} itself; write the pair to a new file")
    _check_model_out(args.out, "pair")
    (first, first_info), (second, second_info) = load_model(args.first), load_model(args.second)
    if not (isinstance(first, AgeModel) and isinstance(second, AgeModel)):
        raise ValueError("FIRST or SECOND is already a pair; pair two single models")
    if routing_mode(first_info) != routing_mode(second_info):
        raise ValueError("one model has a trained balanced head and the other not; pair two models trained through the same stages")
    pair = ModelPair(first, second)
    info = {
        "balanced_trained": bool(first_info.get("balanced_trained")),
        "data_format": first_info.get("data_format", "utkface"),
        "pair_of": [{"file": str(args.first), **first_info}, {"file": str(args.second), **second_info}],
    }
    save_model(args.out, pair, info, half=args.half)
    print(f"model pair ({routing_mode(info)} mode, uncalibrated interval): {args.out}")
    return 0


def run_align(args: argparse.Namespace) -> int:
    from .faces.align_dataset import REPORT_NAME, align_dataset

    options = PredictOptions.from_arguments(args, FACE_FINDING)
    report = align_dataset(
        args.source, args.destination, args.format, args.workers, args.size, options.margin, options.detector,
        show_progress=not args.no_progress, face_filter=options.face_filter,
    )
    counts = report["counts"]
    print(
        f"aligned {counts['aligned']} ({counts['several_faces']} with several faces, largest kept), "
        f"{counts['already_aligned']} already aligned, {counts['no_face']} without a face, "
        f"{counts['unreadable']} unreadable, {counts['failed']} failed, {counts['not_in_dataset']} not in the dataset; "
        f"report: {Path(args.destination) / REPORT_NAME}"
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .estimator import AgeEstimator
    from .imageformats import expand_image_paths
    from .predict_output import AnnotatedCopies, CsvOutput, JsonLinesOutput, JsonOutput, TableOutput, check_annotate_folder, write_predictions

    options = PredictOptions.from_arguments(args)
    paths = expand_image_paths(args.paths, skip_folder=args.annotate)
    if not paths:
        raise ValueError(f"no image files found in {', '.join(args.paths)}; give image files, folders holding images, or globs")
    if args.annotate:
        _check_output_folder(args.annotate, "--annotate")
        check_annotate_folder(args.annotate, paths)
    estimator = AgeEstimator.load(args.model, options)
    output = JsonOutput() if args.json else JsonLinesOutput() if args.jsonl else CsvOutput() if args.csv else TableOutput([str(p) for p in paths])
    copies = AnnotatedCopies(args.annotate) if args.annotate else None
    try:
        summary = write_predictions(estimator.iter_predict(paths, aligned=args.aligned), output, len(paths), copies)
    except BrokenPipeError:
        return _reader_gone()
    print(summary.line(), file=sys.stderr)
    return 0 if summary.any_read else 1


def _reader_gone() -> int:
    """``glae predict ... | head``: the reader has what it wanted; stop quietly, as Unix tools do (SIGPIPE's 141)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's last flush of stdout must not fail again
    return 141


def _check_export_target(onnx: Path, model: Path) -> None:
    """The ONNX file may replace an earlier export, never the model file or anything else."""
    if onnx.resolve() == model.resolve():
        raise ValueError(f"--onnx {onnx} is the model file itself: exporting would overwrite it; choose another path")
    if onnx.suffix.lower() != ".onnx":
        raise ValueError(f"--onnx {onnx}: give a file name ending in .onnx (an earlier GLAE export there is replaced)")
    _check_output_file(onnx, "--onnx")
    from .export import is_glae_export

    if onnx.exists() and not is_glae_export(onnx):
        raise ValueError(f"--onnx {onnx} exists and is not a GLAE export, so it is not replaced; choose another path or remove it")


def run_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .export import export_onnx
    from .estimator import resolve_model_path

    model_path = resolve_model_path(args.model)
    _check_export_target(args.onnx, model_path)
    model, info = load_model(model_path)
    mode = export_onnx(model, args.onnx, info, args.opset)
    print(f"ONNX model ({mode} mode): {args.onnx}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from .serve.server import serve

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port} is not a TCP port; use 1..65535 (default 8000)")
    settings = ServeSettings(
        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, max_faces=args.max_faces,
        timeout_s=args.timeout, workers=args.workers, queue=args.queue,
        header_timeout_s=args.header_timeout, max_connections=args.max_connections,
    )
    serve(args.model, PredictOptions.from_arguments(args), settings, args.host, args.port)
    return 0


COMMANDS = {"train": run_train, "plan": run_plan, "eval": run_eval, "calibrate": run_calibrate, "pair": run_pair, "teach": run_teach, "align": run_align, "predict": run_predict, "export": run_export, "serve": run_serve}


def _one_line(error: BaseException) -> str:
    """Every refusal is one line, even when a library's message (onnxruntime, torch) spans several."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # torch's ONNX exporter runs onnxscript's optimizer, which logs every rewrite at INFO.
        for exporter_logger in ("onnxscript", "onnx_ir"):
            logging.getLogger(exporter_logger).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except TrainingDiverged as error:
        print(f"error: training diverged: {_one_line(error)}", file=sys.stderr)
        return 3
    except USER_ERRORS as error:
        logging.getLogger(__name__).debug("where the error was raised (-v)", exc_info=True)
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in ("train", "plan")
        print("interrupted" + ("; rerun the same command to resume" if resumable else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
