"""Evaluation protocols of Section IV-A: how each dataset is divided into train/val/test.

Every split is deterministic (seeded, and independent of the order samples were loaded in)
so that a run can be repeated, and can be saved as relative paths in a run folder and
re-created exactly later with `Split.from_json`.

`PROTOCOLS` maps each ``data.protocol`` name to a function of the samples and the data
config (`register_protocol`); `split_dataset` applies the configured one. A new protocol
is one registered function at the end of this file.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from glae.data.config import DataConfig
from glae.data.datasets import AgeSample, DatasetError
from glae.metrics import age_class
from glae.typed import parse_json

log = logging.getLogger(__name__)

_PARTS = ("train", "val", "test")
_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class Split:
    """The train/val/test parts of one protocol (val may be empty)."""

    train: list[AgeSample]
    val: list[AgeSample] = field(default_factory=list)
    test: list[AgeSample] = field(default_factory=list)

    def to_json(self, root: Path) -> dict[str, list[str]]:
        """Per-part lists of paths relative to `root`, to save the split in a run folder.

        Relative paths keep the saved split valid when the dataset folder is moved; a path
        outside `root` is stored absolute. A manifest's paths are relative to its folder.
        """
        base = _folder(root)
        return {part: [_relative(s.path, base) for s in getattr(self, part)] for part in _PARTS}

    @classmethod
    def from_json(
        cls, data: Mapping[str, Sequence[str]], samples: Sequence[AgeSample], root: Path
    ) -> Split:
        """Re-create a saved split from the samples of a freshly loaded dataset.

        Raises:
            DatasetError: If a listed path is not among `samples` (the dataset changed).
        """
        by_path = {_key(s.path): s for s in samples}
        base = _folder(root)

        def lookup(part: str) -> list[AgeSample]:
            found = []
            for entry in data.get(part, []):
                sample = by_path.get(_key(base / entry))
                if sample is None:
                    raise DatasetError(f"saved split ({part}): {entry} is not in the dataset")
                found.append(sample)
            return found

        return cls(train=lookup("train"), val=lookup("val"), test=lookup("test"))


def read_split_file(path: Path, what: str = "split file") -> dict[str, list[str]]:
    """A ``split.json`` as ``glae train`` writes it, or one line saying why ``path`` is not one.

    Raises:
        DatasetError: ``path`` cannot be read, is not JSON, or is not lists of image paths per part.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"{what} {path} cannot be read ({error.strerror or error})") from None
    try:
        data = parse_json(raw.decode("utf-8"))
    except ValueError:  # not UTF-8, or not JSON
        raise DatasetError(f"{what} {path} is not JSON; pass the split.json a glae train run wrote") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in data.values()):
        raise DatasetError(f"{what} {path} is not a split (lists of image paths per part); pass the split.json a glae train run wrote")
    return data


def _key(path: Path) -> str:
    """Normalised absolute form of a path, so equal files compare equal as strings."""
    return os.path.normpath(os.path.abspath(path))


def _folder(root: Path) -> Path:
    """The folder saved paths are relative to: the dataset folder, or a manifest file's folder."""
    root = Path(root)
    return root.parent if root.is_file() else root


def _relative(path: Path, root: Path) -> str:
    """POSIX path relative to `root`, or the absolute path when outside it."""
    try:
        return Path(_key(path)).relative_to(_key(root)).as_posix()
    except ValueError:
        return str(path)


def _by_path(samples: Sequence[AgeSample]) -> list[AgeSample]:
    """Samples sorted by path: the canonical order that makes seeded splits order-independent."""
    return sorted(samples, key=lambda s: str(s.path))


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    """Reject fractions that would leave no training data, before any work is done."""
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if test_fraction + val_fraction >= 1:
        raise ValueError(
            f"test_fraction + val_fraction must be < 1, got {test_fraction + val_fraction}"
        )


def _count(total: int, fraction: float) -> int:
    """`total * fraction` rounded half up, so split sizes are predictable."""
    return math.floor(total * fraction + 0.5)


