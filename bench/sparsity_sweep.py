"""Experiment 2: retain and forget accuracy vs how much of the stored updates is pruned.

One run (full updates recorded, the forgotten class in ``--share`` of the batches) is
unlearned again and again with partial amnesiac at growing pruning: the first layer's share
stays at ``--prune-first`` (0.99) and the last layer's share L goes from 0 to 0.99, layers
between interpolated (the seed's layer-wise schedule). The x axis is the parameter-weighted
share of update entries pruned. Marked: the largest pruning of the sweep that still leaves
forget accuracy 0, and the point ``--prune auto`` picks by bisection at unlearning time (its
probes are in the JSON). Amnesiac (nothing pruned) is the left end for reference.

The sweep (and the ``--prune auto`` point) is run once per mask kind of ``--masks``, side by
side on the same run: ``fixed`` (one mask per layer for the whole run, the formula's P_l),
``random`` (a new mask per step) and ``magnitude`` (each step's largest entries). Pruning at
request time from full updates is exact: every mask kind is nested and seeded, so each point
is what a run recorded with that mask and pruning subtracts. ``points``, ``largest_zero_forget``
and ``auto`` at the top level are the default mask's; ``masks`` holds every kind's.

    python bench/sparsity_sweep.py [--model small-cnn] [--epochs 2] [--device auto] [--masks fixed,random,magnitude]

Prints one JSON object on the last line of stdout and writes it (and a PNG) to ``--out``.
"""

from __future__ import annotations

import argparse
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
from unlearning_core.methods.prune_search import PruneSearch, pruned_share
from unlearning_core.pipeline import apply_method
from unlearning_core.recording import DEFAULT_MASK, MASK_KINDS, PruneSchedule
from unlearning_core.store import LocalBlobStore
from unlearning_core.training.loop import resolve_device

