"""Datasets, transforms and loaders."""

from imgcls.data.datasets import (
    DATASETS,
    DatasetNotFoundError,
    RawDataset,
    Splits,
    SplitView,
    list_datasets,
    load_dataset,
    make_splits,
)

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "RawDataset",
    "SplitView",
    "Splits",
    "list_datasets",
    "load_dataset",
    "make_splits",
]
