"""Data layer: data specs -> :class:`Dataset` with a :class:`~genzoo.contract.DataInfo` and fixed splits."""

from genzoo.data.base import Dataset, TensorDataset, split_tensors
from genzoo.data.specs import DataOptions, load_dataset, read_examples, register_loader, spec_help

__all__ = [
           "DataOptions",
           "Dataset",
           "TensorDataset",
           "load_dataset",
           "read_examples",
           "register_loader",
           "spec_help",
           "split_tensors",
]
