"""Recorded training and amnesiac vs layer-wise partial amnesiac unlearning on Fashion-MNIST.

Side by side in one process: the same seed trains the same model three times (recording
none / full / partial), so the time ratios are the recording overhead; then both methods
unlearn (a) one class concentrated in a share of the batches and (b) a 1% random-sample
forget set, from the same trained weights (dry runs: nothing is published).

    python bench/amnesiac_fashion.py [--epochs 2] [--model small-cnn] [--device auto]

Prints one JSON object on the last line of stdout and writes it to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import stamped  # noqa: E402

from unlearning_core.data import load_dataset  # noqa: E402
from unlearning_core.forget import ForgetSpec
from unlearning_core.pipeline import unlearn
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore
from unlearning_core.training.loop import resolve_device

KEEP = ("forget_acc", "retain_acc", "test_acc", "macro_f1", "mia_auc", "mia_efficacy",
        "unlearn_seconds", "relearn_steps", "batches_subtracted", "bytes_read", "original_forget_acc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--forget-class", type=int, default=0)
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--prune-first", type=float, default=0.99)
    ap.add_argument("--prune-last", type=float, default=0.5)
    ap.add_argument("--random-fraction", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3,
                    help="training rounds, each trains none / full / partial in another order (medians)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "amnesiac_fashion.json")
    args = ap.parse_args()

    device = resolve_device(args.device)
    data = load_dataset(args.dataset)
    training = TrainingSpec(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9, weight_decay=0.0,
        seed=0, concentrate_class=args.forget_class, concentrate_share=args.share,
    )
    result: dict = {
        "benchmark": "amnesiac_fashion", "dataset": args.dataset, "model": args.model,
        "device": str(device), "epochs": args.epochs, "batch_size": args.batch_size,
        "forget_class": args.forget_class, "class_batch_share": args.share,
        "prune_first": args.prune_first, "prune_last": args.prune_last, "training": {},
    }
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        store = LocalBlobStore(Path(tmp))
        modes = ("none", "full", "partial")
        rounds: list[dict[str, dict]] = []
        for k in range(args.repeats):  # interleaved, so that a busy spell hits every mode
            order = modes[k % 3:] + modes[:k % 3]
            measured: dict[str, dict] = {}
            for mode in order:
                started = time.perf_counter()
                run = train_run(
                    store, run_id=f"{mode}-r{k}", dataset=data, dataset_spec=DatasetSpec(spec=args.dataset),
                    model_name=args.model, training=training,
                    recording=RecordingSpec(mode=mode, prune_first=args.prune_first, prune_last=args.prune_last),
                    device=device, progress=True,
                )
                r = run.spec.results
                measured[mode] = {
                    "train_seconds": r.train_seconds, "total_seconds": time.perf_counter() - started,
                    "stall_seconds": r.stall_seconds, "backpressure_seconds": r.backpressure_seconds,
                    "storage_bytes": r.storage_bytes, "steps": r.steps, "weights_sha256": run.spec.trained_weights.sha256,
                }
                print(f"round {k} trained {mode}: {measured[mode]}", file=sys.stderr)
            rounds.append(measured)
        last = args.repeats - 1
        for mode in modes:
            xs = [r[mode] for r in rounds]
            row = {key: statistics.median(x[key] for x in xs) for key in
                   ("train_seconds", "total_seconds", "stall_seconds", "backpressure_seconds")}
            row.update(storage_bytes=xs[0]["storage_bytes"], steps=xs[0]["steps"],
                       train_seconds_all=[x["train_seconds"] for x in xs])
            if mode != "none":
                # the median of each round's ratio: a busy spell moves both sides of a round
                row["overhead_vs_none"] = statistics.median(
                    r[mode]["train_seconds"] / r["none"]["train_seconds"] - 1 for r in rounds)
            result["training"][mode] = row
        # recording only reads the model: every mode trains the same weights
        result["same_weights"] = len({r[m]["weights_sha256"] for r in rounds for m in modes}) == 1
        result["repeats"] = args.repeats
        result["storage_partial_over_full"] = (
            result["training"]["partial"]["storage_bytes"] / result["training"]["full"]["storage_bytes"]
        )
        rng = np.random.default_rng(0)
        n = len(data.train)
        random_ids = tuple(
            data.train.sample_ids[i] for i in rng.choice(n, size=round(args.random_fraction * n), replace=False)
        )
        scenarios = {
            "class": ForgetSpec(classes=(args.forget_class,)),
            "random_1pct": ForgetSpec(sample_ids=random_ids),
        }
        for name, forget in scenarios.items():
            result[name] = {}
            for method, run_id in (("amnesiac", f"full-r{last}"), ("partial-amnesiac", f"partial-r{last}")):
                out = unlearn(store, run_id=run_id, method=method, forget=forget, device=device,
                              progress=True, publish=False)
                result[name][method] = {k: out.get(k) for k in KEEP}
                print(f"{name} {method}: {result[name][method]}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = stamped(result)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
