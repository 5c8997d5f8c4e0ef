"""Experiment 1: forget one Fashion-MNIST class with amnesiac vs layer-wise partial amnesiac.

The seed's table, reproduced per model: accuracy on the forgotten class, on the retained
training data, and on three other classes, for the original model, amnesiac unlearning
(subtract every full stored update of the batches that held the class) and partial
amnesiac (the same updates pruned layer-wise, 0.99 at the first layer down to 0.5 at the
last), with no recovery fine-tune.

Setting (stated in the JSON): the forgotten class sits in a share of the batches
(``--share``, default 0.2), as when a subject's data arrive during part of training. With
uniform shuffling every batch holds the class and amnesiac subtracts the whole training.

Each model is trained ONCE with full updates recorded (``--dtype``, float16 by default to
halve the disk use); every method then starts from the same weights. Partial amnesiac prunes
those full updates at request time, once per mask kind of ``--masks`` (``fixed``: one mask
per layer for the whole run, the formula's P_l; ``random``: a new mask per step;
``magnitude``: each step's largest entries): the masks are nested and seeded, so each is
exactly what a run recorded with ``--record partial --mask KIND --prune-first 0.99
--prune-last 0.5`` would subtract. ``partial-amnesiac`` in the JSON is the default mask's
row; ``partial_by_mask`` holds all of them. A run's blobs are deleted as soon as its model
is done.

    python bench/class_forgetting.py --models alexnet,resnet18 --limit 6000 --epochs 2
    python bench/class_forgetting.py --models resnet50,vit --device cuda --limit 0 \
        --out bench/results/gpu/class_forgetting.json

Prints one JSON object on the last line of stdout and writes it (and a PNG) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
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
    pyplot,
    quick_metrics,
    stopwatch,
)

from unlearning_core.data import load_dataset
from unlearning_core.forget import ForgetSpec
from unlearning_core.pipeline import apply_method
from unlearning_core.recording import DEFAULT_MASK, MASK_KINDS
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore
from unlearning_core.training.loop import resolve_device

#: The seed's table (percent): retain accuracy of partial vs amnesiac; forget acc 0 for both.
SEED_TABLE = {
    "alexnet": {"partial-amnesiac": 81.30, "amnesiac": 40.73},
    "resnet50": {"partial-amnesiac": 89.89, "amnesiac": 18.03},
    "vit": {"partial-amnesiac": 85.00, "amnesiac": 15.15, "note": "seed used ViT-Large; Lethe's vit is ViT-Tiny-like"},
}
#: SGD learning rate per model when --lr is not given (AlexNet has no BatchNorm: lower).
DEFAULT_LR = {"alexnet": 0.01, "vit": 0.01}


def run_model(
    model: str, *, spec: str, args: argparse.Namespace, device: Any, others: list[int]
) -> dict[str, Any]:
    """Train one recorded run, unlearn the class both ways, report the seed's columns."""
    lr = args.lr if args.lr is not None else DEFAULT_LR.get(model, 0.05)
    training = TrainingSpec(
        epochs=args.epochs, batch_size=args.batch_size, lr=lr, momentum=0.9, weight_decay=0.0,
        seed=args.seed, concentrate_class=args.forget_class, concentrate_share=args.share,
    )
    with tempfile.TemporaryDirectory(prefix=f"lethe-cf-{model}-", dir=args.workdir) as tmp:
        store = LocalBlobStore(Path(tmp))
        data = load_dataset(spec)
        with stopwatch() as t_train:
            run = train_run(
                store, run_id=model, dataset=data, dataset_spec=DatasetSpec(spec=spec),
                model_name=model, training=training,
                recording=RecordingSpec(mode="full", dtype=args.dtype), device=device,
                progress=args.progress,
            )
        res = run.spec.results
        row: dict[str, Any] = {
            "model": model, "lr": lr, "steps": res.steps, "train_seconds": res.train_seconds,
            "record_stall_seconds": res.stall_seconds, "storage_bytes": res.storage_bytes,
            "train_total_seconds": t_train["seconds"],
            "parameters": sum(_numel(v) for v in run.spec.tensors.values()),
        }
        print(f"[{model}] trained: {row}", file=sys.stderr)
        forget = ForgetSpec(classes=(args.forget_class,))
        original = run.model_with(run.load_weights(run.spec.trained_weights))
        positions = data.train.positions_of_class(args.forget_class)
        row["original"] = _columns(quick_metrics(original, data, positions, device=device), others, args)
        methods: dict[str, tuple[str, dict[str, Any]]] = {"amnesiac": ("amnesiac", {})}
        for mask in args.masks:
            methods[f"partial-amnesiac/{mask}"] = (
                "partial-amnesiac", {"prune_first": args.prune_first, "prune_last": args.prune_last, "mask": mask},
            )
        row["partial_by_mask"] = {}
        affected = [run.update_blobs[int(k)] for k in run.index.steps_holding(positions)]
        for label, (method, options) in methods.items():
            for blob in affected:  # every method reads them from the page cache, whatever its turn
                store.get(blob.key, expected_sha256=blob.sha256)
            done = apply_method(
                store, run_id=model, method=method, forget=forget, method_options=options, device=device,
                publish=False,
            )
            metrics = quick_metrics(done.outcome.model, data, positions, device=device)
            cols = {
                **_columns(metrics, others, args),
                "unlearn_seconds": done.outcome.unlearn_seconds,
                **{k: done.outcome.details.get(k) for k in ("batches_subtracted", "bytes_read")},
            }
            if method == "amnesiac":
                row["amnesiac"] = cols
            else:
                row["partial_by_mask"][options["mask"]] = cols
            print(f"[{model}] {label}: {cols}", file=sys.stderr)
    by_mask = row["partial_by_mask"]
    row["partial-amnesiac"] = by_mask.get(DEFAULT_MASK) or next(iter(by_mask.values()))
    row["affected_batch_share"] = row["amnesiac"]["batches_subtracted"] / row["steps"]
    return row


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _columns(metrics: dict[str, Any], others: list[int], args: argparse.Namespace) -> dict[str, Any]:
    per_class = metrics["per_class_acc"]
    return {
        "forget_acc": metrics["forget_acc"],
        "retain_acc": metrics["retain_acc"],
        "test_acc": metrics["test_acc"],
        "forget_class_test_acc": per_class[str(args.forget_class)],
        "other_class_acc": {str(k): per_class[str(k)] for k in others},
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """Retain accuracy per model and method (bars; partial amnesiac per mask kind), forget-class
    accuracy (dots)."""
    plt = pyplot()
    rows = result["rows"]
    names = [r["model"] for r in rows]
    colors = {"fixed": "#1f77b4", "random": "#17becf", "magnitude": "#9467bd"}
    series: list[tuple[str, str, Any]] = [
        ("original", "#999999", lambda r: r["original"]),
        ("amnesiac", "#d62728", lambda r: r["amnesiac"]),
    ]
    for mask in result.get("masks") or []:
        series.append((f"partial ({mask})", colors.get(mask, "#1f77b4"),
                       lambda r, m=mask: r.get("partial_by_mask", {}).get(m)))
    if not result.get("masks"):
        series.append(("partial-amnesiac", "#1f77b4", lambda r: r["partial-amnesiac"]))
    fig, ax = plt.subplots(figsize=(2.4 + 2.0 * len(rows), 4))
    width = 0.8 / len(series)
    for i, (label, color, pick) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        vals = [pick(r) or {} for r in rows]
        ax.bar(xs, [v.get("retain_acc", 0) for v in vals], width, color=color, label=f"{label} retain")
        ax.scatter(xs, [v.get("forget_acc", 0) for v in vals], color="black", marker="x", zorder=3,
                   label="forget-class acc" if i == 0 else None)
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"Forget class {result['forget_class']} ({result['class_batch_share']:.0%} of batches), "
        f"{result['device']}"
    )
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="alexnet,resnet18")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--limit", type=int, default=6000, help="stratified training subset (0: all)")
    ap.add_argument("--test-limit", type=int, default=2000, help="stratified test subset (0: all)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=None, help="default: 0.01 alexnet/vit, else 0.05")
    ap.add_argument("--forget-class", type=int, default=0)
    ap.add_argument("--others", default="1,7,8", help="three other classes to report")
    ap.add_argument("--share", type=float, default=0.2, help="share of batches holding the class")
    ap.add_argument("--prune-first", type=float, default=0.99)
    ap.add_argument("--prune-last", type=float, default=0.5)
    ap.add_argument("--masks", default=",".join(MASK_KINDS),
                    help=f"mask kinds partial amnesiac prunes with, side by side (default mask: {DEFAULT_MASK})")
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", type=Path, default=None, help="where run blobs go (deleted after)")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "class_forgetting.json")
    args = ap.parse_args()
    args.masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    if not args.masks or any(m not in MASK_KINDS for m in args.masks):
        sys.exit(f"--masks takes {', '.join(MASK_KINDS)}, got {','.join(args.masks)!r}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        sys.exit("--models names no model")
    try:
        others = [int(k) for k in args.others.split(",")]
    except ValueError:
        sys.exit(f"--others takes class numbers such as 1,7,8, got {args.others!r}")
    device = resolve_device(args.device)
    fast_math(device)
    result: dict[str, Any] = {
        "benchmark": "class_forgetting", **environment(device), "dataset": args.dataset,
        "train_limit": args.limit or None, "test_limit": args.test_limit or None,
        "epochs": args.epochs, "batch_size": args.batch_size, "forget_class": args.forget_class,
        "other_classes": others, "class_batch_share": args.share,
        "prune_first": args.prune_first, "prune_last": args.prune_last, "recovery_steps": 0,
        "recording": f"full, {args.dtype}; partial prunes the same updates at request time",
        "masks": args.masks, "default_mask": DEFAULT_MASK,
        "timing": "unlearn_seconds with the affected update blobs read once before each method (page cache warm)",
        "seed_table_percent": SEED_TABLE, "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="lethe-cf-data-", dir=args.workdir) as tmp:
        spec = dataset_spec(args.dataset, limit=args.limit or None, test_limit=args.test_limit or None,
                            workdir=Path(tmp), seed=args.seed)
        with stopwatch() as total:
            for model in models:
                with stopwatch() as t:
                    row = run_model(model, spec=spec, args=args, device=device, others=others)
                row["wall_seconds"] = t["seconds"]
                result["rows"].append(row)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=2) + "\n")  # kept if a later model fails
    result["wall_seconds"] = total["seconds"]
    png = args.out.with_suffix(".png")
    plot(result, png)
    emit(result, args.out, [png])


if __name__ == "__main__":
    main()
