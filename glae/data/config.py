"""The ``data`` section of an experiment: which dataset, how it is read and how it is split.

It lives with the data code (as ``ModelConfig`` lives with the model) so that the protocol
registry can read it without importing the experiment config above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from glae.data.datasets import CsvColumns


@dataclass
class DataConfig:
    path: str | None = None  # dataset folder or manifest; None = use --data on the command line
    format: str = "utkface"  # adapter name (glae.data.DATASET_FORMATS)
    csv_columns: CsvColumns = field(default_factory=CsvColumns)  # format csv: the column of each label, e.g. path: file
    protocol: Literal["random", "field", "lists"] = "random"  # seeded 80-20, the dataset's own split, or list files
    test_fraction: float = 0.2  # paper: 80-20
    val_fraction: float = 0.1  # carved from the training part, for model selection; never the test part
    split_seed: int = 0  # fixes the split independently of the training seed
    train_list: str | None = None  # protocol "lists": one relative path per line
    val_list: str | None = None
    test_list: str | None = None
    limit: int | None = None  # use a seeded random subset of N images (smoke tests, quick checks)
    clip_ages: bool = False  # ages above model.max_age: error (False) or clip to K (True)
    use_label_std: bool = False  # Gaussian σ from the annotated apparent-age std where known (LAP 2015)
    num_workers: int = 2  # loader processes; 0 loads in the training process
    cache: bool = True  # decode + resize training images once into a memory-mapped file (glae/data/cache.py)
    cache_dir: str | None = None  # where; None = $GLAE_CACHE_DIR or ~/.cache/glae/images
