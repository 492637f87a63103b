"""Plans of runs (glae.plan): every unfinished run trained in order, results synced, reruns harmless."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glae.config import dump_config, load_config
from glae.plan import describe, execute, is_finished, load_plan, write_status

TINY = ["data.limit=64", "model.input_size=64", "model.backbone=resnet18", "model.pretrained=false",
        "stage1.epochs=1", "stage2.epochs=1", "stage1.max_steps_per_epoch=2", "stage2.max_steps_per_epoch=1",
        "data.num_workers=0", "clip_grad_norm=5", "stage1.batch_size=8", "stage2.batch_size=8"]


def _plan(tmp_path: Path, utkface: Path, runs: object) -> Path:
    plan = {"name": "p", "data": str(utkface), "out": str(tmp_path / "runs"), "results": str(tmp_path / "results"), "runs": runs}
    path = tmp_path / "plan.yaml"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.slow
def test_plan_trains_each_run_once_and_a_failure_does_not_stop_the_rest(tmp_path: Path, utkface: Path) -> None:
    plan_file = _plan(tmp_path, utkface, [
        {"name": "broken", "config": str(tmp_path / "missing.yaml")},
        {"name": "tiny", "config": "configs/smoke.yaml", "set": TINY},
    ])
    plan = load_plan(plan_file)
    assert execute(plan) == 1
    results = tmp_path / "results" / "p"
    status = json.loads((results / "status.json").read_text())
    states = {run["name"]: run for run in status["runs"]}
    assert states["tiny"]["state"] == "finished" and "failed" not in states["tiny"]
    assert "missing.yaml" in states["broken"]["failed"]
    assert json.loads((results / "tiny" / "test_metrics.json").read_text())["n_images"] > 0
    assert len((results / "tiny" / "metrics.jsonl").read_text().splitlines()) == 2  # one line per epoch, both stages
    model = tmp_path / "runs" / "tiny" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    execute(plan)  # a rerun retrains nothing that finished
    assert model.stat().st_mtime_ns == stamp


def test_a_second_runner_of_the_same_plan_leaves_at_once(tmp_path: Path, utkface: Path, capsys) -> None:
    plan = load_plan(_plan(tmp_path, utkface, [{"name": "tiny", "config": "configs/smoke.yaml", "set": TINY}]))
    plan.out.mkdir(parents=True)
    with open(plan.out / ".plan.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert execute(plan) == 0
    assert "already working" in capsys.readouterr().err
    assert not (plan.out / "tiny").exists()


def test_a_run_recorded_in_the_results_is_not_retrained_when_its_run_folder_is_gone(tmp_path: Path, utkface: Path) -> None:
    """A fresh machine has the committed results but no run folders: the plan must not redo hours of training."""
    plan = load_plan(_plan(tmp_path, utkface, [{"name": "done", "config": "configs/missing.yaml"}]))
    recorded = tmp_path / "results" / "p" / "done"
    recorded.mkdir(parents=True)
    (recorded / "test_metrics.json").write_text(json.dumps({"mode": "routing", "mae": 4.7, "cmae": 6.2}))
    (recorded / "metrics.jsonl").write_text(json.dumps({"stage": 2, "epoch": 3, "train_loss": 1.0}) + "\n")
    assert execute(plan) == 0  # the missing config would fail the run if it were trained
    assert not (plan.out / "done").exists()
    status = json.loads((recorded.parent / "status.json").read_text())["runs"][0]
    assert status["state"] == "finished" and status["test"]["mae"] == 4.7 and status["epochs_logged"] == 1


@pytest.mark.parametrize("runs, message", [
    ([], "no runs"),
    ([{"name": "a"}], "needs a name and a config"),
    ([{"name": "a", "config": "c"}, {"name": "a", "config": "c"}], "repeated: a"),
    ([{"name": "a", "config": "c", "set": "seed=1"}], "list of key=value"),
    (5, "runs must be a list"),
    ([{"name": "../elsewhere", "config": "c"}], "must be a plain folder name"),
    ([{"name": "..", "config": "c"}], "must be a plain folder name"),
    ([{"name": "a", "config": "c", "sets": ["seed=1"]}], "run a: unknown key sets; a run has name, config, set"),
])
def test_bad_plans_are_refused_in_one_line(tmp_path: Path, runs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_plan(_plan(tmp_path, tmp_path, runs))


@pytest.mark.parametrize("key, value, message", [
    ("name", "../elsewhere", "must be a plain folder name"),
    ("name", None, "name must be a non-empty string"),
    ("out", None, "out must be a non-empty string"),
    ("results", "", "results must be a non-empty string"),
    ("data", 5, "data must be a non-empty string"),
    ("result", "r", "unknown key result; a plan has name, data, out, results, runs"),
])
def test_a_plan_whose_folders_are_unusable_is_refused_in_one_line(tmp_path: Path, key: str, value: object, message: str) -> None:
    """The plan's name is a folder under results: a path would write its status elsewhere; an empty folder is no folder."""
    path = _plan(tmp_path, tmp_path, [{"name": "a", "config": "c"}])
    plan = json.loads(path.read_text())
    path.write_text(json.dumps({**plan, key: value}))
    with pytest.raises(ValueError, match=message):
        load_plan(path)


