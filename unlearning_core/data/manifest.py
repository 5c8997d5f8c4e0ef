"""Arrays with ids -> :class:`Dataset`: the in-memory path and the ``.npz`` manifest.

Every other loader (digits, idx, image folders) ends in :func:`build_dataset`, so validation
(shapes, unique ids, label range) and pixel normalisation happen in one place and every
dataset Lethe trains on looks the same: float32 ``N x C x H x W`` in [-1, 1], int64 labels.
"""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearning_core.data.sampleset import Dataset, SampleSet
from unlearning_core.errors import DatasetError

#: Keys a manifest may hold; anything else in the file is ignored.
MANIFEST_KEYS = (
    "images",
    "labels",
    "sample_ids",
    "subject_ids",
    "test_images",
    "test_labels",
    "class_names",
)


def normalise_images(
    images: Any, *, what: str = "images", scale: float | None = None
) -> torch.Tensor:
    """Pixels -> contiguous float32 ``N x C x H x W`` scaled to [0, 1] then mapped to [-1, 1].

    Integer pixels must be 0..255 (divided by 255); float pixels must already lie in [0, 1]
    unless ``scale`` says what their maximum is (digits: 16). Checking the range instead of
    guessing stops data that was normalised twice from training silently.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[:, None, :, :]
    if arr.ndim != 4:
        raise DatasetError(f"{what} must be N x H x W or N x C x H x W, got shape {arr.shape}")
    if arr.shape[0] == 0 or 0 in arr.shape[1:]:
        raise DatasetError(f"{what} is empty (shape {arr.shape})")
    if arr.shape[1] not in (1, 3, 4) and arr.shape[3] in (1, 3, 4):
        raise DatasetError(
            f"{what} has shape {arr.shape}, which looks channels-last; pass N x C x H x W"
        )
    if arr.dtype.kind in "iu":
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DatasetError(f"integer {what} must be 0..255, got values {lo}..{hi}")
        out = arr.astype(np.float32) / np.float32(255.0 if scale is None else scale)
    elif arr.dtype.kind == "f":
        out = arr.astype(np.float32)
        if scale is not None:
            out /= np.float32(scale)
        if not np.isfinite(out).all():
            raise DatasetError(f"{what} holds NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise DatasetError(
                f"float {what} must lie in [0, 1], got values {lo:g}..{hi:g} "
                "(pass uint8 for 0..255 pixels; do not normalise beforehand)"
            )
    else:
        raise DatasetError(f"{what} must be integer or float pixels, got dtype {arr.dtype}")
    out = (out - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))


def _as_labels(labels: Any, n: int, *, what: str = "labels") -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DatasetError(f"{what} must be a 1-D array of {n} labels, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise DatasetError(f"{what} must be integers, got dtype {arr.dtype}")
    if n and int(arr.min()) < 0:
        raise DatasetError(f"{what} must be >= 0, got {int(arr.min())}")
    return arr.astype(np.int64)


def _strings(arr: np.ndarray) -> list[str]:
    """A numpy string array (unicode or utf-8 bytes) as Python strings."""
    if arr.dtype.kind == "S":
        return [b.decode("utf-8") for b in arr.reshape(-1).tolist()]
    return [str(s) for s in arr.reshape(-1).tolist()]


def _as_ids(ids: Any, n: int, *, what: str) -> tuple[str, ...]:
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "US" and ids.ndim == 1:
        ids = _strings(ids)
    out = list(ids)
    if len(out) != n:
        raise DatasetError(f"{what} has {len(out)} entries but there are {n} images")
    for i, sid in enumerate(out):
        if not isinstance(sid, str):
            raise DatasetError(f"{what} must be strings, got {type(sid).__name__} at position {i}")
        if not sid:
            raise DatasetError(f"{what} must not be empty strings (position {i})")
    ids_t = tuple(str(s) for s in out)
    dup = [sid for sid, count in Counter(ids_t).items() if count > 1]
    if dup:
        shown = ", ".join(repr(d) for d in dup[:3]) + (" ..." if len(dup) > 3 else "")
        raise DatasetError(f"{what} must be unique; {len(dup)} duplicated: {shown}")
    return ids_t


def _as_subjects(subject_ids: Any, n: int) -> tuple[str | None, ...]:
    if subject_ids is None:
        return (None,) * n
    if isinstance(subject_ids, np.ndarray) and subject_ids.dtype.kind in "US":
        subject_ids = _strings(subject_ids)
    out = list(subject_ids)
    if len(out) != n:
        raise DatasetError(f"subject_ids has {len(out)} entries but there are {n} images")
    subjects: list[str | None] = []
    for i, s in enumerate(out):
        if s is None or s == "":
            subjects.append(None)
        elif isinstance(s, str):
            subjects.append(str(s))
        else:
            raise DatasetError(
                f"subject_ids must be strings, got {type(s).__name__} at position {i}"
            )
    return tuple(subjects)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split; both halves come back sorted so samples keep file order.

    Own implementation (not sklearn's) so the split, and with it every sample id that depends
    on it, cannot change with a library upgrade. A class keeps at least one training sample.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test fraction must be between 0 and 1, got {test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    test_parts = []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        perm = rng.permutation(pos)  # always drawn, so later classes see the same stream
        k = min(int(math.floor(len(pos) * test_fraction + 0.5)), len(pos) - 1)
        test_parts.append(perm[:k])
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    if len(test) == 0 or len(train) == 0:
        raise DatasetError(
            f"{len(labels)} samples are too few to split off a test fraction of {test_fraction}"
        )
    return train.astype(np.int64), test.astype(np.int64)


def build_dataset(
    images: Any,
    labels: Any,
    sample_ids: Sequence[str] | np.ndarray,
    subject_ids: Sequence[str | None] | np.ndarray | None = None,
    *,
    test_images: Any = None,
    test_labels: Any = None,
    test_sample_ids: Sequence[str] | None = None,
    name: str = "arrays",
    seed: int = 0,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    image_scale: float | None = None,
) -> Dataset:
    """The shared end of every loader: validate, normalise, split if no test set was given.

    ``test_sample_ids`` defaults to ``test-0``, ``test-1``, ...; ``image_scale`` is the value
    of a white pixel when it is not 255 (digits: 16).
    """
    x = normalise_images(images, what="images", scale=image_scale)
    n = x.shape[0]
    y = _as_labels(labels, n)
    ids = _as_ids(sample_ids, n, what="sample_ids")
    subjects = _as_subjects(subject_ids, n)

    if (test_images is None) != (test_labels is None):
        raise DatasetError("test_images and test_labels must be given together")
    if test_images is not None:
        tx = normalise_images(test_images, what="test_images", scale=image_scale)
        if tx.shape[1:] != x.shape[1:]:
            raise DatasetError(
                f"test_images are {tuple(tx.shape[1:])} (C x H x W) but images are "
                f"{tuple(x.shape[1:])}"
            )
        ty = _as_labels(test_labels, tx.shape[0], what="test_labels")
        tids = _as_ids(
            test_sample_ids if test_sample_ids is not None
            else [f"test-{i}" for i in range(tx.shape[0])],
            tx.shape[0],
            what="test sample ids",
        )
        train = SampleSet(x, torch.from_numpy(y), ids, subjects)
        test = SampleSet(tx, torch.from_numpy(ty), tids, (None,) * len(tids))
        all_labels = np.concatenate([y, ty])
    else:
        train_pos, test_pos = stratified_split(y, test_fraction, seed)
        full = SampleSet(x, torch.from_numpy(y), ids, subjects)
        train, test = full.subset(train_pos), full.subset(test_pos)
        all_labels = y

    max_label = int(all_labels.max())
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else max_label + 1
    if num_classes < 1 or max_label >= num_classes:
        raise DatasetError(
            f"labels must be in 0..{num_classes - 1} for {num_classes} classes, "
            f"got label {max_label}"
        )
    if class_names is None:
        names = tuple(str(i) for i in range(num_classes))
    else:
        names = tuple(str(c) for c in class_names)
        if len(names) != num_classes:
            raise DatasetError(f"{len(names)} class names given for {num_classes} classes")
    return Dataset(name=name, train=train, test=test, num_classes=num_classes, class_names=names)


def from_arrays(
    images: Any,
    labels: Any,
    sample_ids: Sequence[str] | np.ndarray,
    subject_ids: Sequence[str | None] | np.ndarray | None = None,
    *,
    test_images: Any = None,
    test_labels: Any = None,
    name: str = "arrays",
    seed: int = 0,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> Dataset:
    """A dataset from in-memory arrays: the user's own data with their own ids.

    ``images`` is ``N x H x W`` or ``N x C x H x W``, uint8 0..255 or float in [0, 1].
    Subject id ``""`` or ``None`` means the sample belongs to no named subject. Without
    ``test_images`` a seeded stratified split (``test_fraction``) makes the test set and
    the training samples keep their order and ids.
    """
    return build_dataset(
        images,
        labels,
        sample_ids,
        subject_ids,
        test_images=test_images,
        test_labels=test_labels,
        name=name,
        seed=seed,
        test_fraction=test_fraction,
        num_classes=num_classes,
        class_names=class_names,
    )


def load_manifest(
    path: Path, *, seed: int = 0, test_fraction: float = 0.2, name: str | None = None
) -> Dataset:
    """Read an ``.npz`` manifest (never with pickle: a manifest is untrusted user input)."""
    path = Path(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: manifest file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable .npz manifest ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path}: a manifest must be an .npz archive of named arrays")
    with npz:
        missing = [k for k in ("images", "labels", "sample_ids") if k not in npz.files]
        if missing:
            raise DatasetError(
                f"{path}: manifest lacks {', '.join(missing)} "
                f"(has {', '.join(npz.files) or 'nothing'})"
            )
        arrays: dict[str, np.ndarray] = {}
        for key in MANIFEST_KEYS:
            if key not in npz.files:
                continue
            try:
                arrays[key] = npz[key]
            except ValueError:
                raise DatasetError(
                    f"{path}: array {key!r} is stored as Python objects; save it as a plain "
                    "array (strings: np.asarray(ids, dtype=str))"
                ) from None
            except (OSError, zipfile.BadZipFile, EOFError) as exc:
                raise DatasetError(f"{path}: array {key!r} cannot be read ({exc})") from None
    for key in ("sample_ids", "subject_ids", "class_names"):
        if key in arrays and arrays[key].dtype.kind not in "US":
            raise DatasetError(
                f"{path}: {key} must be a string array, got dtype {arrays[key].dtype}"
            )
    try:
        return build_dataset(
            arrays["images"],
            arrays["labels"],
            arrays["sample_ids"],
            arrays.get("subject_ids"),
            test_images=arrays.get("test_images"),
            test_labels=arrays.get("test_labels"),
            name=name if name is not None else str(path),
            seed=seed,
            test_fraction=test_fraction,
            class_names=_strings(arrays["class_names"]) if "class_names" in arrays else None,
        )
    except DatasetError as exc:
        raise DatasetError(f"{path}: {exc}") from None
