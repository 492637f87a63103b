"""Evaluation protocols: determinism, disjointness, exact sizes and round trips."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from glae.config import load_config
from glae.data import (
    PROTOCOLS,
    AgeSample,
    DataConfig,
    DatasetError,
    DatasetIndex,
    Split,
    balanced_test_subset,
    leave_one_subject_out,
    morph_partial_filter,
    random_split,
    register_protocol,
    split_dataset,
    split_from_field,
    split_from_lists,
    subject_fold,
    subset_then_random_split,
)
from glae.data import protocols
from glae.train import make_split

ROOT = Path("/data/set")


def _samples(n: int = 50) -> list[AgeSample]:
    """Records only: protocols never touch the image files."""
    return [
        AgeSample(ROOT / f"s{i % 5}" / f"{i:03d}.jpg", age=float(20 + i % 7), subject=f"s{i % 5}")
        for i in range(n)
    ]


def _paths(samples: list[AgeSample]) -> set[Path]:
    return {s.path for s in samples}


# --- random_split --------------------------------------------------------------------


def test_random_split_sizes_disjoint_and_complete() -> None:
    samples = _samples(50)
    split = random_split(samples, test_fraction=0.2, val_fraction=0.1, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (35, 5, 10)
    parts = [_paths(split.train), _paths(split.val), _paths(split.test)]
    assert set().union(*parts) == _paths(samples)
    assert sum(len(p) for p in parts) == 50


def test_random_split_is_seeded_and_order_independent() -> None:
    samples = _samples(50)
    first = random_split(samples, seed=7)
    assert random_split(list(reversed(samples)), seed=7) == first
    assert random_split(samples, seed=8).test != first.test


@pytest.mark.parametrize(("test", "val"), [(1.0, 0.0), (-0.1, 0.0), (0.5, 0.5), (0.2, 1.0)])
def test_random_split_rejects_bad_fractions(test: float, val: float) -> None:
    with pytest.raises(ValueError):
        random_split(_samples(), test_fraction=test, val_fraction=val)


# --- split_from_field ----------------------------------------------------------------


def test_split_from_field_maps_valid_to_val() -> None:
    names = ["train", "valid", "validation", "test", "TRAIN"]
    samples = [AgeSample(ROOT / f"{i}.jpg", 30, split=name) for i, name in enumerate(names)]
    split = split_from_field(samples)
    assert [s.path.name for s in split.train] == ["0.jpg", "4.jpg"]
    assert [s.path.name for s in split.val] == ["1.jpg", "2.jpg"]
    assert [s.path.name for s in split.test] == ["3.jpg"]


def test_split_from_field_warns_when_a_person_is_in_train_and_test(caplog) -> None:
    """The dataset's own split is kept, but a subject on both sides is said: its test score flatters the model."""
    samples = [AgeSample(ROOT / f"{i}.jpg", 30, split=part, subject=person)
               for i, (part, person) in enumerate([("train", "ann"), ("test", "ann"), ("train", "bob"), ("test", "cy")])]
    split = split_from_field(samples)
    assert [s.path.name for s in split.test] == ["1.jpg", "3.jpg"]
    assert "1 subject(s) have images in both the train and the test part, e.g. ann" in caplog.text
    caplog.clear()
    split_from_field([s for s in samples if s.subject != "ann"])
    assert "subject" not in caplog.text


def test_split_from_field_without_split_is_fatal() -> None:
    with pytest.raises(DatasetError, match="no split field"):
        split_from_field(_samples(3))


# --- split_from_lists ----------------------------------------------------------------


def test_split_lists_round_trip(tmp_path: Path) -> None:
    samples = _samples(20)
    reference = random_split(samples, test_fraction=0.25, val_fraction=0.25, seed=1)
    lists = {}
    for part in ("train", "val", "test"):
        lists[part] = tmp_path / f"{part}.txt"
        entries = [s.path.relative_to(ROOT).as_posix() for s in getattr(reference, part)]
        lists[part].write_text("\n".join(entries) + "\n\n")
    split = split_from_lists(samples, lists["train"], lists["test"], lists["val"])
    assert split == reference


