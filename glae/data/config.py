"""The ``data`` section of an experiment: which dataset, how it is read and how it is split.

It lives with the data code (as ``ModelConfig`` lives with the model) so that the protocol
registry can read it without importing the experiment config above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from glae.data.datasets import CsvColumns


@dataclass
class DataConfig:
    path: str | None = None  # dataset folder or manifest; None = use --data on the command line
    format: str = "utkface"  # adapter name (glae.data.DATASET_FORMATS)
    csv_columns: CsvColumns = field(default_factory=CsvColumns)  # format csv: the column of each label, e.g. path: file
    protocol: str = "random"  # a name in glae.data.PROTOCOLS: random, field, lists, lopo, morph_partial
    test_fraction: float = 0.2  # random, morph_partial: paper 80-20
    val_fraction: float = 0.1  # random, morph_partial: carved from the training part, for model selection; never the test part
    split_seed: int = 0  # fixes the split (and the limit subset) independently of the training seed
    train_list: str | None = None  # protocol "lists": one relative path per line
    val_list: str | None = None
    test_list: str | None = None
    fold: int = 0  # protocol lopo: the held-out subject, an index into the sorted subject ids (FG-NET: 0..81)
    limit: int | None = None  # use a seeded random subset of N images (smoke tests, quick checks)
    train_folds: int = 0  # k >= 2: train without one of k seeded folds of the train part (out-of-fold teachers, glae teach --held-out)
    left_out_fold: int = 0  # with train_folds: which fold (0..k-1) is left out; val and test are unchanged
    fold_seed: int | None = None  # with train_folds: seeds the folds (None: split_seed); another seed deals another partition (repeated k-fold)
    clip_ages: bool = False  # ages above model.max_age: error (False) or trained as K (True; val/test keep the true age)
    use_label_std: bool = False  # Gaussian σ from the annotated apparent-age std where known (LAP 2015)
    num_workers: int = 2  # loader processes; 0 loads in the training process
    cache: bool = True  # decode + resize training images once into a memory-mapped file (glae/data/cache.py)
    cache_dir: str | None = None  # where; None = $GLAE_CACHE_DIR or ~/.cache/glae/images

    def validate(self) -> None:
        """Refuse values no dataset could satisfy, in one line naming the setting that fixes it.

        Whether the protocol exists and whether `fold` names a subject are checked where
        the registry and the dataset are known (glae.data.protocols).
        """
        for name, value in (("test_fraction", self.test_fraction), ("val_fraction", self.val_fraction)):
            if not 0 <= value < 1:
                raise ValueError(f"data.{name} must be in [0, 1), got {value}; fix it with --set data.{name}=F")
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"data.test_fraction + data.val_fraction must be < 1 to leave training images, got "
                f"{self.test_fraction} + {self.val_fraction}; lower one with --set data.val_fraction=F"
            )
        if self.fold < 0:
            raise ValueError(f"data.fold must be >= 0, got {self.fold}; fix it with --set data.fold=N")
        # Settings only one protocol reads: set under another, they would be silently ignored
        # (a forgotten data.protocol=lists would give a random split instead of the lists).
        for name, protocol in (("train_list", "lists"), ("val_list", "lists"), ("test_list", "lists"), ("fold", "lopo")):
            if self.protocol != protocol and getattr(self, name) not in (None, 0):
                raise ValueError(f"data.{name} is read only by protocol {protocol}, but data.protocol is {self.protocol}; "
                                 f"add --set data.protocol={protocol}, or remove data.{name}")
        if self.train_folds == 1 or self.train_folds < 0:
            raise ValueError(f"data.train_folds must be 0 (off) or >= 2, got {self.train_folds}; fix it with --set data.train_folds=K")
        if not 0 <= self.left_out_fold < max(self.train_folds, 1):
            raise ValueError(f"data.left_out_fold must be in 0..{max(self.train_folds, 1) - 1} with data.train_folds "
                             f"{self.train_folds}, got {self.left_out_fold}; fix it with --set data.left_out_fold=N")
        if self.fold_seed is not None and self.train_folds < 2:
            raise ValueError(f"data.fold_seed is read only with data.train_folds >= 2, got train_folds {self.train_folds}; "
                             "add --set data.train_folds=K, or remove data.fold_seed")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"data.limit must be >= 1 or null, got {self.limit}; fix it with --set data.limit=N")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
