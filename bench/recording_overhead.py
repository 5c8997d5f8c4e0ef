"""What recording costs: training time and bytes stored for ``--record none/full/partial``,
bytes read per unlearning, and unlearning throughput next to the store's raw read speed.

The same seed trains the same model three times on the same data (so the time ratios are
the recorder's overhead), on each blob store asked for: the local directory and, when an
S3 server answers (``LETHE_S3_ENDPOINT``, default the test moto server 127.0.0.1:9900), S3.
Then amnesiac (full run) and partial amnesiac (partial run) erase one subject and a batch
of subjects (dry runs). Their throughput (``bytes_read / unlearn_seconds``) is set beside
the store's measured read bandwidth for the very same blobs: ``store_get`` reads them
through the store (sha256 verified, as unlearning does), ``raw_read`` (local only) reads
the files with plain ``open().read()``. The blobs were just written, so local reads come
from the page cache: this is the store's best case, and the ratio shows how much of the
unlearning time is decoding and arithmetic rather than I/O.

    python bench/recording_overhead.py [--n-train 10000] [--epochs 2] [--stores local,s3]

Prints one JSON object on the last line of stdout and writes it and a PNG under
bench/results/.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, dataset_spec, emit, environment, fast_math, pyplot  # noqa: E402
from sample_forgetting import load_average, training_spec  # noqa: E402

from unlearning_core.data import load_dataset  # noqa: E402
from unlearning_core.forget import ForgetSpec  # noqa: E402
from unlearning_core.pipeline import apply_method  # noqa: E402
from unlearning_core.runs.artifact import RecordedRun  # noqa: E402
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec  # noqa: E402
from unlearning_core.runs.train import train_run  # noqa: E402
from unlearning_core.store import BlobStore, LocalBlobStore  # noqa: E402
from unlearning_core.store.s3 import S3BlobStore  # noqa: E402
from unlearning_core.store.settings import S3Settings  # noqa: E402
from unlearning_core.training.loop import resolve_device  # noqa: E402

DEFAULT_S3 = "127.0.0.1:9900"


def s3_store() -> S3BlobStore | None:
    """A fresh bucket on the configured S3 server, or None when nothing answers there."""
    settings = S3Settings(endpoint=os.environ.get("LETHE_S3_ENDPOINT", DEFAULT_S3), retries=1,
                          connect_timeout_s=2.0)
    host, _, port = settings.endpoint.removeprefix("http://").removeprefix("https://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
    except OSError:
        return None
    return S3BlobStore(f"lethe-bench-{uuid.uuid4().hex[:16]}", "runs", settings)


def drop_bucket(store: S3BlobStore) -> None:
    """Leave the S3 server as it was: remove every object, then the bucket."""
    client = store.client
    for obj in client.list_objects(store.bucket, recursive=True):
        if obj.object_name is not None:
            client.remove_object(store.bucket, obj.object_name)
    client.remove_bucket(store.bucket)


def read_bandwidth(store: BlobStore, run: RecordedRun, steps: np.ndarray, root: Path | None) -> dict[str, Any]:
    """Bytes/s reading the updates of ``steps`` through the store (verified) and raw (local)."""
    blobs = [run.update_blobs[int(s)] for s in steps]
    total = sum(b.size for b in blobs)
    t0 = time.perf_counter()
    for b in blobs:
        store.get(b.key, expected_sha256=b.sha256)
    verified = time.perf_counter() - t0
    out: dict[str, Any] = {"bytes": total, "blobs": len(blobs), "store_get_bytes_per_s": total / verified}
    if root is not None:
        t0 = time.perf_counter()
        for b in blobs:
            with open(root / b.key, "rb") as fh:
                fh.read()
        out["raw_read_bytes_per_s"] = total / (time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--n-train", type=int, default=10_000, help="stratified subset (0: all 60,000)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--prune", default="0.99:0.5", help="FIRST:LAST pruning of the partial recording")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    ap.add_argument("--stores", default="local,s3", help="local and/or s3 (skipped if no server answers)")
    ap.add_argument("--big-erasure", type=int, default=100, help="subjects in the larger erasure")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "recording_overhead.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    fast_math(device)
    prune_first, prune_last = (float(x) for x in args.prune.split(":"))
    started, load_start = time.perf_counter(), load_average()
    result: dict[str, Any] = {
        "benchmark": "recording_overhead", **environment(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average_start": load_start, "stores": {},
    }
    with tempfile.TemporaryDirectory(prefix="lethe-rec-") as tmp:
        spec = dataset_spec("fashion-mnist", limit=args.n_train or None, test_limit=None, workdir=Path(tmp))
        dspec = DatasetSpec(spec=spec, subject_size=10)
        data = load_dataset(spec, subject_size=10)
        subjects = sorted({s for s in data.train.subject_ids if s})
        rng = np.random.default_rng(0)
        picked = [subjects[i] for i in rng.choice(len(subjects), args.big_erasure, replace=False)]
        erasures = {"one_subject": ForgetSpec(subjects=(picked[0],)),
                    f"{args.big_erasure}_subjects": ForgetSpec(subjects=tuple(picked))}
        training = training_spec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                                 weight_decay=0.0, seed=0)
        for name in [s.strip() for s in args.stores.split(",") if s.strip()]:
            root = Path(tmp) / f"store-{name}"
            store: BlobStore | None = LocalBlobStore(root) if name == "local" else s3_store() if name == "s3" else None
            if store is None:
                result["stores"][name] = {"skipped": "unknown store" if name not in ("local", "s3")
                                          else "no S3 server answers"}
                continue
            try:
                result["stores"][name] = measure_store(store, root if name == "local" else None, data, dspec,
                                                       training, args, erasures, device, prune_first, prune_last)
            finally:
                if isinstance(store, S3BlobStore):
                    drop_bucket(store)
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_end"] = load_average()
    emit(result, args.out, [plot(result, args.out.with_suffix(".png"))])


def measure_store(store, root, data, dspec, training, args, erasures, device, prune_first, prune_last):  # noqa: ANN001, ANN201, PLR0913
    """Train the three modes on ``store`` and measure unlearning and raw reads on it."""
    out: dict[str, Any] = {"store": store.url, "training": {}, "unlearning": {}}
    runs: dict[str, RecordedRun] = {}
    for mode in ("none", "full", "partial"):
        t0 = time.perf_counter()
        run = train_run(store, run_id=mode, dataset=data, dataset_spec=dspec, model_name=args.model,
                        training=training, device=device,
                        recording=RecordingSpec(mode=mode, prune_first=prune_first, prune_last=prune_last,
                                                dtype=args.dtype))
        r = run.spec.results
        out["training"][mode] = {
            "train_seconds": r.train_seconds, "total_seconds": time.perf_counter() - t0,
            "stall_seconds": r.stall_seconds, "storage_bytes": r.storage_bytes, "steps": r.steps,
            "bytes_per_step": r.storage_bytes / r.steps,
        }
        runs[mode] = run
        print(f"{store.url} {mode}: {out['training'][mode]}", file=sys.stderr)
    base = out["training"]["none"]["train_seconds"]
    for mode in ("full", "partial"):
        out["training"][mode]["overhead_vs_none"] = out["training"][mode]["train_seconds"] / base - 1
    out["storage_partial_over_full"] = out["training"]["partial"]["storage_bytes"] / out["training"]["full"]["storage_bytes"]
    for label, forget in erasures.items():
        rows = {}
        for method, mode in (("amnesiac", "full"), ("partial-amnesiac", "partial")):
            done = apply_method(store, run_id=mode, method=method, forget=forget, device=device, publish=False,
                                method_options={})
            d = done.outcome.details
            seconds = done.outcome.unlearn_seconds
            steps = runs[mode].index.steps_holding(done.context.forget_positions)
            rows[method] = {
                "unlearn_seconds": seconds, "bytes_read": d.get("bytes_read"),
                "batches_subtracted": d.get("batches_subtracted"),
                "throughput_bytes_per_s": (d.get("bytes_read") or 0) / seconds if seconds > 0 else None,
                "store_read": read_bandwidth(store, runs[mode], steps, root),
            }
            bw = rows[method]["store_read"]["store_get_bytes_per_s"]
            rows[method]["throughput_over_store_get"] = (rows[method]["throughput_bytes_per_s"] or 0) / bw
            print(f"{label} {method}: {rows[method]}", file=sys.stderr)
        out["unlearning"][label] = rows
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    stores = {k: v for k, v in result["stores"].items() if "training" in v}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(stores), 1)
    ticks: list[float] = []
    tick_labels: list[str] = []
    for i, (name, s) in enumerate(stores.items()):
        modes = list(s["training"])
        x = np.arange(len(modes)) + i * width
        axes[0].bar(x, [s["training"][m]["train_seconds"] for m in modes], width, label=name)
        axes[0].set_xticks(np.arange(len(modes)) + width * (len(stores) - 1) / 2, modes)
        labels, vals, bws = [], [], []
        for erasure, rows in s["unlearning"].items():
            for method, row in rows.items():
                short = erasure.replace("one_subject", "1 subj").replace("_subjects", " subj")
                labels.append(f"{name}\n{short}\n{'partial' if method.startswith('partial') else 'full'}")
                vals.append((row["throughput_bytes_per_s"] or 0) / 1e6)
                bws.append(row["store_read"]["store_get_bytes_per_s"] / 1e6)
        xs = np.arange(len(labels)) + (i * (len(labels) + 1))
        axes[1].bar(xs - 0.2, vals, 0.4, color="tab:blue", label="unlearning throughput" if i == 0 else None)
        axes[1].bar(xs + 0.2, bws, 0.4, color="tab:orange", label="store read (verified)" if i == 0 else None)
        ticks += list(xs)
        tick_labels += labels
    axes[1].set_xticks(ticks, tick_labels, fontsize=6)
    axes[0].set_ylabel("training seconds")
    axes[0].set_title("training time by recording mode")
    axes[0].legend()
    axes[1].set_yscale("log")
    axes[1].set_ylabel("MB/s")
    axes[1].set_title("unlearning throughput vs the store's read speed")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
