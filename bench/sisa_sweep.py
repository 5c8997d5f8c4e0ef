"""SISA: training cost, accuracy and one subject's unlearning cost against a single model.

For S shards in {1,4,8,16} and R slices in {1,4} (each data subject kept in one shard and
slice), on the same Fashion-MNIST subset as a single small-cnn: training seconds, test
accuracy of the softmax ensemble, and the seconds SISA takes to erase one subject (median
over a few subjects, since the cost depends on which slice the subject sits in), next to
retraining the single model from scratch. Everything runs in one process, so the ratios
(``speedup_vs_retrain``, ``train_cost_vs_single``) come from one machine state.

    python bench/sisa_sweep.py [--n-train 6000] [--epochs 2] [--device auto]

Prints one JSON object on the last line of stdout and writes it and a PNG under
bench/results/.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, dataset_spec, emit, environment, fast_math, pyplot  # noqa: E402
from sample_forgetting import load_average, training_spec  # noqa: E402

from unlearning_core.data import load_dataset  # noqa: E402
from unlearning_core.forget import ForgetSpec  # noqa: E402
from unlearning_core.metrics import accuracy, collect_outputs  # noqa: E402
from unlearning_core.pipeline import apply_method  # noqa: E402
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, SisaSpec  # noqa: E402
from unlearning_core.runs.train import train_run  # noqa: E402
from unlearning_core.sisa.run import train_sisa_run  # noqa: E402
from unlearning_core.store import LocalBlobStore  # noqa: E402
from unlearning_core.training.loop import resolve_device  # noqa: E402


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"expected comma-separated integers, got {text!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--n-train", type=int, default=6_000, help="stratified subset (0: all 60,000)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs (SISA: per slice stage)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--shards", default="1,4,8,16")
    ap.add_argument("--slices", default="1,4")
    ap.add_argument("--subjects", type=int, default=3, help="subjects erased (one at a time) per setting")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "sisa_sweep.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    fast_math(device)
    started, load_start = time.perf_counter(), load_average()
    result: dict[str, Any] = {
        "benchmark": "sisa_sweep", **environment(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "load_average_start": load_start,
    }
    with tempfile.TemporaryDirectory(prefix="lethe-sisa-") as tmp:
        spec = dataset_spec("fashion-mnist", limit=args.n_train or None, test_limit=None, workdir=Path(tmp))
        dspec = DatasetSpec(spec=spec, subject_size=10)
        data = load_dataset(spec, subject_size=10)
        store = LocalBlobStore(Path(tmp) / "store")
        training = training_spec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                                 weight_decay=0.0, seed=0)
        subjects = sorted({s for s in data.train.subject_ids if s})
        picked = [subjects[i] for i in np.random.default_rng(0).choice(len(subjects), args.subjects, replace=False)]
        single = train_run(store, run_id="single", dataset=data, dataset_spec=dspec, model_name=args.model,
                           training=training, recording=RecordingSpec(mode="none"), device=device)
        net = single.model_with(single.load_weights(single.spec.trained_weights))
        retrain = [apply_method(store, run_id="single", method="retrain", forget=ForgetSpec(subjects=(s,)),
                                device=device, publish=False).outcome.unlearn_seconds for s in picked[:1]]
        result["single"] = {
            "train_seconds": single.spec.results.train_seconds,
            "test_acc": accuracy(collect_outputs(net, data.test, device=device)),
            "retrain_seconds": statistics.median(retrain),
        }
        print(f"single: {result['single']}", file=sys.stderr)
        rows = []
        for s in ints(args.shards):
            for r in ints(args.slices):
                run_id = f"sisa-{s}x{r}"
                t0 = time.perf_counter()
                run = train_sisa_run(store, run_id=run_id, dataset=data, dataset_spec=dspec, model_name=args.model,
                                     training=training, sisa=SisaSpec(shards=s, slices=r, by_subject=True),
                                     device=device)
                train_seconds = time.perf_counter() - t0
                ensemble = run.model_with(run.load_weights(run.spec.trained_weights))
                unlearn, processed = [], []
                for subject in picked:
                    done = apply_method(store, run_id=run_id, method="sisa", forget=ForgetSpec(subjects=(subject,)),
                                        device=device, publish=False)
                    unlearn.append(done.outcome.unlearn_seconds)
                    processed.append(done.outcome.details.get("samples_processed"))
                row = {
                    "shards": s, "slices": r, "train_seconds": train_seconds,
                    "train_cost_vs_single": train_seconds / result["single"]["train_seconds"],
                    "test_acc": accuracy(collect_outputs(ensemble, data.test, device=device)),
                    "unlearn_seconds": statistics.median(unlearn), "unlearn_seconds_all": unlearn,
                    "samples_processed": processed,
                }
                row["test_acc_vs_single"] = row["test_acc"] - result["single"]["test_acc"]
                row["speedup_vs_retrain"] = result["single"]["retrain_seconds"] / row["unlearn_seconds"]
                rows.append(row)
                print(f"S={s} R={r}: {row}", file=sys.stderr)
        result["settings_rows"] = rows
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_end"] = load_average()
    emit(result, args.out, [plot(result, args.out.with_suffix(".png"))])


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    rows = result["settings_rows"]
    for r in sorted({x["slices"] for x in rows}):
        sel = [x for x in rows if x["slices"] == r]
        a1.plot([x["shards"] for x in sel], [x["speedup_vs_retrain"] for x in sel], "o-", label=f"R={r}")
        a2.plot([x["shards"] for x in sel], [x["test_acc"] for x in sel], "o-", label=f"R={r}")
    a2.axhline(result["single"]["test_acc"], color="grey", ls="--", label="single model")
    a1.set(xscale="log", yscale="log", xlabel="shards S", ylabel="speed-up of one subject's erasure vs retrain")
    a2.set(xscale="log", xlabel="shards S", ylabel="test accuracy")
    for a in (a1, a2):
        a.set_xticks([x["shards"] for x in rows], [str(x["shards"]) for x in rows])
        a.legend()
    s = result["settings"]
    fig.suptitle(f"SISA vs a single {s['model']} ({s['n_train']} samples, {s['epochs']} epochs, {result['device']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
