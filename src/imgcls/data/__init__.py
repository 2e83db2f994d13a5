"""Datasets, transforms, batch mixing, samplers and loaders."""

from imgcls.data.batch import CutMix, MixParams, MixSwitch, MixUp, build_mixer, soft_targets
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
from imgcls.data.samplers import BalancedBatchSampler, get_class_weights

__all__ = [
    "DATASETS",
    "BalancedBatchSampler",
    "CutMix",
    "DatasetNotFoundError",
    "MixParams",
    "MixSwitch",
    "MixUp",
    "RawDataset",
    "SplitView",
    "Splits",
    "build_mixer",
    "get_class_weights",
    "list_datasets",
    "load_dataset",
    "make_splits",
    "soft_targets",
]
