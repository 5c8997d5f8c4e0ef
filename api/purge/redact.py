"""Removing erased samples from an ``.npz`` manifest without moving any other sample.

The erased samples' images are overwritten with zeros; every row stays where it was, with
its sample id, label and subject id (the tombstone the database keeps anyway). Why not drop
the rows: everything that loads the manifest later depends on its rows, not only on the
samples it trains on (see ``docs/operations/purge.md`` and ``bench/upload_purge.py``):

- the seeded stratified train/test split is drawn per class over the labels of every row,
  so dropping rows moves other samples between train and test;
- ``subject_size`` names subjects by training position, so dropping rows renames subjects;
- every recorded run reloads its dataset from the path in its ``run.json`` and checks the
  training ids and labels, in order, against its sample table (an erasure, a compaction
  and SISA all do), and its update blobs and SISA shards are indexed by those positions.

Blank rows keep all of that exactly as registered, so no loader changes and old manifests
load as before. Consumers leave erased samples out by id as they already must (the
tombstone, ``exclude_sample_ids``, the lineage ledger). The sorted ids of the blanked
samples are kept in the file under :data:`ERASED_KEY`, which the loader ignores.

Only the arrays the loader reads are kept (:data:`MANIFEST_KEYS`): any other array an
upload carried is never used for training, and could hold data of the erased samples.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearning_core.data.manifest import MANIFEST_KEYS
from unlearning_core.errors import DatasetError

#: The array (sorted sample ids) recording which samples' images were blanked.
ERASED_KEY = "lethe_erased_sample_ids"


@dataclass(frozen=True)
class Redacted:
    """A manifest written without the erased samples' images."""

    path: Path
    sha256: str
    size: int
    erased: tuple[str, ...]  # every blanked sample id, earlier ones included
    newly: int  # samples blanked by this rewrite
    dropped_keys: tuple[str, ...]  # arrays not kept (the loader never reads them)


def _strings(arr: np.ndarray) -> list[str]:
    if arr.dtype.kind == "S":
        return [b.decode("utf-8") for b in arr.reshape(-1).tolist()]
    return [str(s) for s in arr.reshape(-1).tolist()]


def erased_ids(path: Path) -> set[str]:
    """The sample ids blanked in the manifest at ``path`` (reads that array only)."""
    with np.load(path, allow_pickle=False) as npz:
        if ERASED_KEY not in npz.files:
            return set()
        return set(_strings(npz[ERASED_KEY]))


def _compressed(data: bytes) -> bool:
    """Whether the images were stored deflated (the rewrite keeps the upload's choice)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        info = archive.getinfo("images.npy")
        return info.compress_type != zipfile.ZIP_STORED


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 and size of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def rewrite(data: bytes, erase: Iterable[str], dst: Path) -> Redacted:
    """Write to ``dst`` the manifest ``data`` with the images of ``erase`` (and of every
    sample blanked before) overwritten with zeros, fsynced; every other array kept as it
    was. Checks what it wrote by reading it back. A sample id the manifest does not hold is
    a :class:`DatasetError` (the file is not the one the database describes)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    ids = _strings(arrays["sample_ids"])
    before = set(_strings(arrays[ERASED_KEY])) if ERASED_KEY in arrays else set()
    wanted = set(erase)
    unknown = wanted - set(ids)
    if unknown:
        raise DatasetError(f"{len(unknown)} erased samples are not in the manifest (e.g. {min(unknown)!r})")
    erased = before | wanted
    rows = np.asarray([i for i, sid in enumerate(ids) if sid in erased], dtype=np.int64)
    images = arrays["images"].copy()
    images[rows] = 0
    kept = {key: arrays[key] for key in MANIFEST_KEYS if key in arrays}
    kept["images"] = images
    kept[ERASED_KEY] = np.asarray(sorted(erased), dtype=str)
    save = np.savez_compressed if _compressed(data) else np.savez
    with dst.open("wb") as out:
        save(out, **kept)  # type: ignore[arg-type]
        out.flush()
        os.fsync(out.fileno())
    _check(dst, kept)
    sha256, size = file_sha256(dst)
    return Redacted(
        path=dst,
        sha256=sha256,
        size=size,
        erased=tuple(sorted(erased)),
        newly=len(erased - before),
        dropped_keys=tuple(sorted(set(arrays) - set(kept))),
    )


def _check(path: Path, expected: dict[str, np.ndarray]) -> None:
    """Read ``path`` back: exactly the arrays meant (the erased rows zero among them)."""
    with np.load(path, allow_pickle=False) as npz:
        if set(npz.files) != set(expected):
            raise DatasetError(f"{path}: rewritten manifest holds {sorted(npz.files)}")
        for key, want in expected.items():
            got = npz[key]
            if got.dtype != want.dtype or not np.array_equal(got, want):
                raise DatasetError(f"{path}: array {key!r} did not survive the rewrite")