def test_a_damaged_result_file_is_named_in_the_status_and_stops_nothing(tmp_path: Path, utkface: Path) -> None:
    """A half-copied test_metrics.json (a full disk, a bad merge) must not stop the runner or hide the other runs."""
    plan = load_plan(_plan(tmp_path, utkface, [{"name": "damaged", "config": "configs/missing.yaml"},
                                                {"name": "other", "config": "configs/missing.yaml"}]))
    recorded = tmp_path / "results" / "p" / "damaged"
    recorded.mkdir(parents=True)
    (recorded / "test_metrics.json").write_text('{"mode": "routing", "mae": 4.')
    (recorded / "metrics.jsonl").write_text(json.dumps({"stage": 1, "epoch": 1}) + "\n" + '{"stage": 1, "ep')
    write_status(plan, None, {})
    damaged, other = json.loads((recorded.parent / "status.json").read_text())["runs"]
    assert damaged["state"] == "finished" and damaged["epochs_logged"] == 1
    assert damaged["test"] == f"{recorded / 'test_metrics.json'} cannot be read"
    assert other["state"] == "not started"
    assert f"{recorded / 'test_metrics.json'} cannot be read" in describe(plan)


def test_a_run_without_a_test_part_counts_as_finished_once_its_model_is_written(tmp_path: Path) -> None:
    """data.test_fraction=0 (a final model on all faces) writes no test report; the plan must not redo its last step forever."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text(json.dumps({"train": ["a.jpg"], "val": ["b.jpg"], "test": []}))
    assert not is_finished(run)  # killed before the final model
    (run / "model.safetensors").write_bytes(b"model")
    assert is_finished(run)
    (run / "split.json").write_text(json.dumps({"train": ["a.jpg"], "val": [], "test": ["c.jpg"]}))
    assert not is_finished(run)  # a test part that is still to be evaluated


def _record(plan_file: Path, name: str, overrides: list[str]) -> Path:
    """Results of a finished run as committed: its test metrics, its log and its resolved config."""
    plan = load_plan(plan_file)
    recorded = plan.results_dir / name
    recorded.mkdir(parents=True)
    (recorded / "test_metrics.json").write_text(json.dumps({"mode": "routing", "mae": 4.5, "cmae": 6.0}))
    (recorded / "metrics.jsonl").write_text("".join(json.dumps({"stage": 1, "epoch": e}) + "\n" for e in range(1, 11)))
    config = load_config("configs/smoke.yaml", [*overrides, f"data.path={json.dumps(plan.data)}"])
    (recorded / "config.yaml").write_text(dump_config(config))
    return recorded


def test_an_old_unfinished_run_folder_never_replaces_recorded_results(tmp_path: Path, utkface: Path) -> None:
    """Another machine's interrupted attempt must not be copied over the committed results of the finished run."""
    plan_file = _plan(tmp_path, utkface, [{"name": "x", "config": "configs/smoke.yaml", "set": ["seed=0"]}])
    recorded = _record(plan_file, "x", ["seed=0"])
    before = {path.name: path.read_bytes() for path in recorded.iterdir()}
    stale = tmp_path / "runs" / "x"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text(json.dumps({"stage": 1, "epoch": 1}) + "\n")
    (stale / "config.yaml").write_text((recorded / "config.yaml").read_text().replace("seed: 0", "seed: 7"))
    assert execute(load_plan(plan_file)) == 0
    assert {path.name: path.read_bytes() for path in recorded.iterdir()} == before


