"""A plan of training runs that outlives a stop: start or resume every unfinished run, in order.

A plan is a small YAML file::

    name: claims                       # results go to <results>/<name>/
    data: ../shared/data/utkface       # --data of every run (paths relative to the working directory)
    out: runs/claims                   # run folders, one per run (never committed)
    results: benchmarks/results        # per-run metrics.jsonl and test_metrics.json, copied as they appear
    runs:
      - name: base_seed0
        config: configs/claims_base.yaml
        set: [seed=0]                  # --set overrides

``glae plan PLAN`` starts one background process that trains the runs one after the other
(``glae train``, which resumes a run from its last checkpoint), copies each run's
``config.yaml`` and ``metrics.jsonl`` into the results folder every 30 s and its ``test_metrics.json``
when it ends, and keeps ``status.json`` there. Rerunning the command at any time is
harmless: a lock makes a second runner exit at once, finished runs are skipped, and an
interrupted one resumes where it stopped, with the numbers an uninterrupted run gives.
A run whose ``test_metrics.json`` is in the results folder counts as finished even when its
run folder is gone (a fresh machine, a cleaned disk): the committed results are the record,
and retraining would cost hours to reproduce them. Delete that file to train the run again.
A recorded run whose settings no longer match the plan's (an edited ``set`` or config) is
reported as changed, never shown under the new settings nor retrained over the old results.
Stopping the runner (SIGTERM, SIGHUP, Ctrl-C) stops its training too.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import identity_changes, load_config, read_yaml_mapping, run_record_from_dict
from .fileio import atomic_write_text

SYNC_EVERY_S = 30.0


@dataclass
class PlannedRun:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Plan:
    name: str
    data: str
    out: Path
    results: Path
    runs: list[PlannedRun]

    @property
    def results_dir(self) -> Path:
        return self.results / self.name

    def run_dir(self, run: PlannedRun) -> Path:
        return self.out / run.name


_PLAN_KEYS = ("name", "data", "out", "results", "runs")
_RUN_KEYS = ("name", "config", "set")


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan file; every problem is one line naming the file and the entry."""
    data = read_yaml_mapping(path, "plan file")
    missing = [key for key in _PLAN_KEYS if key not in data]
    if missing:
        raise ValueError(f"{path}: missing {', '.join(missing)}")
    unknown = sorted(map(str, set(data) - set(_PLAN_KEYS)))
    if unknown:
        raise ValueError(f"{path}: unknown key {', '.join(unknown)}; a plan has {', '.join(_PLAN_KEYS)}")
    for key in ("name", "data", "out", "results"):
        if not isinstance(data[key], str) or not data[key]:
            raise ValueError(f"{path}: {key} must be a non-empty string, got {data[key]!r}")
    if not _is_plain_name(data["name"]):
        raise ValueError(f"{path}: name {data['name']!r} must be a plain folder name (it is the plan's folder under results)")
    if not isinstance(data["runs"] or [], list):
        raise ValueError(f"{path}: runs must be a list, one entry (name, config, set) per run")
    runs = []
    for position, entry in enumerate(data["runs"] or []):
        if not isinstance(entry, dict) or not {"name", "config"} <= set(entry):
            raise ValueError(f"{path}: run {position + 1} needs a name and a config")
        name = str(entry["name"])
        if not _is_plain_name(name):
            # The name is a folder under both out and results: a path would train and write outside them.
            raise ValueError(f"{path}: run {position + 1}: name {name!r} must be a plain folder name")
        unknown = sorted(map(str, set(entry) - set(_RUN_KEYS)))
        if unknown:  # a misspelt ``set`` would train every run without its overrides
            raise ValueError(f"{path}: run {name}: unknown key {', '.join(unknown)}; a run has {', '.join(_RUN_KEYS)}")
        overrides = entry.get("set") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"{path}: run {name}: set must be a list of key=value strings")
        runs.append(PlannedRun(name, str(entry["config"]), overrides))
    names = [run.name for run in runs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path}: run names must be unique, repeated: {', '.join(duplicates)}")
    if not runs:
        raise ValueError(f"{path}: the plan has no runs")
    return Plan(data["name"], data["data"], Path(data["out"]), Path(data["results"]), runs)


def _is_plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and Path(name).name == name


def is_finished(run_dir: Path) -> bool:
    """The final model is written and so is its test report, or the run's split has no test part to report on."""
    if not (run_dir / "model.safetensors").is_file():
        return False
    return (run_dir / "test_metrics.json").is_file() or _read_json(run_dir / "split.json", {}).get("test") == []


def _read_json(path: Path, fallback: Any) -> Any:
    """A record written by another process, or the fallback when it is missing or damaged.

    One damaged file must neither stop the background runner nor hide the other runs' status.
    """
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return fallback


