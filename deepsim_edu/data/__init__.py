"""Datasets: the on-disk layout (layout.py), pair samplers (pairs.py) and embedded generators."""

from .layout import (
    DATASET_NAMES,
    DatasetError,
    DatasetInfo,
    check_dataset_name,
    load_info,
    read_case,
    read_noise_mask,
    write_case,
    write_dataset_json,
)

__all__ = [
    "DATASET_NAMES",
    "DatasetError",
    "DatasetInfo",
    "check_dataset_name",
    "load_info",
    "read_case",
    "read_noise_mask",
    "write_case",
    "write_dataset_json",
]