def random_split(
    samples: Sequence[AgeSample],
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Seeded random split (the paper's 80-20 protocol by default).

    Samples are sorted by path before shuffling, so the result depends only on the set of
    samples and the seed. The test part holds round(n * test_fraction) samples and the val
    part, carved from what would otherwise be training data, round(n * val_fraction).
    Each part is returned sorted by path.

    Raises:
        ValueError: Fractions outside [0, 1), summing to 1 or more, or no samples.
    """
    _check_fractions(test_fraction, val_fraction)
    if not samples:
        raise ValueError("random_split needs at least one sample")
    order = _by_path(samples)
    random.Random(seed).shuffle(order)
    n_test, n_val = _count(len(order), test_fraction), _count(len(order), val_fraction)
    return Split(
        train=_by_path(order[n_test + n_val :]),
        val=_by_path(order[n_test : n_test + n_val]),
        test=_by_path(order[:n_test]),
    )


def split_from_field(samples: Sequence[AgeSample]) -> Split:
    """Split shipped with the dataset (`AgeSample.split`), e.g. APPA-REAL's three files.

    "valid"/"validation" map to val. Every sample must carry a split: a partly labelled
    dataset would silently lose images.

    Raises:
        DatasetError: If a sample has no split or an unknown split name.
    """
    parts: dict[str, list[AgeSample]] = {part: [] for part in _PARTS}
    unlabelled = [s for s in samples if s.split is None]
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} of {len(samples)} samples have no split field, "
            f"e.g. {unlabelled[0].path}; use a random split or split lists instead"
        )
    for sample in samples:
        part = _SPLIT_NAMES.get(str(sample.split).strip().lower())
        if part is None:
            raise DatasetError(f"{sample.path}: unknown split {sample.split!r}")
        parts[part].append(sample)
    return _warn_shared_subjects(Split(**parts))


def _warn_shared_subjects(split: Split) -> Split:
    """A fixed split is the dataset's own; still, a person in both train and test inflates the
    test score, so it is said (a random split by subject is the remedy)."""
    trained = {s.subject for s in split.train if s.subject is not None}
    shared = sorted({s.subject for s in split.test if s.subject in trained})
    if shared:
        log.warning("%d subject(s) have images in both the train and the test part, e.g. %s: "
                    "test faces of people seen in training score better than new people would", len(shared), shared[0])
    return split


def _read_list(list_file: Path) -> list[tuple[int, str]]:
    """Non-blank lines of a split list with their line numbers."""
    if not list_file.is_file():
        raise DatasetError(f"{list_file} does not exist")
    lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, 1) if line.strip()]


def _suffix_index(samples: Sequence[AgeSample]) -> dict[str, list[AgeSample]]:
    """Samples grouped by file name, to match list entries by their trailing path parts."""
    index: dict[str, list[AgeSample]] = defaultdict(list)
    for sample in samples:
        index[sample.path.name].append(sample)
    return index


def _match(entry: str, index: Mapping[str, list[AgeSample]]) -> list[AgeSample]:
    """Samples whose path ends with the parts of `entry` (or equals it, if absolute)."""
    parts = PurePosixPath(entry.replace("\\", "/")).parts
    if not parts:  # "." or "./": names no file
        return []
    if PurePosixPath(entry).is_absolute():
        return [s for s in index.get(parts[-1], []) if _key(s.path) == _key(Path(entry))]
    return [s for s in index.get(parts[-1], []) if s.path.parts[-len(parts) :] == parts]


def split_from_lists(
    samples: Sequence[AgeSample],
    train_list: Path,
    test_list: Path,
    val_list: Path | None = None,
) -> Split:
    """Fixed split from list files of one path per line (as published for CACD / LAP).

    Entries are matched against the end of each sample's path, so lists may hold bare file
    names or paths relative to any folder of the dataset. Samples on no list are left out,
    since published lists often cover a subset.

    Raises:
        DatasetError: An entry matching no sample or several, or one sample listed twice
            (which would leak test images into training); messages name the list and line.
    """
    index = _suffix_index(samples)
    seen: dict[str, str] = {}
    lists = {"train": train_list, "val": val_list, "test": test_list}
    parts: dict[str, list[AgeSample]] = {part: [] for part in _PARTS}
    for part, list_file in lists.items():
        if list_file is None:
            continue
        for number, entry in _read_list(Path(list_file)):
            where = f"{list_file}:{number}"
            matches = _match(entry, index)
            if len(matches) != 1:
                problem = "matches no sample" if not matches else f"matches {len(matches)} samples"
                raise DatasetError(f"{where}: {entry!r} {problem}")
            key = _key(matches[0].path)
            if key in seen:
                raise DatasetError(f"{where}: {entry!r} already listed at {seen[key]}")
            seen[key] = where
            parts[part].append(matches[0])
    return _warn_shared_subjects(Split(**parts))


def leave_one_subject_out(samples: Sequence[AgeSample]) -> Iterator[tuple[str, Split]]:
    """One fold per subject, testing on that subject only (the FG-NET protocol).

    Subjects are visited in sorted order. Validation happens on the call, not on the first
    fold, so a dataset without subjects fails immediately.

    Raises:
        DatasetError: If any sample has no subject.
    """
    subjects = _subjects(samples)
    return ((subject, _subject_fold(samples, subject)) for subject in subjects)


def subject_fold(samples: Sequence[AgeSample], fold: int) -> tuple[str, Split]:
    """Fold `fold` of `leave_one_subject_out` (its subject and split), without the others.

    Raises:
        DatasetError: If any sample has no subject.
        ValueError: If there are not `fold` + 1 subjects.
    """
    subjects = _subjects(samples)
    if not 0 <= fold < len(subjects):
        raise ValueError(
            f"data.fold={fold}, but the {len(samples)} images have {len(subjects)} subjects "
            f"(folds 0..{len(subjects) - 1}); fix it with --set data.fold=N"
        )
    return subjects[fold], _subject_fold(samples, subjects[fold])


def _subjects(samples: Sequence[AgeSample]) -> list[str]:
    """Sorted subject ids; every sample needs one, or its image would be in no fold."""
    anonymous = [s for s in samples if s.subject is None]
    if anonymous:
        raise DatasetError(
            f"{len(anonymous)} samples have no subject, e.g. {anonymous[0].path}; "
            "leave-one-subject-out needs a subject for every sample"
        )
    return sorted({str(s.subject) for s in samples})


def _subject_fold(samples: Sequence[AgeSample], subject: str) -> Split:
    """The fold that tests on `subject` and trains on everyone else."""
    return Split(
        train=[s for s in samples if s.subject != subject],
        test=[s for s in samples if s.subject == subject],
    )


def subset_then_random_split(
    samples: Sequence[AgeSample],
    keep: Callable[[AgeSample], bool],
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Random split of the samples passing `keep` (MORPH II's "partial" protocol).

    Raises:
        ValueError: Bad fractions.
        DatasetError: If no sample passes `keep`.
    """
    _check_fractions(test_fraction, val_fraction)
    kept = [s for s in samples if keep(s)]
    if not kept:
        raise DatasetError(f"none of the {len(samples)} samples passes the subset filter")
    return random_split(kept, test_fraction, val_fraction, seed)


def morph_partial_filter(sample: AgeSample) -> bool:
    """Keep Caucasian faces (MORPH race code 'W', or 'white'; case-insensitive).

    The paper's 5,493-image MORPH II subset follows ref. [9], whose exact image list is not
    published; restricting to Caucasian subjects is the closest reproducible rule, so the
    resulting subset size differs from 5,493.
    """
    return sample.attributes.get("race", "").strip().lower() in {"w", "white"}


def balanced_test_subset(
    test: Sequence[AgeSample],
    per_age: int,
    seed: int = 0,
) -> list[AgeSample]:
    """The "-LT" test subset: `per_age` images for each integer age, drawn from `test` only.

    Each age is drawn with its own seeded generator, so its images do not change when other
    ages are added or dropped. Ages with fewer than `per_age` images are dropped, so that every
    age weighs the same. The result is sorted by age, then path.

    Raises:
        ValueError: If `per_age` < 1.
    """
    if per_age < 1:
        raise ValueError(f"per_age must be >= 1, got {per_age}")
    groups: dict[int, list[AgeSample]] = defaultdict(list)
    for sample in _by_path(test):
        groups[age_class(sample.age)].append(sample)
    subset: list[AgeSample] = []
    for age in sorted(groups):
        group = groups[age]
        if len(group) >= per_age:
            subset += _by_path(random.Random(f"{seed}/{age}").sample(group, per_age))
    return subset


# ---------------------------------------------------------------------------------------
# Registry: the data.protocol names
# ---------------------------------------------------------------------------------------

ProtocolFunction = Callable[[Sequence[AgeSample], DataConfig], Split]
"""A protocol: the samples (sorted by path, after ``data.limit``) and the data config -> the split."""

PROTOCOLS: dict[str, ProtocolFunction] = {}


def register_protocol(name: str) -> Callable[[ProtocolFunction], ProtocolFunction]:
    """Registers a protocol as ``data.protocol: name`` (a decorator, like ``register_backbone``)."""

    def register(protocol: ProtocolFunction) -> ProtocolFunction:
        PROTOCOLS[name] = protocol
        return protocol

    return register


def check_protocol(name: str) -> None:
    """Refuse an unregistered ``data.protocol``, listing the registered ones."""
    if name not in PROTOCOLS:
        raise ValueError(
            f"data.protocol {name!r} is unknown; known: {', '.join(sorted(PROTOCOLS))}; "
            "fix it with --set data.protocol=NAME"
        )


def split_dataset(samples: Sequence[AgeSample], data: DataConfig) -> Split:
    """The configured protocol's split, after the optional seeded ``data.limit`` subset.

    Samples are sorted by path first, so the subset, like every protocol, depends only on
    the set of samples, never on the order they were loaded in.
    """
    check_protocol(data.protocol)
    ordered = _by_path(samples)
    if data.limit is not None and data.limit < len(ordered):
        ordered = random.Random(data.split_seed).sample(ordered, data.limit)
    split = PROTOCOLS[data.protocol](ordered, data)
    if data.train_folds >= 2:
        fold_seed = data.split_seed if data.fold_seed is None else data.fold_seed
        split = replace(split, train=without_fold(split.train, data.train_folds, data.left_out_fold, fold_seed))
    return split


def without_fold(train: Sequence[AgeSample], folds: int, left_out: int, seed: int) -> list[AgeSample]:
    """``train`` (in its order) without fold ``left_out`` of ``folds`` seeded, near-equal folds.

    Folds are dealt from a seeded shuffle of the paths, so the ``folds`` runs of one seed leave
    out disjoint parts that together cover ``train``: every face is unseen by exactly one of
    them, which is what out-of-fold teachers (``glae teach --held-out``) need. Another seed
    deals another partition, so r seeds give each face r teachers that never saw it.
    """
    order = _by_path(train)
    random.Random(f"folds/{seed}").shuffle(order)
    left = {_key(sample.path) for sample in order[left_out::folds]}
    return [sample for sample in train if _key(sample.path) not in left]


@register_protocol("random")
def _random_protocol(samples: Sequence[AgeSample], data: DataConfig) -> Split:
    """Seeded random split: ``test_fraction`` for testing, ``val_fraction`` carved from training."""
    return random_split(samples, data.test_fraction, data.val_fraction, data.split_seed)


@register_protocol("field")
def _field_protocol(samples: Sequence[AgeSample], data: DataConfig) -> Split:
    """The split shipped with the dataset (LAP 2015's files, a manifest's split column)."""
    return split_from_field(samples)


@register_protocol("lists")
def _lists_protocol(samples: Sequence[AgeSample], data: DataConfig) -> Split:
    """Published list files: ``train_list`` and ``test_list``, ``val_list`` optional."""
    if not (data.train_list and data.test_list):
        raise ValueError(
            "protocol lists needs data.train_list and data.test_list; "
            "set them with --set data.train_list=FILE --set data.test_list=FILE"
        )
    val_list = Path(data.val_list) if data.val_list else None
    return split_from_lists(samples, Path(data.train_list), Path(data.test_list), val_list)


@register_protocol("lopo")
def _lopo_protocol(samples: Sequence[AgeSample], data: DataConfig) -> Split:
    """Leave one person out: fold ``data.fold`` tests on one subject and trains on all others.

    A full evaluation runs every fold (one run per ``data.fold``) and pools their test
    errors. There is no validation part (the protocol trains on every other subject), so
    the fractions are not used.
    """
    subject, split = subject_fold(samples, data.fold)
    log.info("lopo fold %d: testing on subject %s (%d images)", data.fold, subject, len(split.test))
    return split


@register_protocol("morph_partial")
def _morph_partial_protocol(samples: Sequence[AgeSample], data: DataConfig) -> Split:
    """MORPH II partial: the Caucasian subset (`morph_partial_filter`), then the random split."""
    return subset_then_random_split(
        samples, morph_partial_filter, data.test_fraction, data.val_fraction, data.split_seed
    )