def is_recorded(plan: Plan, run: PlannedRun) -> bool:
    """The run is done: finished in its run folder, or its test results are already in the results folder."""
    return is_finished(plan.run_dir(run)) or (plan.results_dir / run.name / "test_metrics.json").is_file()


def settings_change(plan: Plan, run: PlannedRun) -> str | None:
    """How a recorded run's settings differ from what the plan asks now, or None when they agree.

    The record is the finished run folder's ``config.yaml``, else the one in the results
    folder; results recorded without one cannot be checked and are taken as they are.

    Raises:
        ValueError: When the plan's config or the record cannot be read: nothing to compare.
    """
    run_dir = plan.run_dir(run)
    record = (run_dir if is_finished(run_dir) else plan.results_dir / run.name) / "config.yaml"
    if not record.is_file():
        return None
    recorded = run_record_from_dict(read_yaml_mapping(record, "run config"))
    planned = load_config(run.config, [*run.overrides, f"data.path={json.dumps(plan.data)}"])
    return ", ".join(identity_changes(recorded, planned)) or None


def _checked_change(plan: Plan, run: PlannedRun) -> tuple[str | None, str | None]:
    """``(change, why unchecked)`` of a recorded run: a record that cannot be read is no change, the results stand."""
    try:
        return settings_change(plan, run), None
    except ValueError as error:
        return None, f"cannot be checked: {error}"


def _copy_if_changed(source: Path, target: Path) -> None:
    if not source.is_file():
        return
    data = source.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, data.decode("utf-8"))


def sync_results(plan: Plan, run: PlannedRun) -> None:
    """Copy what the run folder holds so far into the repo's results folder."""
    for name in ("metrics.jsonl", "test_metrics.json", "config.yaml"):
        _copy_if_changed(plan.run_dir(run) / name, plan.results_dir / run.name / name)


