"""Distillation targets: what several trained models, averaged, say about each training face.

An ensemble of models is more accurate than any of them but costs one model's inference per
member. Distillation moves part of that gain into one model: ``glae teach`` averages the
members' vanilla distributions (flip-averaged, as evaluation reads them) over the training
faces of a split and writes them to a file; a stage with ``distill_from`` set trains its head
on that file's distribution of each face as well as on the face's label (Eq. 2's KL
divergence, with the teacher's distribution as the target). The file holds tensors and a
list of image names relative to the dataset folder, never code.

A teach file may itself be a teacher of a later ``glae teach``: it counts as one member for
the faces it holds. That is how k-fold targets survive a lost machine: each fold's held-out
labels (``--held-out --partial``, about a megabyte) are written as soon as the fold finishes,
and the folds' files are merged at the end without their models.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from torch.utils.data import Dataset

from .checkpoint import load_model
from .data import AgeSample, DatasetError, Split, read_split_file
from .data.images import AgeImageDataset
from .evaluate import InferencePass, predict_samples
from .fileio import atomic_write_bytes
from .typed import parse_json

log = logging.getLogger(__name__)

_FORMAT = "glae-teacher-targets/1"


def eval_faces_digest(faces: Collection[str]) -> str:
    """A fingerprint of the student's val and test faces, which a teach file was checked against."""
    return hashlib.sha256("\n".join(sorted(faces)).encode()).hexdigest()


def save_teacher_targets(path: str | Path, names: Sequence[str], probabilities: Tensor, members: Sequence[str],
                         checked_eval_faces: str) -> None:
    """Write ``probabilities [N, K+1]`` (row ``i`` for the image ``names[i]``) and the member models' names.

    ``checked_eval_faces`` is the ``eval_faces_digest`` of the val and test faces no member
    trained on; a later ``glae teach`` merges the file only into targets for that split.
    """
    if probabilities.dim() != 2 or probabilities.shape[0] != len(names):
        raise ValueError(f"probabilities must be [len(names)={len(names)}, K+1], got {tuple(probabilities.shape)}")
    metadata = {"format": _FORMAT, "names": json.dumps(list(names)), "members": json.dumps(list(members)),
                "checked_eval_faces": checked_eval_faces}
    tensors = {"probabilities": probabilities.float().contiguous()}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))  # checked bytes: a full disk cannot leave a short file


def teacher_distributions(
    members: Sequence[Path], samples: Sequence[AgeSample], names: Sequence[str], run: InferencePass,
    held_out: bool = False, student_eval_faces: Collection[str] = (), partial: bool = False,
) -> tuple[list[int], Tensor]:
    """Each face's mean vanilla distribution over ``members``: the rows of ``samples`` labelled, and ``[rows, K+1]``.

    ``names`` are the faces' paths as a run's ``split.json`` lists them. A member is a model
    file or an earlier teach file (one teacher of the faces it holds). With ``held_out``, a
    face is averaged only over the models whose run folder (``split.json`` beside the model
    file) did not train on it: a teacher's view of a face it fitted says little more than its
    label. A model whose run trained on one of ``student_eval_faces`` (the student's val and
    test faces) is refused, since its targets would carry those labels into the student; so is
    a teach file checked against other val and test faces. Every face must have a teacher
    unless ``partial``, which labels only those that have one (one fold's held-out labels).

    Raises:
        ValueError: a teacher saw the student's evaluation faces, a face has no teacher, a
            ``--held-out`` model has no run folder, or the teachers' age ranges differ.
    """
    counts = torch.zeros(len(samples))
    total: Tensor | None = None
    eval_digest = eval_faces_digest(student_eval_faces)
    for path in members:
        if is_teacher_file(path):
            rows, mean = _rows_of_teach_file(path, names, eval_digest)
        else:
            rows, mean = _rows_of_model(path, samples, names, run, held_out, student_eval_faces)
        if total is None:
            total = torch.zeros(len(samples), mean.shape[1])
        if mean.shape[1] != total.shape[1]:
            raise ValueError(f"{path} predicts ages 0-{mean.shape[1] - 1}, {members[0]} 0-{total.shape[1] - 1}: "
                             "the teachers must share their age range")
        total[rows] += mean
        counts[rows] += 1
        log.info("%s labelled %d training faces", path, len(rows))
    assert total is not None, "no members"
    if (counts == 0).any() and not partial:
        first = names[int((counts == 0).nonzero()[0])]
        raise ValueError(f"{int((counts == 0).sum())} training faces have no teacher, e.g. {first}: under --held-out "
                         "each face needs a model that never trained on it (one run per data.left_out_fold=0..K-1 with "
                         "data.train_folds=K), and a teach file labels only the faces it holds; --partial writes the rest")
    labelled = (counts > 0).nonzero().flatten()
    return labelled.tolist(), total[labelled] / counts[labelled, None]


def is_teacher_file(path: Path) -> bool:
    """Whether ``path`` was written by ``glae teach`` (its header says so), as opposed to a model file."""
    try:
        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get("format") == _FORMAT
    except (OSError, SafetensorError):
        return False


