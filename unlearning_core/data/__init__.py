"""Datasets with stable sample ids: built-ins (digits, Fashion-MNIST), idx folders, image
folders and ``.npz`` manifests, all loaded through :func:`load_dataset`."""

from unlearning_core.data.loader import DATASET_NAMES, default_data_dir, load_dataset
from unlearning_core.data.manifest import from_arrays
from unlearning_core.data.sampleset import Dataset, SampleSet, consecutive_subjects

__all__ = [
    "DATASET_NAMES",
    "Dataset",
    "SampleSet",
    "consecutive_subjects",
    "default_data_dir",
    "from_arrays",
    "load_dataset",
]
