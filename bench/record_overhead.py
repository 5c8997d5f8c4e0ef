"""What ``record_training`` costs a user's own training loop: the same plain PyTorch loop
timed without recording, with full recording and with partial (layer-wise pruned) recording.

The loop is what a user writes: a ``DataLoader`` of ``(sample_id, image, label)``, SGD with
momentum, one optimizer step per batch; the recorded variants only wrap each step in
``with rec.step(ids, epoch=epoch):`` inside ``with record_training(...)``. Every variant
starts from the same seed and sees the same batches, so their final weights must be
identical (recording only reads the model; ``same_weights_as_plain`` checks it) and the
time ratio is the recorder's overhead. Variants are interleaved over ``--repeats`` rounds
(a different order each round) and compared by their medians, their fastest runs and the
median of each round's ratio, because the machine may be shared; the process CPU time
(training and writer threads) is reported beside the wall time, as the measure least moved
by other jobs. The seconds include opening and closing the recording (initial and final weights,
index, ``run.json``) and every background write, on a local blob-store directory.

    python bench/record_overhead.py [--dataset fashion-mnist] [--n-train 12000] [--epochs 2]
                                    [--batch-size 128] [--repeats 5] [--threads 2]

Prints one JSON object on the last line of stdout and writes it to
bench/results/record_overhead.json (with the provenance fields: commit, time, host, load,
command).
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

# Others share this machine's cores: OpenMP threads that spin while waiting for a core slow
# every step several-fold under load (see bench/erasure_stream.py). Set before torch loads
# its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, environment, stratified_positions
from sample_forgetting import load_average

from unlearning_core import record_training
from unlearning_core.data import Dataset, load_dataset
from unlearning_core.errors import DatasetError
from unlearning_core.models import create_model
from unlearning_core.store import LocalBlobStore

VARIANTS = ("none", "full", "partial")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (falls back to digits when absent) or digits")
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--n-train", type=int, default=12000, help="training samples (stratified subset)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--prune", default="0.99:0.5", help="partial recording: first:last layer pruning")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "record_overhead.json")
    return ap.parse_args(argv)


def load(name: str, n_train: int, seed: int) -> tuple[Dataset, str]:
    try:
        data = load_dataset(name)
    except DatasetError as exc:
        if name != "fashion-mnist":
            raise
        print(f"fashion-mnist not found ({exc}); using digits", file=sys.stderr)
        data, name = load_dataset("digits"), "digits"
    keep = stratified_positions(data.train.labels.numpy(), n_train, seed)
    return Dataset(data.name, data.train.subset(keep), data.test, data.num_classes, data.class_names), name


def train_once(
    variant: str, data: Dataset, args: argparse.Namespace, store: LocalBlobStore, run_id: str,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """The user's loop, plain or recorded; returns its seconds and final weights
    (``max_steps``: stop early, for the untimed warm-up)."""
    kwargs = {"in_channels": data.in_channels, "image_size": list(data.image_size), "num_classes": data.num_classes}
    torch.manual_seed(args.seed)
    model = create_model(args.model, **kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    ids = torch.arange(len(data.train))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(ids, data.train.images, data.train.labels),
        batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(args.seed),
    )
    first, last = (float(x) for x in args.prune.split(":"))
    recording: AbstractContextManager[Any] = (
        nullcontext()
        if variant == "none"
        else record_training(model, opt, store=store, run_id=run_id, model_factory=args.model,
                             model_kwargs=kwargs, mode=variant, prune_first=first, prune_last=last,
                             seed=args.seed)
    )
    model.train()
    started, cpu_started = time.perf_counter(), time.process_time()
    done = 0
    with recording as rec:
        for epoch in range(args.epochs):
            for sample_ids, x, y in loader:
                with nullcontext() if rec is None else rec.step(sample_ids, epoch=epoch):
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad()
                done += 1
                if max_steps is not None and done >= max_steps:
                    break
            if max_steps is not None and done >= max_steps:
                break
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    out: dict[str, Any] = {
        "seconds": seconds, "cpu_seconds": cpu_seconds,
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }
    if rec is not None:
        res = rec.run.spec.results
        out.update(steps=res.steps, storage_bytes=res.storage_bytes, stall_seconds=res.stall_seconds,
                   backpressure_seconds=res.backpressure_seconds)
    else:
        out["steps"] = args.epochs * len(loader)
    return out


@torch.no_grad()
def test_accuracy(state: dict[str, torch.Tensor], data: Dataset, args: argparse.Namespace, limit: int = 2000) -> float:
    model = create_model(args.model, in_channels=data.in_channels, image_size=data.image_size,
                         num_classes=data.num_classes)
    model.load_state_dict(state)
    model.eval()
    x, y = data.test.images[:limit], data.test.labels[:limit]
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    started, load_start = time.perf_counter(), load_average()
    data, dataset_name = load(args.dataset, args.n_train, args.seed)
    result: dict[str, Any] = {
        "benchmark": "record_overhead",
        **environment(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "recorder_writers": inspect.signature(record_training).parameters["writers"].default,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "dataset": dataset_name, "n_train": len(data.train)},
        "load_average_start": load_start,
    }
    workdir = Path(tempfile.mkdtemp(prefix="lethe-record-overhead-"))
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    try:
        store = LocalBlobStore(workdir / "store")
        for variant in VARIANTS:  # untimed: first-use costs (lazy imports, allocator) out of the figures
            train_once(variant, data, args, store, f"warmup-{variant}", max_steps=5)
        for r in range(args.repeats):
            order = VARIANTS[r % 3:] + VARIANTS[: r % 3]  # each variant first once in three rounds
            for variant in order:
                runs[variant].append(train_once(variant, data, args, store, f"{variant}-{r}"))
                print(f"round {r} {variant}: {runs[variant][-1]['seconds']:.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    def pct(ratio: float) -> float:
        return round((ratio - 1.0) * 100, 1)

    plain = runs["none"]
    plain_median = statistics.median(x["seconds"] for x in plain)
    plain_min = min(x["seconds"] for x in plain)
    plain_cpu = statistics.median(x["cpu_seconds"] for x in plain)
    reference = plain[0]["state"]
    variants: dict[str, Any] = {}
    for variant, xs in runs.items():
        secs = [x["seconds"] for x in xs]
        median = statistics.median(secs)
        cpu = statistics.median(x["cpu_seconds"] for x in xs)
        paired = [x["seconds"] / p["seconds"] for x, p in zip(xs, plain, strict=True)]
        row: dict[str, Any] = {
            "seconds_median": round(median, 3),
            "seconds_min": round(min(secs), 3),
            "seconds": [round(s, 3) for s in secs],
            "cpu_seconds_median": round(cpu, 3),
            # wall time: medians, fastest runs, and the median of each round's ratio
            "overhead_pct": pct(median / plain_median),
            "overhead_pct_min": pct(min(secs) / plain_min),
            "overhead_pct_paired_median": pct(statistics.median(paired)),
            # CPU time of the process (training plus writer threads): the work recording adds,
            # hardly moved by other jobs on the machine
            "cpu_overhead_pct": pct(cpu / plain_cpu),
            "steps": xs[0]["steps"],
            "seconds_per_step_ms": round(median / xs[0]["steps"] * 1000, 2),
            "same_weights_as_plain": all(
                all(torch.equal(x["state"][k], reference[k]) for k in reference) for x in xs
            ),
        }
        if variant != "none":
            row.update(
                storage_bytes=xs[0]["storage_bytes"],
                bytes_per_step=round(xs[0]["storage_bytes"] / max(xs[0]["steps"], 1)),
                stall_seconds_median=round(statistics.median(x["stall_seconds"] for x in xs), 3),
                # of the stall: the training thread waiting for a slot in the writers' queue
                backpressure_seconds_median=round(statistics.median(x["backpressure_seconds"] for x in xs), 3),
            )
        variants[variant] = row
    result["test_acc"] = round(test_accuracy(reference, data, args), 4)
    result["variants"] = variants
    result["wall_seconds"] = round(time.perf_counter() - started, 2)
    result["load_average_end"] = load_average()
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