DEFAULT_LASTS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95,0.99"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--limit", type=int, default=0, help="stratified training subset (0: all)")
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--forget-class", type=int, default=0)
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--prune-first", type=float, default=0.99)
    ap.add_argument("--lasts", default=DEFAULT_LASTS, help="last-layer shares to sweep")
    ap.add_argument("--auto-probes", type=int, default=8)
    ap.add_argument("--masks", default=",".join(MASK_KINDS), help="mask kinds to sweep, side by side")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "sparsity_sweep.json")
    args = ap.parse_args()
    lasts = parse_floats(args.lasts)
    masks = [m.strip() for m in args.masks.split(",") if m.strip()]
    if not masks or any(m not in MASK_KINDS for m in masks):
        sys.exit(f"--masks takes {', '.join(MASK_KINDS)}, got {args.masks!r}")
    if not lasts or any(not 0.0 <= x < 1.0 for x in lasts):
        sys.exit(f"--lasts must be shares in [0, 1), got {args.lasts!r}")
    device = resolve_device(args.device)
    fast_math(device)
    forget = ForgetSpec(classes=(args.forget_class,))
    result: dict[str, Any] = {
        "benchmark": "sparsity_sweep", **environment(device), "dataset": args.dataset,
        "model": args.model, "train_limit": args.limit or None, "test_limit": args.test_limit or None,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "forget_class": args.forget_class, "class_batch_share": args.share,
        "prune_first": args.prune_first, "recovery_steps": 0, "points": [],
        "mask_kinds": masks, "default_mask": DEFAULT_MASK, "masks": {},
    }
    with tempfile.TemporaryDirectory(prefix="lethe-sweep-") as tmp, stopwatch() as total:
        spec = dataset_spec(args.dataset, limit=args.limit or None, test_limit=args.test_limit or None,
                            workdir=Path(tmp))
        store = LocalBlobStore(Path(tmp) / "store")
        with stopwatch() as t:
            run = train_recorded(
                store, run_id="sweep", spec=spec, model=args.model, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, concentrate=(args.forget_class, args.share),
                device=device,
            )
        result["train_seconds"] = t["seconds"]
        data = load_dataset(spec)
        positions = data.train.positions_of_class(args.forget_class)
        original = run.model_with(run.load_weights(run.spec.trained_weights))
        result["original"] = quick_metrics(original, data, positions, device=device)

        def point(method: str, options: dict[str, Any], share: float, last: float | None) -> dict[str, Any]:
            done = apply_method(store, run_id="sweep", method=method, forget=forget, method_options=options,
                                device=device, publish=False)
            m = quick_metrics(done.outcome.model, data, positions, device=device)
            row = {"method": method, "prune_last": last, "pruned_share": share,
                   "unlearn_seconds": done.outcome.unlearn_seconds,
                   **{k: m[k] for k in ("forget_acc", "retain_acc", "test_acc")}}
            print(f"{row}", file=sys.stderr)
            return row | {"details": done.outcome.details}

        amn = point("amnesiac", {}, 0.0, None)
        result["amnesiac"] = {k: v for k, v in amn.items() if k != "details"}
        for mask in masks:
            sweep: dict[str, Any] = {"points": []}
            for last in lasts:
                share = pruned_share(PruneSchedule(args.prune_first, last), run.spec.tensors)
                row = point("partial-amnesiac", {"prune_first": args.prune_first, "prune_last": last, "mask": mask},
                            share, last)
                sweep["points"].append({k: v for k, v in row.items() if k != "details"} | {"mask": mask})
            zero = [p for p in sweep["points"] if p["forget_acc"] == 0.0]
            sweep["largest_zero_forget"] = max(zero, key=lambda p: p["pruned_share"]) if zero else None
            auto = point("partial-amnesiac",
                         {"prune_first": args.prune_first, "mask": mask,
                          "prune_search": PruneSearch(max_probes=args.auto_probes)},
                         0.0, None)
            d = auto.pop("details")
            auto.update(prune_last=d["prune_last"], pruned_share=d["pruned_share"], search=d["prune_auto"],
                        mask=mask)
            sweep["auto"] = auto
            result["masks"][mask] = sweep
        top = result["masks"].get(DEFAULT_MASK) or next(iter(result["masks"].values()))
        result["points"], result["largest_zero_forget"], result["auto"] = (
            top["points"], top["largest_zero_forget"], top["auto"],
        )
    result["wall_seconds"] = total["seconds"]
    png = args.out.with_suffix(".png")
    plot(result, png)
    emit(result, args.out, [png])


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    sweeps = result.get("masks") or {"": {"points": result["points"], "auto": result["auto"]}}
    styles = {"fixed": "-", "random": "--", "magnitude": ":", "": "-"}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for mask, sweep in sweeps.items():
        pts = sweep["points"]
        xs = [p["pruned_share"] for p in pts]
        tag = f" ({mask})" if mask else ""
        ls = styles.get(mask, "-")
        ax.plot(xs, [p["retain_acc"] for p in pts], marker="o", ls=ls, color="#1f77b4", ms=4,
                label=f"partial{tag}: retain acc")
        ax.plot(xs, [p["forget_acc"] for p in pts], marker="s", ls=ls, color="#d62728", ms=4,
                label=f"partial{tag}: forget acc")
        auto = sweep["auto"]
        ax.scatter([auto["pruned_share"]], [auto["retain_acc"]], color="#ff7f0e", marker="*", s=160, zorder=4,
                   label=f"--prune auto{tag} ({auto['pruned_share']:.3f}, forget {auto['forget_acc']:.2f})")
    a = result["amnesiac"]
    ax.scatter([0], [a["retain_acc"]], color="#1f77b4", marker="D", s=50, label="amnesiac (0 pruned): retain")
    ax.scatter([0], [a["forget_acc"]], color="#d62728", marker="D", s=50)
    ax.axhline(result["original"]["retain_acc"], color="#999999", lw=1, ls=":", label="original retain acc")
    ax.set_xlabel("share of stored update entries pruned (parameter-weighted)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.0)
    ax.set_title(f"{result['model']}, class {result['forget_class']} in {result['class_batch_share']:.0%} "
                 f"of batches, first layer {result['prune_first']}, {result['device']}")
    ax.legend(fontsize=6, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
