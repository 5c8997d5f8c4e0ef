"""``load_dataset(spec)``: one entry point for built-in names, idx folders, image folders
and ``.npz`` manifests, so the CLI, API and worker never branch on where data comes from."""

from __future__ import annotations

import os
from pathlib import Path

from unlearning_core.data.digits import load_digits_dataset
from unlearning_core.data.idx import FASHION_MNIST_CLASSES, is_idx_folder, load_idx_folder
from unlearning_core.data.image_folder import load_image_folder
from unlearning_core.data.manifest import load_manifest
from unlearning_core.data.plugins import is_dataset_plugin, load_plugin
from unlearning_core.data.sampleset import Dataset
from unlearning_core.data.subjects import SubjectMap, apply_subject_map
from unlearning_core.errors import DatasetError

#: Names ``load_dataset`` understands without a path.
DATASET_NAMES: tuple[str, ...] = ("digits", "fashion-mnist")

#: Environment variable naming the folder that holds ``fashion-mnist/`` and friends.
DATA_DIR_ENV = "LETHE_DATA_DIR"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    """Where real dataset files live: ``$LETHE_DATA_DIR``, else ``../shared/data`` beside the
    working directory or beside the checkout (data is never downloaded at run time)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    candidates = (Path.cwd() / ".." / "shared" / "data", _REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    raise DatasetError(
        f"no data directory: set {DATA_DIR_ENV} or pass data_dir "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


def _load_fashion_mnist(data_dir: Path | None) -> Dataset:
    folder = Path(data_dir if data_dir is not None else default_data_dir()) / "fashion-mnist"
    if not folder.is_dir():
        raise DatasetError(f"fashion-mnist: folder {folder} not found (set {DATA_DIR_ENV})")
    return load_idx_folder(folder, name="fashion-mnist", class_names=FASHION_MNIST_CLASSES)


def load_dataset(
    spec: str,
    *,
    seed: int = 0,
    subject_size: int | None = None,
    test_fraction: float = 0.2,
    data_dir: Path | None = None,
    subject_map: str | Path | SubjectMap | None = None,
) -> Dataset:
    """Load ``spec``: a built-in name (:data:`DATASET_NAMES`), an installed dataset plug-in
    (entry-point group ``lethe.datasets``, :mod:`unlearning_core.data.plugins`) or a path to
    an idx folder, an ImageFolder tree or an ``.npz`` manifest.

    ``seed`` and ``test_fraction`` fix the split where the data has no test set of its own.
    Subjects: ``subject_size`` names consecutive training samples as subjects, or
    ``subject_map`` (a CSV or Parquet file of ``sample_id,subject_id``,
    :mod:`unlearning_core.data.subjects`) names each sample's; either replaces the data's
    own. Dataset names of paths are the resolved path, so a run can load the same data again.
    """
    if subject_size is not None and subject_map is not None:
        raise DatasetError("give subjects either by size (subject_size) or by a subject map, not both")
    key = str(spec).strip()
    if key.lower() == "digits":
        dataset = load_digits_dataset(seed=seed, test_fraction=test_fraction)
    elif key.lower() == "fashion-mnist":
        dataset = _load_fashion_mnist(data_dir)
    elif key and is_dataset_plugin(key):
        dataset = load_plugin(key, seed=seed, test_fraction=test_fraction, data_dir=data_dir)
    else:
        path = Path(key).expanduser() if key else None
        if path is None or not path.exists():
            raise DatasetError(
                f"unknown dataset {str(spec)!r}: not a built-in name "
                f"({', '.join(DATASET_NAMES)}) nor an existing path"
            )
        path = path.resolve()
        if path.is_dir():
            if is_idx_folder(path):
                dataset = load_idx_folder(path, name=str(path))
            else:
                dataset = load_image_folder(
                    path, seed=seed, test_fraction=test_fraction, name=str(path)
                )
        elif path.suffix.lower() == ".npz":
            dataset = load_manifest(path, seed=seed, test_fraction=test_fraction, name=str(path))
        else:
            raise DatasetError(
                f"{path}: not a dataset; give a folder (idx files or class subfolders of "
                f"images), an .npz manifest, or one of {', '.join(DATASET_NAMES)}"
            )
    if subject_map is not None:
        return apply_subject_map(dataset, subject_map)
    return dataset.with_subject_size(subject_size)
