"""The data section of a config: protocol and CSV settings from YAML and --set, their errors,
and run folders saved before these settings existed."""

from __future__ import annotations

from pathlib import Path

import pytest

from glae.config import TrainConfig, config_from_dict, config_to_dict, dump_config, load_config
from glae.data import CsvColumns


@pytest.mark.parametrize(
    ("overrides", "protocol", "fold"),
    [
        (["data.protocol=lopo", "data.fold=3"], "lopo", 3),
        (["data.protocol=morph_partial"], "morph_partial", 0),
        (["data.protocol=field"], "field", 0),
        ([], "random", 0),
    ],
)
def test_every_protocol_is_reachable_from_the_command_line(overrides: list[str], protocol: str, fold: int) -> None:
    config = load_config(None, overrides)
    assert (config.data.protocol, config.data.fold) == (protocol, fold)


def test_csv_column_names_from_the_command_line_keep_the_other_defaults(tmp_path: Path) -> None:
    config = load_config(None, ["data.format=csv", "data.csv_columns.path=file", "data.csv_columns.age=real_age"])
    assert config.data.csv_columns == CsvColumns(path="file", age="real_age", std="std", subject="subject", split="split")
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_a_config_saved_before_the_protocol_settings_still_loads() -> None:
    """A run folder's config.yaml from before ``data.fold``, ``data.csv_columns`` and the
    train folds (and their seed) existed resumes: the missing settings take their defaults, so the run's
    identity is unchanged."""
    saved = config_to_dict(TrainConfig())
    del saved["data"]["fold"], saved["data"]["csv_columns"], saved["data"]["train_folds"], saved["data"]["left_out_fold"]
    del saved["data"]["fold_seed"]
    assert set(saved["data"]) == {
        "path", "format", "protocol", "test_fraction", "val_fraction", "split_seed", "train_list", "val_list",
        "test_list", "limit", "clip_ages", "use_label_std", "num_workers", "cache", "cache_dir",
    }  # exactly the data section those versions wrote
    loaded = config_from_dict(saved)
    assert loaded == TrainConfig()
    assert (loaded.data.fold, loaded.data.csv_columns) == (0, CsvColumns("path", "age", "std", "subject", "split"))
    assert (loaded.data.train_folds, loaded.data.left_out_fold, loaded.data.fold_seed) == (0, 0, None)


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("data.protocol=5", r"data\.protocol.*string"),
        ("data.fold=first", r"data\.fold.*integer"),
        ("data.csv_columns=file", r"data\.csv_columns.*mapping"),
        ("data.csv_columns.file=path", r"unknown setting\(s\) data\.csv_columns\.file"),
    ],
)
def test_wrong_types_are_rejected(override: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.protocol=loso", r"data\.protocol 'loso' is unknown; known: field, lists, lopo, morph_partial, random; fix it with --set data\.protocol=NAME"),
        ("data.fold=-1", r"data\.fold must be >= 0, got -1; fix it with --set data\.fold=N"),
        ("data.test_fraction=1", r"data\.test_fraction must be in \[0, 1\), got 1\.0; fix it with --set data\.test_fraction=F"),
        ("data.val_fraction=-0.1", r"data\.val_fraction must be in \[0, 1\), got -0\.1"),
        ("data.val_fraction=0.8", r"data\.test_fraction \+ data\.val_fraction must be < 1 .* got 0\.2 \+ 0\.8"),
        ("data.limit=0", r"data\.limit must be >= 1 or null, got 0; fix it with --set data\.limit=N"),
        ("data.num_workers=-1", r"data\.num_workers must be >= 0, got -1"),
        ("data.train_list=train.txt", r"data\.train_list is read only by protocol lists, but data\.protocol is random; add --set data\.protocol=lists"),
        ("data.fold=2", r"data\.fold is read only by protocol lopo, but data\.protocol is random; add --set data\.protocol=lopo"),
    ],
)
def test_impossible_data_settings_are_refused_up_front(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])
