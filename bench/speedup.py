"""Unlearning speed-up over retraining from scratch, per method, for one subject's erasure.

One process trains the reference runs once (a single model recording full updates, and a
SISA run placing each subject in one shard and slice), then erases one data subject (10
samples, uniformly shuffled as in ordinary training) with every method from the same
trained weights, ``--repeats`` times. ``speedup_vs_retrain`` = median seconds of
retraining / median seconds of the method (unlearning + recovery fine-tune), so every
ratio comes from the same run on the same machine. Forget and test accuracy are reported
next to it, so a fast method that breaks the model shows as such.

The size follows the device unless given: a 10,000-sample subset and 2 epochs on CPU, the
full 60,000 samples and 5 epochs on CUDA (about a minute on one H100).

    python bench/speedup.py [--device auto] [--n-train N] [--epochs E] [--repeats 3]

Prints one JSON object on the last line of stdout and writes it (and a PNG bar chart)
under bench/results/.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, dataset_spec, emit, environment, fast_math, pyplot  # noqa: E402
from sample_forgetting import load_average, training_spec  # noqa: E402

from unlearning_core.data import load_dataset  # noqa: E402
from unlearning_core.forget import ForgetSpec  # noqa: E402
from unlearning_core.metrics import accuracy, collect_outputs  # noqa: E402
from unlearning_core.metrics.distance import states_differ  # noqa: E402
from unlearning_core.pipeline import apply_method  # noqa: E402
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, SisaSpec  # noqa: E402
from unlearning_core.runs.train import train_run  # noqa: E402
from unlearning_core.sisa.run import train_sisa_run  # noqa: E402
from unlearning_core.store import LocalBlobStore  # noqa: E402
from unlearning_core.training.loop import resolve_device  # noqa: E402

METHODS = "retrain,sisa,amnesiac,partial-amnesiac,label-flip,neg-grad,partial-label-flip,partial-neg-grad"


def sizes(args: argparse.Namespace, device: torch.device) -> tuple[int | None, int, int]:
    """(training subset or None for all, epochs, repeats): explicit knobs win, else by device."""
    if args.smoke:
        return 600, 1, 1
    on_gpu = device.type == "cuda"
    n_train = args.n_train if args.n_train is not None else (0 if on_gpu else 10_000)
    epochs = args.epochs if args.epochs is not None else (5 if on_gpu else 2)
    return (n_train or None), epochs, args.repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--n-train", type=int, default=None, help="training subset (0: all 60,000) [CPU 10000, CUDA all]")
    ap.add_argument("--epochs", type=int, default=None, help="[CPU 2, CUDA 5]")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--methods", default=METHODS)
    ap.add_argument("--sisa", default="8:4", help="SHARDS:SLICES of the SISA run")
    ap.add_argument("--prune", default="0.95:0.3", help="partial methods' FIRST:LAST pruning")
    ap.add_argument("--recovery-steps", type=int, default=0, help="recovery fine-tune of approximate methods")
    ap.add_argument("--repeats", type=int, default=3, help="unlearning runs per method (retrain: once)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", type=Path, default=None, help="where the runs are stored (default: a temp dir)")
    ap.add_argument("--smoke", action="store_true", help="tiny setting that only checks the script runs")
    ap.add_argument("--out", type=Path, default=None, help="[bench/results/speedup.json, or speedup_cuda.json on CUDA]")
    args = ap.parse_args()
    device = resolve_device(args.device)
    fast_math(device)
    n_train, epochs, repeats = sizes(args, device)
    out = args.out or RESULTS / ("speedup_cuda.json" if device.type == "cuda" else "speedup.json")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    prune_first, prune_last = (float(x) for x in args.prune.split(":"))
    shards, slices = (int(x) for x in args.sisa.split(":"))
    started, load_start = time.perf_counter(), load_average()
    result: dict[str, Any] = {
        "benchmark": "speedup", **environment(device),
        "settings": {"model": args.model, "n_train": n_train or 60_000, "epochs": epochs,
                     "batch_size": args.batch_size, "lr": args.lr, "sisa": args.sisa, "prune": args.prune,
                     "recovery_steps": args.recovery_steps, "repeats": repeats, "subject_size": 10,
                     "smoke": args.smoke},
        "load_average_start": load_start,
    }
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lethe-speedup-", dir=args.workdir) as tmp:
        spec = dataset_spec("fashion-mnist", limit=n_train, test_limit=2000 if args.smoke else None,
                            workdir=Path(tmp))
        dspec = DatasetSpec(spec=spec, subject_size=10)
        data = load_dataset(spec, subject_size=10)
        store = LocalBlobStore(Path(tmp) / "store")
        training = training_spec(epochs=epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                                 weight_decay=0.0, seed=0)
        run = train_run(store, run_id="single", dataset=data, dataset_spec=dspec, model_name=args.model,
                        training=training, recording=RecordingSpec(mode="full"), device=device)
        result["train_seconds"] = run.spec.results.train_seconds
        result["storage_bytes"] = run.spec.results.storage_bytes
        if "sisa" in methods:
            t0 = time.perf_counter()
            train_sisa_run(store, run_id="sisa", dataset=data, dataset_spec=dspec, model_name=args.model,
                           training=training, sisa=SisaSpec(shards=shards, slices=slices, by_subject=True),
                           device=device)
            result["sisa_train_seconds"] = time.perf_counter() - t0
        subjects = sorted({s for s in data.train.subject_ids if s})
        subject = subjects[int(np.random.default_rng(0).integers(len(subjects)))]
        forget = ForgetSpec(subjects=(subject,))
        forget_set = data.train.subset(data.train.positions_of_subject(subject))
        result["forget_subject"] = subject
        print(f"trained in {result['train_seconds']:.1f}s; erasing {subject}", file=sys.stderr)
        rows: list[dict[str, Any]] = []
        trained = run.load_weights(run.spec.trained_weights)
        for method in methods:
            partial = method.startswith("partial-")
            options: dict[str, Any] = {
                "recovery_steps": 0 if method in ("retrain", "sisa") else args.recovery_steps
            }
            if partial:  # only the partial variants take pruning shares
                options.update(prune_first=prune_first, prune_last=prune_last)
            times, recov, model = [], [], None
            for _ in range(1 if method == "retrain" else repeats):
                done = apply_method(store, run_id="sisa" if method == "sisa" else "single", method=method,
                                    forget=forget, method_options=options, device=device, publish=False)
                times.append(done.outcome.unlearn_seconds)
                recov.append(done.outcome.recovery_seconds)
                model = done.outcome.model
            assert model is not None
            row = {
                "method": method,
                "unlearn_seconds": statistics.median(times),
                "recovery_seconds": statistics.median(recov),
                "unlearn_seconds_all": times,
                "forget_acc": accuracy(collect_outputs(model, forget_set, device=device)),
                "test_acc": accuracy(collect_outputs(model, data.test, device=device)),
                # a speed-up only counts for a method that changed the weights
                "weights_changed": method in ("retrain", "sisa") or states_differ(model.state_dict(), trained),
                **{k: done.outcome.details[k] for k in ("batches_subtracted", "bytes_read", "samples_processed")
                   if k in done.outcome.details},
            }
            rows.append(row)
            print(f"{method}: {row['unlearn_seconds']:.3f}s + {row['recovery_seconds']:.3f}s "
                  f"forget {row['forget_acc']:.2f} test {row['test_acc']:.3f}", file=sys.stderr)
        original = run.model_with(run.load_weights(run.spec.trained_weights))
        result["original_test_acc"] = accuracy(collect_outputs(original, data.test, device=device))
        result["original_forget_acc"] = accuracy(collect_outputs(original, forget_set, device=device))
    base = next((r for r in rows if r["method"] == "retrain"), None)
    for row in rows:
        spent = row["unlearn_seconds"] + row["recovery_seconds"]
        row["speedup_vs_retrain"] = (
            base["unlearn_seconds"] / spent if base and spent > 0 and row["weights_changed"] else None
        )
    result["methods"] = rows
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_end"] = load_average()
    emit(result, out, [plot(result, out.with_suffix(".png"))])


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    rows = [r for r in result["methods"] if r["speedup_vs_retrain"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([r["method"] for r in rows], [r["speedup_vs_retrain"] for r in rows])
    for i, r in enumerate(rows):
        ax.text(r["speedup_vs_retrain"], i, f" {r['speedup_vs_retrain']:.0f}x  test {r['test_acc']:.3f}", va="center")
    ax.set_xscale("log")
    ax.invert_yaxis()
    s = result["settings"]
    ax.set_xlabel("speed-up vs retraining from scratch (log)")
    ax.set_title(f"one subject's erasure: {s['model']}, {s['n_train']} samples, {s['epochs']} epochs "
                 f"({result['device']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
