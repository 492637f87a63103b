"""The decision rule of docs/claims.md (benchmarks/claims_table.py), on hand-computed values."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "claims_table.py"


@pytest.fixture(scope="module")
def claims_table():
    spec = importlib.util.spec_from_file_location("claims_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def report(seed: str | None, **maes: float) -> dict:
    """A test_metrics.json with one MAE (and CMAE = MAE + 1) per head."""
    modes = {mode: {"mae": mae, "cmae": mae + 1, "groups": {}} for mode, mae in maes.items()}
    return {"modes": modes, "seed": seed}


def test_a_gap_counts_only_beyond_twice_the_pooled_seed_std(claims_table):
    # d = 2 − 5 = −3; both sample variances are 1, so s = 1 and 2s = 2 < 3.
    assert claims_table.verdict([1, 2, 3], [4, 5, 6]) == "holds (d = -3.000, 2s = 2.000)"
    assert claims_table.verdict([4, 5, 6], [1, 2, 3]) == "does not hold (d = +3.000, 2s = 2.000)"
    assert claims_table.verdict([1, 2, 3], [4, 5, 6], lower_is_claimed=False) == "does not hold (d = -3.000, 2s = 2.000)"
    # d = −1.5 < 2s = 2: inside the noise.
    assert claims_table.verdict([1, 2, 3], [2.5, 3.5, 4.5]) == "cannot tell (d = -1.500, 2s = 2.000)"


def test_fewer_than_three_seeds_cannot_tell(claims_table):
    assert claims_table.verdict([1, 2], [4, 5, 6]) == "cannot tell (2 and 3 seeds, 3 needed)"
    assert claims_table.switch_effect([1.0], [4, 5, 6]) == "cannot tell (1 and 3 seeds)"


def test_a_switch_is_lower_higher_or_cannot_tell(claims_table):
    assert claims_table.switch_effect([1, 2, 3], [4, 5, 6]) == "lower (d = -3.000, 2s = 2.000)"
    assert claims_table.switch_effect([4, 5, 6], [1, 2, 3]) == "higher (d = +3.000, 2s = 2.000)"
    assert claims_table.switch_effect([1, 2, 3], [1.5, 2.5, 3.5]).startswith("cannot tell (d = -0.500")


def test_paired_differences_match_seeds_not_positions(claims_table):
    switch = [report("2", routing=4.0)]
    reference = [report("0", routing=9.0), report("1", routing=9.0), report("2", routing=4.5)]
    assert claims_table.paired(switch, reference, "routing", "mae") == "-0.500 (1)"
    two = [report("0", routing=8.0), report("2", routing=5.5)]  # differences −1 and +1
    assert claims_table.paired(two, reference, "routing", "cmae") == "+0.000 ± 1.414 (2)"
    assert claims_table.paired([report("7", routing=1.0)], reference, "routing", "mae") == "–"


def test_runs_group_by_name_without_the_seed(claims_table, tmp_path):
    for name in ("glae_seed0", "glae_flip_fresh_seed1", "glae_flip_seed1", "status.json"):
        folder = tmp_path / name
        if name.endswith(".json"):
            folder.write_text("{}")
            continue
        folder.mkdir()
        (folder / "test_metrics.json").write_text(json.dumps({"modes": {}}))
    reports = claims_table.load("test", tmp_path)
    assert {method: [r["seed"] for r in runs] for method, runs in reports.items()} == {
        "glae": ["0"], "glae_flip": ["1"], "glae_flip_fresh": ["1"]}