def test_an_edited_plan_never_shows_old_results_under_its_new_settings(tmp_path: Path, utkface: Path) -> None:
    plan_file = _plan(tmp_path, utkface, [{"name": "x", "config": "configs/smoke.yaml", "set": ["seed=1"]}])
    recorded = _record(plan_file, "x", ["seed=0"])
    plan = load_plan(plan_file)
    assert execute(plan) == 1
    status = json.loads((recorded.parent / "status.json").read_text())["runs"][0]
    assert status["state"] == "changed" and "test" not in status
    assert status["change"] == "seed: 0 recorded, 1 now"
    assert status["failed"].startswith("recorded with other settings (seed: 0 recorded, 1 now); rename the run, or delete")
    assert "settings differ from the recorded run: seed: 0 recorded, 1 now" in describe(plan)
    assert not (plan.out / "x").exists()  # nothing retrained over the old results


def test_a_run_still_trained_by_an_earlier_runner_stops_the_plan(tmp_path: Path, utkface: Path) -> None:
    """Moving on to the next run would make two trainings share the cores."""
    plan = load_plan(_plan(tmp_path, utkface, [{"name": "a", "config": "configs/smoke.yaml"}, {"name": "b", "config": "configs/smoke.yaml"}]))
    (plan.out / "a").mkdir(parents=True)
    with open(plan.out / "a" / ".train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert execute(plan) == 1
    status = json.loads((plan.results_dir / "status.json").read_text())["runs"]
    assert "is being trained by another process" in status[0]["failed"] and "failed" not in status[1]
    assert not (plan.out / "b").exists()


def test_stopping_the_runner_stops_its_training(tmp_path: Path, utkface: Path) -> None:
    plan_file = _plan(tmp_path, utkface, [{"name": "x", "config": "configs/smoke.yaml"}])
    pid_file = tmp_path / "training.pid"
    runner = subprocess.Popen([sys.executable, "-c", f"""
import os, sys, time
from glae import plan as module
module.train_command = lambda plan, run: [sys.executable, "-c", "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"]
module.execute(module.load_plan({str(plan_file)!r}))
"""])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    training = int(pid_file.read_text())
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):
        os.kill(training, 0)


def test_a_finished_run_folder_is_synced_into_the_results_on_a_rerun(tmp_path: Path, utkface: Path) -> None:
    plan_file = _plan(tmp_path, utkface, [{"name": "x", "config": "configs/smoke.yaml"}])
    finished = tmp_path / "runs" / "x"
    finished.mkdir(parents=True)
    config = load_config("configs/smoke.yaml", [f"data.path={json.dumps(str(utkface))}"])
    files = {"config.yaml": dump_config(config), "metrics.jsonl": json.dumps({"stage": 1, "epoch": 1}) + "\n",
             "test_metrics.json": json.dumps({"mode": "routing", "mae": 4.5, "cmae": 6.0})}
    for name, text in files.items():
        (finished / name).write_text(text)
    (finished / "model.safetensors").write_bytes(b"model")
    assert execute(load_plan(plan_file)) == 0
    assert {name: (tmp_path / "results" / "p" / "x" / name).read_text() for name in files} == files


def test_a_recorded_run_whose_config_was_renamed_still_counts_as_finished(tmp_path: Path, utkface: Path) -> None:
    """Nothing to compare is not a change: the committed results stand, with a note."""
    plan_file = _plan(tmp_path, utkface, [{"name": "x", "config": str(tmp_path / "renamed.yaml")}])
    _record(plan_file, "x", [])
    plan = load_plan(plan_file)
    assert execute(plan) == 0
    status = json.loads((plan.results_dir / "status.json").read_text())["runs"][0]
    assert status["state"] == "finished" and status["test"]["mae"] == 4.5
    assert status["settings_check"].startswith("cannot be checked: ") and "renamed.yaml" in status["settings_check"]


def test_the_runner_keeps_nohups_ignored_hangup_and_restores_the_handlers(tmp_path: Path, utkface: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under nohup a closed terminal must not stop hours of training; afterwards the caller's handlers are back."""
    from glae import plan as module

    seen = {}

    def runs(plan):
        seen.update(hup=signal.getsignal(signal.SIGHUP), term=signal.getsignal(signal.SIGTERM))
        return 0

    monkeypatch.setattr(module, "_execute_runs", runs)
    previous_term = signal.getsignal(signal.SIGTERM)
    previous_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        execute(load_plan(_plan(tmp_path, utkface, [{"name": "x", "config": "configs/smoke.yaml"}])))
        assert seen["hup"] is signal.SIG_IGN and seen["term"] is module._leave_on_signal
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) is previous_term
    finally:
        signal.signal(signal.SIGHUP, previous_hup)
