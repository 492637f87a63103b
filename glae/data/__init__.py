"""Datasets and evaluation protocols: loading age labels and splitting them reproducibly."""

from glae.data.config import DataConfig
from glae.data.datasets import (
    DATASET_FORMATS,
    AgeSample,
    CsvColumns,
    DatasetError,
    DatasetIndex,
    SkippedFile,
    check_ages,
    load_dataset,
)
from glae.data.protocols import (
    PROTOCOLS,
    Split,
    balanced_test_subset,
    check_protocol,
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

__all__ = [
    "DATASET_FORMATS",
    "PROTOCOLS",
    "AgeSample",
    "CsvColumns",
    "DataConfig",
    "DatasetError",
    "DatasetIndex",
    "SkippedFile",
    "Split",
    "balanced_test_subset",
    "check_ages",
    "check_protocol",
    "leave_one_subject_out",
    "load_dataset",
    "morph_partial_filter",
    "random_split",
    "register_protocol",
    "split_dataset",
    "split_from_field",
    "split_from_lists",
    "subject_fold",
    "subset_then_random_split",
]
