"""What recording costs: training time and bytes stored for ``--record none/full/partial``
(partial with each mask kind), bytes read per unlearning, and unlearning throughput next to
the store's read speed for the same blobs.

The same seed trains the same model five times on the same data (so the time ratios are the
recorder's overhead): without recording, with full updates, and with partial updates under
each mask (``fixed``, ``random``, ``magnitude``), on each blob store asked for: the local
directory and, when an S3 server answers (``LETHE_S3_ENDPOINT``, default the test moto server
127.0.0.1:9900), S3. Then amnesiac (full run) and partial amnesiac (each partial run) erase
one subject and a batch of subjects (dry runs). Each erasure is measured ``--repeats`` times,
alternating with reads of the very same blobs, and the medians are reported:

- ``unlearn_seconds``: the method's own timing (read, decode, sum, subtract, rebuild the
  model), as the service reports it; ``throughput = bytes_read / unlearn_seconds``;
- ``subtract_seconds``: the subtraction alone (``subtract_steps``: reads, decoding, summation);
- ``store_get``: the blobs read one after the other through the store, sha256 verified (what
  unlearning must at least do); ``pipelined_read``: the same reads on unlearning's read-ahead
  pool without decoding (the I/O ceiling of the pipeline); ``raw_read`` (local only): plain
  ``open().read()``.

The blobs were just written, so local reads come from the page cache: the store's best
case. The ratio ``throughput / store_get`` is how close unlearning gets to the store.

    python bench/recording_overhead.py [--n-train 10000] [--epochs 2] [--stores local,s3] [--repeats 3]

Prints one JSON object on the last line of stdout and writes it and a PNG under
bench/results/.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, dataset_spec, emit, environment, fast_math, pyplot

from unlearning_core.data import load_dataset
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.amnesiac import prune_shares, subtract_steps
from unlearning_core.pipeline import apply_method
from unlearning_core.recording.prefetch import Prefetch
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import BlobStore, LocalBlobStore
from unlearning_core.store.s3 import S3BlobStore
from unlearning_core.store.settings import S3Settings
from unlearning_core.training.loop import resolve_device

DEFAULT_S3 = "127.0.0.1:9900"
#: run id -> (record mode, mask kind)
RUNS: dict[str, tuple[str, str]] = {
    "none": ("none", "fixed"),
    "full": ("full", "fixed"),
    "partial-fixed": ("partial", "fixed"),
    "partial-random": ("partial", "random"),
    "partial-magnitude": ("partial", "magnitude"),
}
#: row label -> (method, run id)
UNLEARNINGS: dict[str, tuple[str, str]] = {
    "amnesiac": ("amnesiac", "full"),
    "partial-amnesiac/fixed": ("partial-amnesiac", "partial-fixed"),
    "partial-amnesiac/random": ("partial-amnesiac", "partial-random"),
    "partial-amnesiac/magnitude": ("partial-amnesiac", "partial-magnitude"),
}


def load_average() -> list[float]:
    """The 1/5/15-minute load: timings taken while others use the CPU are noisy, say how much."""
    return [round(x, 2) for x in os.getloadavg()]


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
    """Bytes/s reading the updates of ``steps``: through the store one by one (verified),
    on unlearning's read-ahead pool (verified, no decoding) and raw (local)."""
    blobs = [run.update_blobs[int(s)] for s in steps]
    total = sum(b.size for b in blobs)
    t0 = time.perf_counter()
    for b in blobs:
        store.get(b.key, expected_sha256=b.sha256)
    verified = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in Prefetch(store, blobs):
        pass
    pipelined = time.perf_counter() - t0
    out: dict[str, Any] = {"bytes": total, "blobs": len(blobs), "store_get_bytes_per_s": total / verified,
                           "pipelined_read_bytes_per_s": total / pipelined}
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
    ap.add_argument("--prune", default="0.99:0.5", help="FIRST:LAST pruning of the partial recordings")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--stores", default="local,s3", help="local and/or s3 (skipped if no server answers)")
    ap.add_argument("--big-erasure", type=int, default=100, help="subjects in the larger erasure")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per erasure (medians reported)")
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
        training = TrainingSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                                weight_decay=0.0, seed=0, timeline_every=0)
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


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def measure_store(store, root, data, dspec, training, args, erasures, device, prune_first, prune_last):
    """Train every recording on ``store``; measure unlearning and reads of the same blobs on it."""
    out: dict[str, Any] = {"store": store.url, "training": {}, "unlearning": {}}
    runs: dict[str, RecordedRun] = {}
    for run_id, (mode, mask) in RUNS.items():
        t0 = time.perf_counter()
        run = train_run(store, run_id=run_id, dataset=data, dataset_spec=dspec, model_name=args.model,
                        training=training, device=device,
                        recording=RecordingSpec(mode=mode, mask=mask, prune_first=prune_first,
                                                prune_last=prune_last, dtype=args.dtype))
        r = run.spec.results
        out["training"][run_id] = {
            "mode": mode, "mask": mask if mode == "partial" else None,
            "train_seconds": r.train_seconds, "total_seconds": time.perf_counter() - t0,
            "stall_seconds": r.stall_seconds, "storage_bytes": r.storage_bytes, "steps": r.steps,
            "bytes_per_step": r.storage_bytes / r.steps,
        }
        runs[run_id] = run
        print(f"{store.url} {run_id}: {out['training'][run_id]}", file=sys.stderr)
    base = out["training"]["none"]["train_seconds"]
    for run_id in RUNS:
        if run_id != "none":
            out["training"][run_id]["overhead_vs_none"] = out["training"][run_id]["train_seconds"] / base - 1
    full_bytes = out["training"]["full"]["storage_bytes"]
    out["storage_partial_over_full"] = {
        run_id: out["training"][run_id]["storage_bytes"] / full_bytes for run_id in RUNS if run_id.startswith("partial")
    }
    for label, forget in erasures.items():
        rows = {}
        for row_name, (method, run_id) in UNLEARNINGS.items():
            run = runs[run_id]
            seconds, core, reads, details = [], [], [], {}
            for _ in range(args.repeats):
                done = apply_method(store, run_id=run_id, method=method, forget=forget, device=device,
                                    publish=False, method_options={})
                details = done.outcome.details
                seconds.append(done.outcome.unlearn_seconds)
                steps = run.index.steps_holding(done.context.forget_positions)
                reads.append(read_bandwidth(store, run, steps, root))
                fresh = RecordedRun.open(store, run_id)  # reads the mask index again, as a request does
                parent = fresh.load_weights(fresh.spec.trained_weights)
                prune = prune_shares(fresh, partial=method != "amnesiac", prune_first=None, prune_last=None)
                t0 = time.perf_counter()
                subtract_steps(fresh, parent, [int(s) for s in steps], prune=prune, device=device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                core.append(time.perf_counter() - t0)
            bytes_read = details.get("bytes_read") or 0
            unlearn_s, core_s = _median(seconds), _median(core)
            store_read = {
                "bytes": reads[0]["bytes"], "blobs": reads[0]["blobs"],
                **{k: _median([r[k] for r in reads]) for k in reads[0] if k.endswith("_bytes_per_s")},
            }
            bw = store_read["store_get_bytes_per_s"]
            rows[row_name] = {
                "method": method, "run": run_id, "mask": RUNS[run_id][1] if RUNS[run_id][0] == "partial" else None,
                "unlearn_seconds": unlearn_s, "unlearn_seconds_all": seconds,
                "subtract_seconds": core_s, "subtract_seconds_all": core,
                "bytes_read": bytes_read, "batches_subtracted": details.get("batches_subtracted"),
                "throughput_bytes_per_s": bytes_read / unlearn_s if unlearn_s > 0 else None,
                "subtract_bytes_per_s": bytes_read / core_s if core_s > 0 else None,
                "store_read": store_read,
                "throughput_over_store_get": (bytes_read / unlearn_s) / bw if unlearn_s > 0 else None,
                "subtract_over_store_get": (bytes_read / core_s) / bw if core_s > 0 else None,
            }
            print(f"{label} {row_name}: {rows[row_name]}", file=sys.stderr)
        out["unlearning"][label] = rows
    return out


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    stores = {k: v for k, v in result["stores"].items() if "training" in v}
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1, 2.2]})
    width = 0.8 / max(len(stores), 1)
    ticks: list[float] = []
    tick_labels: list[str] = []
    for i, (name, s) in enumerate(stores.items()):
        modes = list(s["training"])
        x = np.arange(len(modes)) + i * width
        axes[0].bar(x, [s["training"][m]["train_seconds"] for m in modes], width, label=name)
        axes[0].set_xticks(np.arange(len(modes)) + width * (len(stores) - 1) / 2,
                           [m.replace("partial-", "partial\n") for m in modes], fontsize=7)
        labels, vals, bws = [], [], []
        for erasure, rows in s["unlearning"].items():
            for row in rows.values():
                short = erasure.replace("one_subject", "1 subj").replace("_subjects", " subj")
                labels.append(f"{name}\n{short}\n{row.get('mask') or 'full'}")
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
