"""Distillation targets: what several trained models, averaged, say about each training face.

An ensemble of models is more accurate than any of them but costs one model's inference per
member. Distillation moves part of that gain into one model: ``glae teach`` averages the
members' vanilla distributions (flip-averaged, as evaluation reads them) over the training
faces of a split and writes them to a file; a stage with ``distill_from`` set trains its head
on that file's distribution of each face as well as on the face's label (Eq. 2's KL
divergence, with the teacher's distribution as the target). The file holds tensors and a
list of image names relative to the dataset folder, never code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import Dataset

from .data import AgeSample, DatasetError, Split
from .data.images import AgeImageDataset
from .fileio import atomic_write

_FORMAT = "glae-teacher-targets/1"


def save_teacher_targets(path: str | Path, names: Sequence[str], probabilities: Tensor, members: Sequence[str]) -> None:
    """Write ``probabilities [N, K+1]`` (row ``i`` for the image ``names[i]``) and the member models' names."""
    if probabilities.dim() != 2 or probabilities.shape[0] != len(names):
        raise ValueError(f"probabilities must be [len(names)={len(names)}, K+1], got {tuple(probabilities.shape)}")
    metadata = {"format": _FORMAT, "names": json.dumps(list(names)), "members": json.dumps(list(members))}
    tensors = {"probabilities": probabilities.float().contiguous()}
    atomic_write(path, lambda temp: save_file(tensors, temp, metadata=metadata))


def read_teacher_metadata(path: str | Path) -> dict[str, str]:
    """The header of a ``glae teach`` file, read without its tensors.

    Raises:
        DatasetError: the file cannot be read or was not written by ``glae teach``.
    """
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
    except (OSError, SafetensorError) as error:
        raise DatasetError(f"{path}: not a readable teacher-targets file ({error})") from None
    if metadata.get("format") != _FORMAT or keys != {"probabilities"}:
        raise DatasetError(f"{path}: not a teacher-targets file written by glae teach")
    return metadata


def teacher_targets_for(path: str | Path, samples: Sequence[AgeSample], root: Path, num_classes: int) -> Tensor:
    """The teacher's distribution of each of ``samples`` (``[len(samples), num_classes]``), from a ``glae teach`` file.

    Raises:
        DatasetError: the file is not a teacher-targets file, has another number of age
            classes, or lacks one of the samples (it was made for another split or dataset).
    """
    metadata = read_teacher_metadata(path)
    probabilities = load_file(str(path))["probabilities"]
    if probabilities.shape[1] != num_classes:
        raise DatasetError(f"{path}: its distributions have {probabilities.shape[1]} age classes, the model has {num_classes}")
    row_of = {name: row for row, name in enumerate(json.loads(metadata["names"]))}
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


__all__ = ["WithTeacherTargets", "read_teacher_metadata", "save_teacher_targets", "teacher_targets_for"]
