"""Data layer: data specs -> :class:`Dataset` with a :class:`~genzoo.contract.DataInfo` and fixed splits."""

from genzoo.data.base import Dataset, ReferenceDensity, TensorDataset, split_tensors
from genzoo.data.pair import PairedDataset, pair_datasets
from genzoo.data.specs import DataOptions, load_dataset, read_examples, register_loader, spec_help

__all__ = [
           "DataOptions",
           "Dataset",
           "PairedDataset",
           "ReferenceDensity",
           "TensorDataset",
           "load_dataset",
           "pair_datasets",
           "read_examples",
           "register_loader",
           "spec_help",
           "split_tensors",
]
