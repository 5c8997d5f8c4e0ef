"""Experiment 3: retain and forget accuracy vs the share of training batches that held the
forgotten class, for amnesiac vs layer-wise partial amnesiac.

Why: amnesiac unlearning subtracts every batch that held forget data. When the class is
spread over all batches (uniform shuffling, 100%) that is the whole training and the model
falls back to its initialisation; when it sits in a few batches, only those are undone.
For each share Q the same model is trained from the same seed with the class concentrated
in Q of each epoch's batches (full updates recorded), then unlearned both ways from the
same weights (partial: first layer 0.99 -> last 0.5 pruned, no recovery fine-tune).

    python bench/affected_batches.py [--shares 10,15,20,40,70,100] [--limit 20000]

Prints one JSON object on the last line of stdout and writes it (and a PNG) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    RESULTS,
    dataset_spec,
    emit,
    environment,
    fast_math,
    parse_floats,
    pyplot,
    quick_metrics,
    stopwatch,
    train_recorded,
)

from unlearning_core.data import load_dataset
from unlearning_core.forget import ForgetSpec
from unlearning_core.pipeline import apply_method
from unlearning_core.store import LocalBlobStore
from unlearning_core.training.loop import resolve_device

METHODS = ("amnesiac", "partial-amnesiac")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--limit", type=int, default=20000, help="stratified training subset (0: all)")
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--forget-class", type=int, default=0)
    ap.add_argument("--shares", default="10,15,20,40,70,100", help="percent of batches holding the class (a whole class of 10 balanced ones needs at least 10)")
    ap.add_argument("--prune-first", type=float, default=0.99)
    ap.add_argument("--prune-last", type=float, default=0.5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "affected_batches.json")
    args = ap.parse_args()
    shares = parse_floats(args.shares)
    if not shares or any(not 0.0 < s <= 100.0 for s in shares):
        sys.exit(f"--shares must be percentages in (0, 100], got {args.shares!r}")
    device = resolve_device(args.device)
    fast_math(device)
    forget = ForgetSpec(classes=(args.forget_class,))
    options = {
        "amnesiac": {},
        "partial-amnesiac": {"prune_first": args.prune_first, "prune_last": args.prune_last},
    }
    result: dict[str, Any] = {
        "benchmark": "affected_batches", **environment(device), "dataset": args.dataset,
        "model": args.model, "train_limit": args.limit or None, "test_limit": args.test_limit or None,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "forget_class": args.forget_class, "prune_first": args.prune_first,
        "prune_last": args.prune_last, "recovery_steps": 0, "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="lethe-affected-") as tmp, stopwatch() as total:
        spec = dataset_spec(args.dataset, limit=args.limit or None, test_limit=args.test_limit or None,
                            workdir=Path(tmp))
        data = load_dataset(spec)
        positions = data.train.positions_of_class(args.forget_class)
        for pct in shares:
            store = LocalBlobStore(Path(tmp) / f"store-{pct:g}")
            run_id = f"share-{pct:g}"
            with stopwatch() as t:
                run = train_recorded(
                    store, run_id=run_id, spec=spec, model=args.model, epochs=args.epochs,
                    batch_size=args.batch_size, lr=args.lr,
                    concentrate=(args.forget_class, pct / 100.0), device=device,
                )
            original = run.model_with(run.load_weights(run.spec.trained_weights))
            row: dict[str, Any] = {
                "share_percent": pct, "train_seconds": t["seconds"], "steps": run.spec.results.steps,
                "original": _keep(quick_metrics(original, data, positions, device=device)),
            }
            for method in METHODS:
                done = apply_method(store, run_id=run_id, method=method, forget=forget,
                                    method_options=options[method], device=device, publish=False)
                row[method] = {
                    **_keep(quick_metrics(done.outcome.model, data, positions, device=device)),
                    "unlearn_seconds": done.outcome.unlearn_seconds,
                    "batches_subtracted": done.outcome.details["batches_subtracted"],
                }
            row["affected_batch_share"] = row["amnesiac"]["batches_subtracted"] / row["steps"]
            print(f"{row}", file=sys.stderr)
            result["points"].append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # kept if a later share fails
            _cleanup(Path(tmp) / f"store-{pct:g}")
    result["wall_seconds"] = total["seconds"]
    png = args.out.with_suffix(".png")
    plot(result, png)
    emit(result, args.out, [png])


def _keep(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("forget_acc", "retain_acc", "test_acc")}


def _cleanup(path: Path) -> None:
    """A share's run is not needed once measured; its updates are the bulk of the disk use."""
    shutil.rmtree(path, ignore_errors=True)


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    pts = result["points"]
    xs = [100 * p["affected_batch_share"] for p in pts]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    style = {"amnesiac": "#d62728", "partial-amnesiac": "#1f77b4"}
    for method, color in style.items():
        ax.plot(xs, [p[method]["retain_acc"] for p in pts], "o-", color=color, label=f"{method}: retain acc")
        ax.plot(xs, [p[method]["forget_acc"] for p in pts], "s--", color=color, label=f"{method}: forget acc")
    ax.plot(xs, [p["original"]["retain_acc"] for p in pts], ":", color="#999999", label="original retain acc")
    ax.set_xlabel("% of training batches that held the forgotten class")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.0)
    ax.set_title(f"{result['model']}, forget class {result['forget_class']}, partial "
                 f"{result['prune_first']}->{result['prune_last']}, {result['device']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