def _json_line(line: str) -> Any:
    """One log line's record; None for a blank or cut-off line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def run_state(plan: Plan, run: PlannedRun) -> dict[str, Any]:
    """Where one run stands: finished, running/partial (epochs logged), or not started."""
    run_dir = plan.run_dir(run)
    history = []
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        metrics = plan.results_dir / run.name / "metrics.jsonl"
    if metrics.is_file():
        history = [record for record in map(_json_line, metrics.read_text().splitlines()) if isinstance(record, dict)]
    state: dict[str, Any] = {"name": run.name, "config": run.config, "set": run.overrides, "epochs_logged": len(history)}
    recorded_run = is_recorded(plan, run)
    change, unchecked = _checked_change(plan, run) if recorded_run else (None, None)
    if unchecked is not None:
        state["settings_check"] = unchecked
    if change is not None:
        state["state"] = "changed"
        state["change"] = change
    elif recorded_run:
        recorded = (run_dir if is_finished(run_dir) else plan.results_dir / run.name) / "test_metrics.json"
        test = _read_json(recorded, None)
        state["state"] = "finished"
        if isinstance(test, dict) and {"mode", "mae", "cmae"} <= set(test):
            state["test"] = {"mode": test["mode"], "mae": test["mae"], "cmae": test["cmae"]}
        elif recorded.exists():
            state["test"] = f"{recorded} cannot be read"
    else:
        state["state"] = "partial" if history or run_dir.exists() else "not started"
    if history:
        state["last_epoch"] = {k: history[-1][k] for k in ("stage", "epoch", "train_loss", "train_images_per_s") if k in history[-1]}
        state["last_epoch"]["val"] = history[-1].get("val")
    return state


def write_status(plan: Plan, current: str | None, failures: dict[str, str]) -> None:
    status = {
        "plan": plan.name, "updated": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "running": current,
        "runs": [dict(run_state(plan, run), **({"failed": failures[run.name]} if run.name in failures else {}))
                 for run in plan.runs],
    }
    plan.results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.results_dir / "status.json", json.dumps(status, indent=1) + "\n")


def train_command(plan: Plan, run: PlannedRun) -> list[str]:
    command = [sys.executable, "-m", "glae", "train", "--config", run.config, "--data", plan.data,
               "--out", str(plan.run_dir(run)), "--no-progress"]
    for override in run.overrides:
        command += ["--set", override]
    return command


def training_environment() -> dict[str, str]:
    """The runs' environment: OpenMP threads sleep at barriers instead of spinning.

    Long runs share the machine with whatever else runs; with spinning threads a busy
    neighbour process cut the two-thread step from 58 to 11 images/s, with sleeping ones
    to 23 (docs/training_speed.md). A value the user set is kept.
    """
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def _is_locked(lock_file: Path) -> bool:
    """Whether another process holds ``lock_file``'s lock (train's run lock, a runner's plan lock)."""
    if not lock_file.exists():
        return False
    with open(lock_file, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def _leave_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through _train, which stops the training it started


def _train(plan: Plan, run: PlannedRun, failures: dict[str, str]) -> None:
    """Train (or resume) one run in a child process, syncing its results while it goes."""
    log_file = plan.out / f"{run.name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    done = threading.Event()

    def keep_syncing() -> None:
        while not done.wait(SYNC_EVERY_S):
            sync_results(plan, run)
            write_status(plan, run.name, failures)

    syncer = threading.Thread(target=keep_syncing, daemon=True)
    syncer.start()
    with open(log_file, "a") as log:
        child = subprocess.Popen(train_command(plan, run), stdout=log, stderr=subprocess.STDOUT, env=training_environment())
        try:
            code = child.wait()
        finally:
            if child.poll() is None:  # the runner is being stopped: its training stops with it, resumable
                child.terminate()
                child.wait()
            done.set()
            syncer.join()
    sync_results(plan, run)
    if code != 0:
        lines = log_file.read_text(errors="replace").strip().splitlines()
        failures[run.name] = f"exit {code}: {lines[-1] if lines else 'no output'} (log {log_file})"
    else:
        failures.pop(run.name, None)
    write_status(plan, None, failures)


def execute(plan: Plan) -> int:
    """Train every unfinished run in order, in this process; returns the number that failed.

    Holds the plan's lock for its whole life: a second runner of the same plan leaves at once.
    """
    plan.out.mkdir(parents=True, exist_ok=True)
    with open(plan.out / ".plan.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"plan {plan.name}: another runner is already working on it", file=sys.stderr)
            return 0
        earlier: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup's ignored hangup stays ignored
                    earlier[signum] = signal.signal(signum, _leave_on_signal)
        try:
            return _execute_runs(plan)
        finally:
            for signum, handler in earlier.items():
                signal.signal(signum, handler)


def _execute_runs(plan: Plan) -> int:
    """The runs in order: recorded ones checked and skipped, the rest trained; returns the failures."""
    failures: dict[str, str] = {}
    for run in plan.runs:
        if is_recorded(plan, run):
            change, _ = _checked_change(plan, run)
            if change is not None:
                failures[run.name] = (f"recorded with other settings ({change}); rename the run, "
                                      f"or delete {plan.results_dir / run.name} and {plan.run_dir(run)} to train it again")
            elif is_finished(plan.run_dir(run)):
                sync_results(plan, run)  # never from an unfinished folder over the recorded results
            continue
        if _is_locked(plan.run_dir(run) / ".train.lock"):
            failures[run.name] = (f"{plan.run_dir(run)} is being trained by another process (an earlier runner's training?); "
                                  "the plan stops here: rerun it when that process ends")
            break
        write_status(plan, run.name, failures)
        _train(plan, run, failures)
    write_status(plan, None, failures)
    return len(failures)


def is_running(plan: Plan) -> bool:
    return _is_locked(plan.out / ".plan.lock")


def start_in_background(plan_file: str | Path) -> str:
    """Start the runner detached from this terminal (it survives the shell); returns what happened."""
    plan = load_plan(plan_file)
    if is_running(plan):
        return f"plan {plan.name}: already running; status in {plan.results_dir / 'status.json'}"
    plan.out.mkdir(parents=True, exist_ok=True)
    log_path = plan.out / "plan.log"
    with open(log_path, "a") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "glae", "plan", str(plan_file), "--foreground"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ),
        )
    return (f"plan {plan.name}: started in the background (pid {process.pid}); "
            f"log {log_path}, status {plan.results_dir / 'status.json'}")


def describe(plan: Plan) -> str:
    """One line per run, for ``glae plan PLAN --status``."""
    lines = [f"plan {plan.name}: {'running' if is_running(plan) else 'not running'}"]
    for run in plan.runs:
        state = run_state(plan, run)
        detail = f"{state['epochs_logged']} epochs logged"
        test = state.get("test")
        if state["state"] == "changed":
            detail = f"settings differ from the recorded run: {state['change']}"
        elif isinstance(test, dict):
            detail = f"test {test['mode']} MAE {test['mae']:.3f} CMAE {test['cmae']:.3f}"
        elif test is not None:
            detail = test
        elif state["state"] == "finished":
            detail = "no test part"
        lines.append(f"  {run.name:28s} {state['state']:12s} {detail}")
    return "\n".join(lines)


__all__ = ["Plan", "PlannedRun", "describe", "execute", "is_finished", "is_recorded", "load_plan", "start_in_background", "sync_results"]