def _rows_of_model(path: Path, samples: Sequence[AgeSample], names: Sequence[str], run: InferencePass,
                   held_out: bool, student_eval_faces: Collection[str]) -> tuple[list[int], Tensor]:
    """The faces a model labels (all, or under ``held_out`` those its run never trained on) and its flip-averaged view of them."""
    trained_on = _trained_on(path, required=held_out)
    leaked = sorted(trained_on.intersection(student_eval_faces))
    if leaked:
        raise ValueError(f"{path} trained on {len(leaked)} of the student's val/test faces, e.g. {leaked[0]} "
                         f"({path.parent / 'split.json'}); its targets would leak their labels into the student's evaluation")
    rows = [row for row, name in enumerate(names) if name not in trained_on] if held_out else list(range(len(samples)))
    if not rows:
        raise ValueError(f"{path} trained on every training face, so under --held-out it labels none; "
                         "pass runs trained with data.train_folds")
    model, _ = load_model(path, run.device)
    views, _, _ = predict_samples(model, [samples[row] for row in rows], "vanilla", run)
    return rows, views["vanilla"].mean(0)  # flip-averaged, as evaluation reads a model


def _rows_of_teach_file(path: Path, names: Sequence[str], eval_digest: str) -> tuple[list[int], Tensor]:
    """The training faces an earlier teach file holds, and its distributions of them."""
    file_names, metadata = _teach_header(path)
    if metadata.get("checked_eval_faces") != eval_digest:
        raise ValueError(f"{path} was made for a split with other val/test faces (or by an older GLAE), so its members "
                         "may have trained on this student's; make it again with glae teach --split of this student")
    row_of = {name: row for row, name in enumerate(file_names)}
    rows = [row for row, name in enumerate(names) if name in row_of]
    if not rows:
        raise ValueError(f"{path} holds none of the student's training faces; it was made for another split or dataset")
    return rows, load_file(str(path))["probabilities"][[row_of[names[row]] for row in rows]]


def _trained_on(model_path: Path, required: bool) -> set[str]:
    """The faces the run of ``RUN/model.safetensors`` trained on (``RUN/split.json``); empty if unknown and not ``required``."""
    split_file = model_path.parent / "split.json"
    if not split_file.is_file():
        if required:
            raise ValueError(f"--held-out reads which faces {model_path} trained on from {split_file}, which is missing; "
                             "pass the model.safetensors of a glae train run folder")
        return set()
    return set(read_split_file(split_file, "the split of")["train"])


def read_teacher_names(path: str | Path) -> list[str]:
    """The image names of a ``glae teach`` file (row ``i`` is ``names[i]``), read and checked without its tensors.

    Raises:
        DatasetError: the file cannot be read or was not written by ``glae teach``.
    """
    return _teach_header(path)[0]


def _teach_header(path: str | Path) -> tuple[list[str], dict[str, str]]:
    """A teach file's image names and metadata, checked (see ``read_teacher_names``)."""
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
            shape = handle.get_slice("probabilities").get_shape() if keys == {"probabilities"} else []
    except (OSError, SafetensorError) as error:
        raise DatasetError(f"{path}: not a readable teacher-targets file ({error})") from None
    if metadata.get("format") != _FORMAT or keys != {"probabilities"}:
        raise DatasetError(f"{path}: not a teacher-targets file written by glae teach")
    try:
        names = parse_json(metadata.get("names", ""))
    except ValueError:
        names = None
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)) or len(shape) != 2 or shape[0] != len(names):
        raise DatasetError(f"{path}: a damaged teacher-targets file (its image names and distributions do not match); "
                           "make it again with glae teach")
    return names, metadata


def teacher_targets_for(path: str | Path, samples: Sequence[AgeSample], root: Path, num_classes: int) -> Tensor:
    """The teacher's distribution of each of ``samples`` (``[len(samples), num_classes]``), from a ``glae teach`` file.

    Raises:
        DatasetError: the file is not a teacher-targets file, has another number of age
            classes, or lacks one of the samples (it was made for another split or dataset).
    """
    file_names = read_teacher_names(path)
    probabilities = load_file(str(path))["probabilities"]
    if probabilities.shape[1] != num_classes:
        raise DatasetError(f"{path}: its distributions have {probabilities.shape[1]} age classes, the model has {num_classes}")
    row_of = {name: row for row, name in enumerate(file_names)}
    names = Split(list(samples)).to_json(root)["train"]
    missing = [name for name in names if name not in row_of]
    if missing:
        raise DatasetError(f"{path}: no teacher distribution for {len(missing)} training images, e.g. {missing[0]}; "
                           "make the file with glae teach on this run's split")
    return probabilities[[row_of[name] for name in names]]


class WithTeacherTargets(Dataset):
    """A training dataset whose items carry the teacher's distribution of their face as a fourth element."""

    def __init__(self, images: AgeImageDataset, targets: Tensor) -> None:
        if len(targets) != len(images):
            raise ValueError(f"{len(targets)} teacher distributions for {len(images)} images")
        self.images = images
        self.samples = images.samples
        self.targets = targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, float, float, Tensor]:
        index = key[0] if isinstance(key, tuple) else key
        return (*self.images[key], self.targets[index])


__all__ = ["WithTeacherTargets", "eval_faces_digest", "is_teacher_file", "read_teacher_names", "save_teacher_targets", "teacher_distributions",
           "teacher_targets_for"]
