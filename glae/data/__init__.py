"""Datasets and evaluation protocols: loading age labels and splitting them reproducibly."""

from glae.data.config import DataConfig
from glae.data.datasets import (
    DATASET_FORMATS,
    IMAGE_EXTENSIONS,
    AgeSample,
    CsvColumns,
    DatasetError,
    DatasetIndex,
    SkippedFile,
    check_ages,
    load_dataset,
)
from glae.data.protocols import (
    Split,
    balanced_test_subset,
    leave_one_subject_out,
    morph_partial_filter,
    random_split,
    split_from_field,
    split_from_lists,
    subset_then_random_split,
)

__all__ = [
    "DATASET_FORMATS",
    "IMAGE_EXTENSIONS",
    "AgeSample",
    "CsvColumns",
    "DataConfig",
    "DatasetError",
    "DatasetIndex",
    "SkippedFile",
    "Split",
    "balanced_test_subset",
    "check_ages",
    "leave_one_subject_out",
    "load_dataset",
    "morph_partial_filter",
    "random_split",
    "split_from_field",
    "split_from_lists",
    "subset_then_random_split",
]
