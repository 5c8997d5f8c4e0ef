"""idx files (the MNIST / Fashion-MNIST format), parsed with numpy from bytes.

A folder holding the four standard files, gzipped or not, is a dataset: ``train-*`` files are
the training set (ids ``"0"``.. in file order), ``t10k-*`` the test set (``"test-0"``..).
Corrupt files fail with a one-line :class:`DatasetError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from unlearning_core.data.manifest import build_dataset
from unlearning_core.data.sampleset import Dataset
from unlearning_core.errors import DatasetError

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim
_GZIP_MAGIC = b"\x1f\x8b"

#: Standard file stems, in the order (train images, train labels, test images, test labels).
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _read_bytes(path: Path) -> bytes:
    """File bytes, gunzipped when the name ends in ``.gz`` or the content is gzip."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: bad gzip data ({exc})") from None
    if path.suffix == ".gz":
        raise DatasetError(f"{path}: bad gzip data (not a gzip file)")
    return raw


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of one idx file, checked against ``magic`` and the header's dims."""
    path = Path(path)
    data = _read_bytes(path)
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    if len(data) < 4:
        raise DatasetError(f"{path}: truncated: {len(data)} bytes, too short for an idx header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(
            f"{path}: wrong magic 0x{found:08x}, expected 0x{magic:08x} (idx {kind} file)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated: header needs {header} bytes, file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(dims, dtype=np.int64))
    have = len(data) - header
    if have < need:
        raise DatasetError(
            f"{path}: truncated: header says {' x '.join(map(str, dims))} = {need} bytes of "
            f"data, found {have}"
        )
    if have > need:
        raise DatasetError(
            f"{path}: {have - need} unexpected bytes after the {need} bytes the header describes"
        )
    return np.frombuffer(data, dtype=np.uint8, count=need, offset=header).reshape(dims)


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """``stem`` or ``stem.gz`` in ``folder`` (raw preferred: no decompression)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def is_idx_folder(folder: Path) -> bool:
    """True when the folder holds any of the standard idx files (so missing ones are errors)."""
    return any(find_idx_file(folder, stem) is not None for stem in IDX_FILES)


def _read_pair(folder: Path, images_stem: str, labels_stem: str) -> tuple[np.ndarray, np.ndarray]:
    paths = []
    for stem in (images_stem, labels_stem):
        found = find_idx_file(folder, stem)
        if found is None:
            raise DatasetError(f"{folder / stem}: file not found (nor {stem}.gz)")
        paths.append(found)
    images = read_idx(paths[0], IDX_IMAGES_MAGIC)
    labels = read_idx(paths[1], IDX_LABELS_MAGIC)
    if images.ndim != 3:
        raise DatasetError(f"{paths[0]}: expected 3 dims (N x H x W), header has {images.ndim}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{paths[1]}: {labels.shape[0]} labels but {paths[0].name} has {images.shape[0]} images"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{paths[0]}: holds no images")
    return images, labels


def _check_label_range(labels: np.ndarray, *, paths: tuple[Path, str], others: np.ndarray) -> None:
    """Refuse a label far above every other one (a corrupt byte in a label file).

    ``num_classes`` is the largest label + 1, so one damaged byte (200 among labels 0..9)
    would silently make a 201-class dataset. The classes of an idx dataset are 0..K-1
    without gaps, so a label above a class that never occurs is damage.
    """
    seen = np.union1d(np.unique(labels), np.unique(others))
    gaps = np.setdiff1d(np.arange(int(seen.max()) + 1), seen)
    if gaps.size == 0:
        return
    above = seen[seen > gaps.min()]
    bad = [int(v) for v in np.unique(labels) if v in above]
    if bad:
        folder, stem = paths
        where = int(np.flatnonzero(np.isin(labels, bad))[0])
        raise DatasetError(
            f"{find_idx_file(folder, stem) or folder / stem}: label {bad[-1]} (position {where}) is out of "
            f"range: labels must be 0..K-1 without gaps, and {int(gaps.min())} never occurs"
        )


def load_idx_folder(
    folder: Path, *, name: str | None = None, class_names: tuple[str, ...] | None = None
) -> Dataset:
    """The four idx files in ``folder`` as a dataset; ``num_classes`` = max label + 1."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: idx dataset folder not found")
    x_train, y_train = _read_pair(folder, IDX_FILES[0], IDX_FILES[1])
    x_test, y_test = _read_pair(folder, IDX_FILES[2], IDX_FILES[3])
    _check_label_range(y_train, paths=(folder, IDX_FILES[1]), others=y_test)
    _check_label_range(y_test, paths=(folder, IDX_FILES[3]), others=y_train)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if class_names is None and folder.name.lower().replace("_", "-") in (
        "fashion-mnist",
        "fashionmnist",
    ) and num_classes == len(FASHION_MNIST_CLASSES):
        class_names = FASHION_MNIST_CLASSES  # a user's own copy of Fashion-MNIST
    try:
        return build_dataset(
            x_train,
            y_train,
            [str(i) for i in range(len(y_train))],
            test_images=x_test,
            test_labels=y_test,
            name=name if name is not None else str(folder),
            num_classes=num_classes,
            class_names=class_names,
        )
    except DatasetError as exc:
        raise DatasetError(f"{folder}: {exc}") from None
