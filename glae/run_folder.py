"""A ``glae train`` run folder: what it holds, and when a rerun may use it.

A run folder holds::

    config.yaml            the resolved configuration
    split.json             the train/val/test lists (relative to the data folder)
    checkpoints/last.pt    training state for resume (model, optimizer, scheduler, RNG, counters)
    stageN.safetensors     the model after stage N, for every stage but the last (stage1: vanilla head trained)
    model.safetensors      the final model (both heads when stage 2 ran) -- what eval/predict use
    metrics.jsonl          one line per epoch (train loss, images/s, validation metrics)
    tensorboard/           the same numbers for TensorBoard
    test_metrics.json      the final model on the test split, every routing mode
    report/                Markdown + PNG report of that evaluation

A rerun with the same settings resumes; one with other settings, a second process, or a
folder that holds a model without its record is refused, so no training is ever lost.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import TrainConfig, config_to_dict, dump_config, dump_settings, identity_changes, read_yaml_mapping, run_record_from_dict
from .engine import DistributedContext, barrier
from .fileio import atomic_write_text


class RunFolderError(ValueError):
    """The run folder belongs to a different experiment, or another process is training it."""


def has_begun(out_dir: Path) -> bool:
    """Whether training wrote anything a rerun would build on (a checkpoint or a model)."""
    return (
        any((out_dir / name).exists() for name in ("checkpoints/last.pt", "model.safetensors"))
        or any(out_dir.glob("stage*.safetensors"))
    )


def prepare_run_folder(config: TrainConfig, out_dir: Path, context: DistributedContext) -> None:
    """Record the config, or check that a resumed run uses the same one.

    Only a run that has begun training is protected: one that failed at start (no data,
    wrong format) is re-recorded with the corrected settings, its stale split removed. A
    checkpoint or model without its ``config.yaml`` is refused: nothing tells what it
    trained, and training would replace it.
    """
    config_file = out_dir / "config.yaml"
    if has_begun(out_dir):
        if not config_file.exists():
            raise RunFolderError(
                f"{out_dir} holds a checkpoint or model file but no config.yaml: it is not a glae train run folder, "
                "or its record was lost; use a new --out folder"
            )
        changes = identity_changes(run_record_from_dict(read_yaml_mapping(config_file, "run config")), config)
        if changes:
            raise RunFolderError(
                f"{out_dir} holds a run with other settings ({'; '.join(changes[:5])}); "
                "use a new --out folder, or rerun with the recorded settings to resume"
            )
    else:
        record = dump_config(config)
        if config_file.exists() and config_file.read_text() != record:
            if not is_run_record(config_file):
                raise RunFolderError(
                    f"{config_file} is not a record glae train wrote (a config written by hand?), and this run would "
                    "replace it; keep your config outside --out, or use a new --out folder"
                )
            if context.is_main:
                (out_dir / "split.json").unlink(missing_ok=True)
        if context.is_main:
            atomic_write_text(config_file, record)
    barrier(context)


def is_run_record(config_file: Path) -> bool:
    """Whether ``config_file`` is a full settings dump as a run writes it, which a new run may replace.

    A dump by an older GLAE lacks the settings added since: it counts when it is this version's
    dump with only those left out (every section, the same order and values).
    """
    try:
        text = config_file.read_text()
        written = read_yaml_mapping(config_file, "run config")
        full = config_to_dict(run_record_from_dict(written))
    except (ValueError, OSError):
        return False
    return set(written) == set(full) and text == dump_settings(_keys_of(full, written))


def _keys_of(full: Any, written: Any) -> Any:
    """``full`` restricted to the keys ``written`` has, at every depth (lists element by element)."""
    if isinstance(full, dict) and isinstance(written, dict):
        return {key: _keys_of(value, written[key]) for key, value in full.items() if key in written}
    if isinstance(full, list) and isinstance(written, list) and len(full) == len(written):
        return [_keys_of(a, b) for a, b in zip(full, written)]
    return full


@contextmanager
def run_lock(out_dir: Path) -> Iterator[None]:
    """One ``glae train`` per run folder at a time: two would overwrite each other's checkpoints.

    Whoever holds the lock owns the folder, so the temporary files a killed run left
    mid-write (each as large as a checkpoint) are removed here.
    """
    with open(out_dir / ".train.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(
                f"{out_dir} is being trained by another process (glae train or glae plan); "
                "wait for it to end, then rerun to resume"
            ) from None
        for partial in [*out_dir.glob(".*.tmp"), *out_dir.glob("checkpoints/.*.tmp")]:
            partial.unlink()
        yield