def test_split_list_unknown_entry_names_file_and_line(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_text("s0/000.jpg\ns9/404.jpg\n")
    test = tmp_path / "test.txt"
    test.write_text("s1/001.jpg\n")
    with pytest.raises(DatasetError, match=re.escape(f"{train}:2: 's9/404.jpg' matches no sample")):
        split_from_lists(_samples(), train, test)


def test_split_list_entry_on_two_lists_is_fatal(tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_text("s0/000.jpg\n")
    test = tmp_path / "test.txt"
    test.write_text("000.jpg\n")
    with pytest.raises(DatasetError, match=re.escape(f"{test}:1: '000.jpg' already listed")):
        split_from_lists(_samples(), train, test)


@pytest.mark.parametrize("entry", [".", "./"])
def test_split_list_entry_naming_no_file_names_file_and_line(tmp_path: Path, entry: str) -> None:
    train = tmp_path / "train.txt"
    train.write_text(f"s0/000.jpg\n{entry}\n")
    test = tmp_path / "test.txt"
    test.write_text("s1/001.jpg\n")
    with pytest.raises(DatasetError, match=re.escape(f"{train}:2: {entry!r} matches no sample")):
        split_from_lists(_samples(), train, test)


# --- to_json / from_json -------------------------------------------------------------


def test_json_round_trip_uses_relative_paths() -> None:
    samples = _samples(30)
    split = random_split(samples, test_fraction=0.2, val_fraction=0.2)
    saved = split.to_json(ROOT)
    assert saved["test"][0] == split.test[0].path.relative_to(ROOT).as_posix()
    assert Split.from_json(saved, samples, ROOT) == split


def test_split_of_a_manifest_moves_with_its_folder(tmp_path: Path) -> None:
    """A CSV dataset's index root is the manifest file: saved paths are relative to its folder."""
    for folder in ("before", "after"):
        (tmp_path / folder / "images").mkdir(parents=True)
        (tmp_path / folder / "labels.csv").write_text("path,age\n")

    def samples_in(folder: str) -> list[AgeSample]:
        return [AgeSample(tmp_path / folder / "images" / f"{i}.jpg", age=float(i)) for i in range(10)]

    split = random_split(samples_in("before"), test_fraction=0.2, val_fraction=0.2)
    saved = split.to_json(tmp_path / "before" / "labels.csv")
    assert all(entry.startswith("images/") for part in saved.values() for entry in part)
    moved = Split.from_json(saved, samples_in("after"), tmp_path / "after" / "labels.csv")
    assert [s.path.name for s in moved.test] == [s.path.name for s in split.test]
    assert all(s.path.parent == tmp_path / "after" / "images" for s in moved.train)


def test_from_json_unknown_path_is_fatal() -> None:
    with pytest.raises(DatasetError, match="gone.jpg is not in the dataset"):
        Split.from_json({"train": ["gone.jpg"], "test": []}, _samples(), ROOT)


# --- leave-one-subject-out -----------------------------------------------------------


def test_loso_one_fold_per_subject() -> None:
    samples = _samples(50)
    folds = list(leave_one_subject_out(samples))
    assert [subject for subject, _ in folds] == ["s0", "s1", "s2", "s3", "s4"]
    for subject, split in folds:
        assert {s.subject for s in split.test} == {subject}
        assert subject not in {s.subject for s in split.train}
        assert len(split.train) + len(split.test) == len(samples)


def test_loso_without_subject_fails_on_call() -> None:
    samples = [*_samples(4), AgeSample(ROOT / "anon.jpg", 30)]
    with pytest.raises(DatasetError, match="1 samples have no subject"):
        leave_one_subject_out(samples)


# --- MORPH partial subset ------------------------------------------------------------


def test_subset_then_random_split_keeps_only_filtered() -> None:
    races = ["W", "white", "B", "w ", "H"]
    samples = [
        AgeSample(ROOT / f"{i}.jpg", 30, attributes={"race": races[i % 5]}) for i in range(50)
    ]
    split = subset_then_random_split(samples, morph_partial_filter, test_fraction=0.2)
    kept = split.train + split.test
    assert len(kept) == 30 and len(split.test) == 6
    assert all(s.attributes["race"].strip().lower() in {"w", "white"} for s in kept)


def test_subset_with_nothing_kept_is_fatal() -> None:
    with pytest.raises(DatasetError, match="none of the 50 samples"):
        subset_then_random_split(_samples(), morph_partial_filter)


# --- balanced "-LT" subset -----------------------------------------------------------


def _long_tailed() -> list[AgeSample]:
    """Age 20: 10 images, 30: 4 images, 40.4 and 39.6 (both bin 40): 3 images, 60: 1."""
    ages = [20.0] * 10 + [30.0] * 4 + [40.4, 39.6, 40.0] + [60.0]
    return [AgeSample(ROOT / f"{i:02d}.jpg", age) for i, age in enumerate(ages)]


def test_balanced_subset_exactly_n_per_age_from_test_only() -> None:
    test = _long_tailed()
    subset = balanced_test_subset(test, per_age=3, seed=2)
    assert Counter(round(s.age) for s in subset) == {20: 3, 30: 3, 40: 3}
    assert _paths(subset) <= _paths(test)
    assert balanced_test_subset(list(reversed(test)), per_age=3, seed=2) == subset


def test_balanced_subset_rejects_zero_per_age() -> None:
    with pytest.raises(ValueError, match="per_age"):
        balanced_test_subset(_long_tailed(), per_age=0)


def test_balanced_subset_of_an_age_does_not_depend_on_other_ages() -> None:
    """Each age draws with its own seed: dropping the age-30 images leaves the age-20 pick as it
    was, so -LT numbers of two test sets that share an age compare the same faces."""
    test = _long_tailed()
    full = balanced_test_subset(test, per_age=3, seed=5)
    without_30 = balanced_test_subset([s for s in test if s.age != 30.0], per_age=3, seed=5)
    assert [s for s in full if s.age == 20.0] == [s for s in without_30 if s.age == 20.0]
    picks = {tuple(s.path.name for s in balanced_test_subset(test, 3, seed=seed) if s.age == 20.0) for seed in range(6)}
    assert len(picks) > 1  # the seed chooses among the ten age-20 images; not always the first three


def test_balanced_subset_is_the_same_in_every_version() -> None:
    """Published -LT numbers must stay comparable: seed 0 picks these files, now and later.

    (Pinned from this version; ages 20, 30 and 40 keep two images each, age 60 has one.)
    """
    picked = [s.path.name for s in balanced_test_subset(_long_tailed(), per_age=2, seed=0)]
    assert picked == ["07.jpg", "09.jpg", "12.jpg", "13.jpg", "14.jpg", "16.jpg"]


def test_split_sizes_round_half_up() -> None:
    """7 images: test 7 * 0.5 = 3.5 -> 4 images, val 7 * 0.3 = 2.1 -> 2, train the other 1."""
    split = random_split(_samples(7), test_fraction=0.5, val_fraction=0.3, seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (1, 2, 4)


def test_balanced_subset_bins_apparent_ages_half_up() -> None:
    """20.5 is age 21 (as in CMAE), not 20 as Python's round() would have it."""
    test = [AgeSample(ROOT / f"{i}.jpg", age) for i, age in enumerate([20.5, 20.5, 21.0, 20.0])]
    subset = balanced_test_subset(test, per_age=3)
    assert sorted(s.age for s in subset) == [20.5, 20.5, 21.0]


# --- the registry: data.protocol -> split --------------------------------------------


def _names(samples: list[AgeSample]) -> list[str]:
    return [s.path.name for s in samples]


def test_the_protocols_a_config_can_name() -> None:
    assert sorted(PROTOCOLS) == ["field", "lists", "lopo", "morph_partial", "random"]


def test_random_protocol_is_the_same_split_as_before_the_registry() -> None:
    """Pinned from the code before the registry (glae.train.make_split's if-chain): runs
    split before it, and their published numbers, keep exactly these images."""
    split = split_dataset(_samples(20), DataConfig())
    assert _names(split.test) == ["012.jpg", "013.jpg", "004.jpg", "014.jpg"]
    assert _names(split.val) == ["000.jpg", "009.jpg"]
    assert len(split.train) == 14
    limited = split_dataset(list(reversed(_samples(20))), DataConfig(limit=10))
    assert (_names(limited.train), _names(limited.val), _names(limited.test)) == (
        ["005.jpg", "006.jpg", "011.jpg", "016.jpg", "002.jpg", "003.jpg", "019.jpg"],
        ["001.jpg"],
        ["008.jpg", "018.jpg"],
    )
    reseeded = split_dataset(_samples(20), DataConfig(split_seed=3, val_fraction=0.25))
    assert _names(reseeded.test) == ["015.jpg", "006.jpg", "011.jpg", "002.jpg"]


def test_train_folds_leave_out_disjoint_parts_of_train_only() -> None:
    """The k runs of ``data.train_folds=k`` each drop one fold: the dropped parts are disjoint,
    cover the train part, are near-equal, and val and test never change (out-of-fold teachers)."""
    samples = _samples(50)
    full = split_dataset(samples, DataConfig())
    dropped = []
    for fold in range(3):
        split = split_dataset(samples, DataConfig(train_folds=3, left_out_fold=fold))
        assert (split.val, split.test) == (full.val, full.test)
        assert split.train == [s for s in full.train if s in split.train]  # the train part's order is kept
        dropped.append(_paths(full.train) - _paths(split.train))
        assert split_dataset(list(reversed(samples)), DataConfig(train_folds=3, left_out_fold=fold)) == split
    assert set().union(*dropped) == _paths(full.train)
    assert sum(len(part) for part in dropped) == len(full.train)
    assert [len(part) for part in dropped] == [12, 12, 11]  # 35 training faces, dealt in turn


def test_a_fold_seed_deals_another_partition_of_the_same_train_part() -> None:
    """Repeated k-fold: each ``data.fold_seed`` is again a partition of the train part (every face
    left out by exactly one of its k runs), a different one, with val and test unchanged; without
    it the folds are those of ``split_seed``, as before the setting existed."""
    samples = _samples(60)
    full = split_dataset(samples, DataConfig())

    def left_out_parts(**data: int) -> list[frozenset[Path]]:
        parts = []
        for fold in range(3):
            split = split_dataset(samples, DataConfig(train_folds=3, left_out_fold=fold, **data))
            assert (split.val, split.test) == (full.val, full.test)
            parts.append(frozenset(_paths(full.train) - _paths(split.train)))
        assert sum(len(part) for part in parts) == len(full.train) and set().union(*parts) == _paths(full.train)
        return parts

    assert left_out_parts() == left_out_parts(fold_seed=0)  # split_seed 0's folds
    assert set(left_out_parts(fold_seed=1)).isdisjoint(left_out_parts(fold_seed=0))


def test_a_fold_seed_without_train_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="data.fold_seed.*data.train_folds"):
        DataConfig(fold_seed=1).validate()


@pytest.mark.parametrize("folds, fold", [(1, 0), (-2, 0), (3, 3), (0, 1)])
def test_a_fold_setting_no_run_could_use_is_refused(folds: int, fold: int) -> None:
    with pytest.raises(ValueError, match="data.train_folds|data.left_out_fold"):
        DataConfig(train_folds=folds, left_out_fold=fold).validate()


def test_lopo_tests_on_exactly_the_chosen_subject() -> None:
    """Subjects sorted: s0..s4, so fold 2 is s2, the images i with i % 5 == 2."""
    samples = _samples(50)
    split = split_dataset(samples, DataConfig(protocol="lopo", fold=2))
    assert _names(split.test) == [f"{i:03d}.jpg" for i in range(2, 50, 5)]
    assert _paths(split.train) == _paths(samples) - _paths(split.test)
    assert split.val == []
    by_path = sorted(samples, key=lambda s: str(s.path))  # the order split_dataset hands on
    assert subject_fold(by_path, 2) == ("s2", split) == ("s2", dict(leave_one_subject_out(by_path))["s2"])


def test_lopo_fold_past_the_last_subject_says_how_many_there_are() -> None:
    message = "data.fold=5, but the 50 images have 5 subjects (folds 0..4); fix it with --set data.fold=N"
    with pytest.raises(ValueError, match=re.escape(message)):
        split_dataset(_samples(50), DataConfig(protocol="lopo", fold=5))


def test_morph_partial_protocol_sizes() -> None:
    """Races cycle W, white, B, 'w ', H: 30 of 50 are Caucasian; 20% test = 6, 10% val = 3."""
    races = ["W", "white", "B", "w ", "H"]
    samples = [AgeSample(ROOT / f"{i:02d}.jpg", 30, attributes={"race": races[i % 5]}) for i in range(50)]
    split = split_dataset(samples, DataConfig(protocol="morph_partial"))
    assert (len(split.train), len(split.val), len(split.test)) == (21, 3, 6)
    kept = {f"{i:02d}.jpg" for i in range(50) if i % 5 in (0, 1, 3)}
    assert set(_names(split.train + split.val + split.test)) == kept
    assert split == subset_then_random_split(samples, morph_partial_filter, 0.2, 0.1, seed=0)


def test_field_protocol_uses_the_datasets_own_split() -> None:
    samples = [AgeSample(ROOT / f"{i}.jpg", 30, split=part) for i, part in enumerate(["test", "train", "valid", "train"])]
    split = split_dataset(samples, DataConfig(protocol="field"))
    assert (_names(split.train), _names(split.val), _names(split.test)) == (["1.jpg", "3.jpg"], ["2.jpg"], ["0.jpg"])


def test_lists_protocol_reads_the_configured_files(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("s0/000.jpg\ns1/001.jpg\n")
    (tmp_path / "test.txt").write_text("s2/002.jpg\n")
    data = DataConfig(protocol="lists", train_list=str(tmp_path / "train.txt"), test_list=str(tmp_path / "test.txt"))
    split = split_dataset(_samples(10), data)
    assert (_names(split.train), split.val, _names(split.test)) == (["000.jpg", "001.jpg"], [], ["002.jpg"])


def test_lists_protocol_without_lists_names_the_settings() -> None:
    with pytest.raises(ValueError, match=re.escape("--set data.train_list=FILE --set data.test_list=FILE")):
        split_dataset(_samples(10), DataConfig(protocol="lists", train_list="train.txt"))


def test_unknown_protocol_lists_the_known_ones() -> None:
    message = "data.protocol 'kfold' is unknown; known: field, lists, lopo, morph_partial, random"
    with pytest.raises(ValueError, match=re.escape(message)):
        split_dataset(_samples(10), DataConfig(protocol="kfold"))


def test_a_registered_protocol_is_reachable_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocols, "PROTOCOLS", dict(PROTOCOLS))

    @register_protocol("oldest_test")
    def oldest_test(samples, data: DataConfig) -> Split:
        return Split(train=[s for s in samples if s.age < 26], test=[s for s in samples if s.age >= 26])

    split = split_dataset(_samples(14), DataConfig(protocol="oldest_test"))
    assert _names(split.test) == ["006.jpg", "013.jpg"]


@pytest.mark.parametrize(
    ("overrides", "sizes"),
    [
        ([], (35, 5, 10)),
        (["data.protocol=lopo", "data.fold=4"], (40, 0, 10)),
        (["data.protocol=random", "data.limit=20", "data.val_fraction=0"], (16, 0, 4)),
    ],
)
def test_the_training_run_splits_with_the_configured_protocol(overrides: list[str], sizes: tuple[int, int, int]) -> None:
    index = DatasetIndex(ROOT, "csv", _samples(50), [])
    split = make_split(load_config(None, overrides), index)
    assert (len(split.train), len(split.val), len(split.test)) == sizes
