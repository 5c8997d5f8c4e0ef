"""Removing erased samples from an uploaded manifest: what it costs, and which way keeps
every later use of the dataset working.

The purge (``api/purge/uploads.py``) rewrites an uploaded ``.npz`` with the erased samples'
images overwritten by zeros, rows and ids kept (``blank``). The obvious alternative drops
the rows and writes the split out explicitly, as the loader allows (``test_images`` /
``test_labels``: ``drop_rows``). Both are measured side by side on the same upload: 20,000
Fashion-MNIST images (28 x 28, uint8) from ``../shared/data`` (a seeded stratified pick;
random pixels of the same shape if the folder is missing), registered the way the service
registers an upload (seeded 80/20 split, subjects of 10 consecutive training samples).

Per variant, file format (``np.savez`` and ``np.savez_compressed``, as users upload
either) and number of erased samples (one subject; 1 % of the training set): the wall
seconds of the file work the purge does (read, check the sha256, rewrite, read back,
hash; median of ``--repeats``), the bytes before and after, the load time of the file,
and whether the rewritten file still serves every later use:

- ``recorded_runs_reload``: training ids and labels, in order, as a run recorded before
  (``RecordedRun.dataset`` refuses a run whose dataset changed: every later erasure and
  compaction of an existing lineage);
- ``registered_digest_kept``: the ``sample_ids_sha256`` checked when a model trains
  without exclusions (SISA);
- ``test_split_kept``: the same test samples, by id;
- ``subjects_kept``: every remaining sample keeps its subject (``subject_size`` names
  subjects by training position);
- ``erased_pixels_gone``: no erased sample's image is left.

    python bench/upload_purge.py [--samples 20000] [--erase 10,160] [--repeats 3]

Prints one JSON object on the last line of stdout and writes it to
bench/results/upload_purge.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, stratified_positions

from api.datasets.service import sample_ids_digest
from api.purge import redact
from unlearning_core.data import Dataset, default_data_dir, load_dataset
from unlearning_core.data.idx import FASHION_MNIST_CLASSES, load_idx_folder

SUBJECT_SIZE = 10
SEED = 0
TEST_FRACTION = 0.2


def source_images(samples: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``samples`` Fashion-MNIST training images (uint8) and labels, or random ones."""
    try:
        folder = default_data_dir() / "fashion-mnist"
        data = load_idx_folder(folder, name="fashion-mnist", class_names=FASHION_MNIST_CLASSES)
    except Exception as exc:  # noqa: BLE001 - no data folder: say so in the result
        print(f"fashion-mnist not available ({exc}); synthetic pixels", file=sys.stderr)
        rng = np.random.default_rng(SEED)
        return (rng.integers(0, 256, (samples, 28, 28), dtype=np.uint8),
                rng.integers(0, 10, samples).astype(np.int64), "synthetic")
    pick = stratified_positions(data.train.labels.numpy(), samples, SEED)
    pixels = np.round((data.train.images[pick].numpy()[:, 0] + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    return pixels, data.train.labels.numpy()[pick].astype(np.int64), f"fashion-mnist ({folder})"


def write_upload(path: Path, images: np.ndarray, labels: np.ndarray, compressed: bool) -> None:
    n = len(labels)
    save = np.savez_compressed if compressed else np.savez
    save(path, images=images, labels=labels,
         sample_ids=np.asarray([f"fm-{i:05d}" for i in range(n)]),
         subject_ids=np.asarray([f"person-{i // 7:05d}" for i in range(n)]))


def load(path: Path) -> Dataset:
    return load_dataset(str(path), seed=SEED, test_fraction=TEST_FRACTION, subject_size=SUBJECT_SIZE)


def blank(data: bytes, erase: list[str], dst: Path) -> None:
    """What the purge does to the file (api/purge/uploads.py, minus the database)."""
    hashlib.sha256(data).hexdigest()
    redact.rewrite(data, erase, dst)


def drop_rows(data: bytes, erase: list[str], dst: Path) -> None:
    """The alternative: the erased rows dropped, the split kept by writing the test set
    out as ``test_images`` / ``test_labels`` (the loader's only explicit split)."""
    hashlib.sha256(data).hexdigest()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    ds = load_dataset_from(arrays)
    gone = set(erase)
    ids = [str(s) for s in arrays["sample_ids"]]
    train = set(ds.train.sample_ids) - gone
    test = set(ds.test.sample_ids)
    keep = [i for i, s in enumerate(ids) if s in train]
    held = [i for i, s in enumerate(ids) if s in test]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # keep the upload's format, as blank does
        compressed = archive.getinfo("images.npy").compress_type != zipfile.ZIP_STORED
    save = np.savez_compressed if compressed else np.savez
    with dst.open("wb") as out:
        save(out, images=arrays["images"][keep], labels=arrays["labels"][keep],
                 sample_ids=arrays["sample_ids"][keep], subject_ids=arrays["subject_ids"][keep],
                 test_images=arrays["images"][held], test_labels=arrays["labels"][held])
        out.flush()
        os.fsync(out.fileno())
    redact.file_sha256(dst)


def load_dataset_from(arrays: dict[str, np.ndarray]) -> Dataset:
    from unlearning_core.data.manifest import build_dataset

    return build_dataset(arrays["images"], arrays["labels"], arrays["sample_ids"], arrays["subject_ids"],
                         seed=SEED, test_fraction=TEST_FRACTION)


def checks(before: Dataset, after: Dataset, erase: list[str]) -> dict[str, bool]:
    gone = set(erase)
    old_subject = dict(zip(before.train.sample_ids, before.train.subject_ids, strict=True))
    new_subject = dict(zip(after.train.sample_ids, after.train.subject_ids, strict=True))
    if gone <= set(after.train.sample_ids):
        pixels_gone = bool((after.train.images[after.train.positions_of(erase)] == -1).all())
    else:
        pixels_gone = not gone & set(after.train.sample_ids)
    return {
        "recorded_runs_reload": list(after.train.sample_ids) == list(before.train.sample_ids)
        and after.train.labels.tolist() == before.train.labels.tolist(),
        "registered_digest_kept": sample_ids_digest(after.train.sample_ids)
        == sample_ids_digest(before.train.sample_ids),
        "test_split_kept": list(after.test.sample_ids) == list(before.test.sample_ids),
        "subjects_kept": all(new_subject.get(s) == old_subject[s] for s in old_subject if s not in gone),
        "erased_pixels_gone": pixels_gone,
    }


def measure(
    variant: Callable[[bytes, list[str], Path], None], upload: Path, erase: list[str], repeats: int,
    before: Dataset, workdir: Path,
) -> dict[str, Any]:
    seconds = []
    out = workdir / f"rewritten-{upload.name}"
    for _ in range(repeats):
        out.unlink(missing_ok=True)
        started = time.perf_counter()
        variant(upload.read_bytes(), erase, out)
        seconds.append(time.perf_counter() - started)
    started = time.perf_counter()
    after = load(out)
    load_seconds = time.perf_counter() - started
    return {
        "seconds": round(statistics.median(seconds), 4),
        "seconds_all": [round(s, 4) for s in seconds],
        "bytes_before": upload.stat().st_size,
        "bytes_after": out.stat().st_size,
        "load_seconds_after": round(load_seconds, 4),
        **checks(before, after, erase),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--erase", default="10,160", help="erased training samples per case")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "upload_purge.json")
    args = parser.parse_args(argv)
    images, labels, origin = source_images(args.samples)
    erase_counts = [int(x) for x in args.erase.split(",") if x.strip()]
    result: dict[str, Any] = {
        "data": origin, "samples": len(labels), "image_shape": list(images.shape[1:]),
        "split_seed": SEED, "test_fraction": TEST_FRACTION, "subject_size": SUBJECT_SIZE,
        "repeats": args.repeats, "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="lethe-upload-purge-") as tmp:
        workdir = Path(tmp)
        for compressed in (False, True):
            upload = workdir / f"upload-{'savez_compressed' if compressed else 'savez'}.npz"
            write_upload(upload, images, labels, compressed)
            started = time.perf_counter()
            before = load(upload)
            load_before = time.perf_counter() - started
            for count in erase_counts:
                # the first subjects' samples, as a stream of single-subject requests erases them
                erase = list(before.train.sample_ids[:count])
                for name, variant in (("blank", blank), ("drop_rows", drop_rows)):
                    case = {"variant": name, "format": upload.stem.removeprefix("upload-"),
                            "erased": count, "load_seconds_before": round(load_before, 4),
                            **measure(variant, upload, erase, args.repeats, before, workdir)}
                    print(f"{case['format']:>16} {name:>9} erase {count:>4}: {case['seconds']:.3f}s "
                          f"{case['bytes_before']} -> {case['bytes_after']} bytes", file=sys.stderr)
                    result["cases"].append(case)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
