"""Plans of runs (glae.plan): every unfinished run trained in order, results synced, reruns harmless."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

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
])
def test_bad_plans_are_refused_in_one_line(tmp_path: Path, runs: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_plan(_plan(tmp_path, tmp_path, runs))


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
