"""Storage that scales (#17, part 4): what each way of storing fewer bytes costs in forgetting,
and what a run would store at ImageNet scale.

Three parts, one result file:

1. **Class forgetting per option.** The class-forgetting setting at small size (small-cnn on
   a stratified Fashion-MNIST subset, class ``--forget-class`` in ``--share`` of the
   batches, 2 epochs): the same seed trains once per recording option, and partial amnesiac
   unlearning (no recovery) erases the class. Options: today's partial recording (0.99 ->
   0.5, float32, the fixed mask; and the random mask, the default before), the first layers
   not recorded (``--skip-layers``), bfloat16 / float16 values, zlib-compressed blobs
   (``--compress``), one recorded step per K optimizer steps (``--group-steps``), magnitude
   masks pruned to a few percent, and combinations. Per option: forget / retain / test
   accuracy, bytes per recorded step and per run, the batches (or groups) subtracted.
2. **Compression.** Each lossless codec of the standard library (zlib levels 1 and 6, lzma
   preset 1, bz2) on the option's stored blobs: the ratio and MB/s of compressing and
   decompressing, measured on a sample of real blobs.
3. **ImageNet scale.** Bytes per recorded step of each option for small-cnn, ResNet-18,
   ResNet-50 and ViT-B/16 (torchvision's shapes, 1,000 classes, 224 x 224), measured by
   encoding one step's update of the real tensor shapes with Lethe's own encoder and
   serialiser, and the run's total at 90 epochs of 5,005 steps (batch 256 on ImageNet-1k's
   1,281,167 images), next to today's full float16. Compressed options take the ratio
   measured on part 1's real updates (random values do not compress like updates).

    python bench/storage_options.py [--limit 10000] [--epochs 2] [--device auto]

Prints one JSON object on the last line of stdout and writes it and a PNG under
bench/results/.
"""

from __future__ import annotations

import argparse
import bz2
import lzma
import math
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, dataset_spec, emit, environment, fast_math, pyplot, quick_metrics

from unlearning_core.data import load_dataset
from unlearning_core.forget import ForgetSpec
from unlearning_core.models import create_model
from unlearning_core.pipeline import apply_method
from unlearning_core.recording import encode_update, with_fixed_masks
from unlearning_core.recording.codec import serialize
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore
from unlearning_core.training.loop import resolve_device

#: option name -> RecordingSpec fields (partial recordings at the class-forgetting shares)
OPTIONS: dict[str, dict[str, Any]] = {
    "partial, random mask (before)": {"mask": "random"},
    "partial (today: fixed, float32)": {},
    "+ bfloat16": {"dtype": "bfloat16"},
    "+ float16": {"dtype": "float16"},
    "+ zlib": {"compression": "zlib"},
    "+ skip 1 layer": {"skip_layers": 1},
    "+ skip 2 layers": {"skip_layers": 2},
    "+ group 2 steps": {"group_steps": 2},
    "+ group 4 steps": {"group_steps": 4},
    "+ group 8 steps": {"group_steps": 8},
    "+ bfloat16, group 8": {"dtype": "bfloat16", "group_steps": 8},
    "+ bfloat16, group 8, zlib": {"dtype": "bfloat16", "group_steps": 8, "compression": "zlib"},
    "+ bfloat16, group 16": {"dtype": "bfloat16", "group_steps": 16},
    # magnitude masks keep each step's largest entries: the sparsity sweep finds them still
    # forgetting the class at 1% kept, where fixed and random masks no longer do
    "magnitude, 0.99 -> 0.95, bfloat16": {"mask": "magnitude", "prune_last": 0.95, "dtype": "bfloat16"},
    "magnitude, 0.99 everywhere, bfloat16": {"mask": "magnitude", "prune_last": 0.99, "dtype": "bfloat16"},
}
BASELINE = "partial (today: fixed, float32)"
#: ImageNet-1k at batch 256 for 90 epochs (torchvision's reference recipe)
IMAGENET = {"images": 1_281_167, "batch_size": 256, "epochs": 90}
CODECS = {
    "zlib-1": (lambda b: zlib.compress(b, 1), zlib.decompress),
    "zlib-6": (lambda b: zlib.compress(b, 6), zlib.decompress),
    "lzma-1": (lambda b: lzma.compress(b, preset=1), lzma.decompress),
    "bz2-9": (lambda b: bz2.compress(b, 9), bz2.decompress),
}


def imagenet_steps() -> int:
    return IMAGENET["epochs"] * math.ceil(IMAGENET["images"] / IMAGENET["batch_size"])


def big_models() -> dict[str, torch.nn.Module]:
    """The architectures of the table, at ImageNet size (untrained: only shapes matter)."""
    import torchvision

    return {
        "small-cnn": create_model("small-cnn", in_channels=3, image_size=(224, 224), num_classes=1000),
        "resnet18": torchvision.models.resnet18(num_classes=1000),
        "resnet50": torchvision.models.resnet50(num_classes=1000),
        "vit_b_16": torchvision.models.vit_b_16(num_classes=1000),
    }


def step_bytes(model: torch.nn.Module, recording: RecordingSpec) -> dict[str, Any]:
    """One recorded step's blob of ``model`` under ``recording``, encoded and serialised by
    Lethe's own code (values drawn at random: without compression the size does not depend
    on them); the fixed mask index, stored once per run, beside it."""
    state = {k: v for k, v in model.state_dict().items() if torch.is_floating_point(v)}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fmt = with_fixed_masks(recording.update_format(shapes))
    gen = torch.Generator().manual_seed(0)
    delta = {k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in state.items()}
    blob = serialize(encode_update(delta, fmt, epoch=0, batch=0), epoch=0, batch=0)
    mask = len(fmt.fixed.to_bytes()) if fmt.fixed is not None else 0
    return {"bytes_per_step": len(blob), "mask_bytes": mask,
            "parameters": sum(math.prod(s) for s in shapes.values())}


def scale_table(prune: tuple[float, float], zlib_ratio: dict[str, float]) -> dict[str, Any]:
    """``zlib_ratio``: per option, compressed / raw bytes measured on the class-forgetting
    run's real updates (random values would not compress like updates do); applied to every
    architecture's blob size."""
    steps = imagenet_steps()
    table_options: dict[str, dict[str, Any]] = {
        "full, float32": {"mode": "full"},
        "full, float16 (today)": {"mode": "full", "dtype": "float16"},
        **{name: {"mode": "partial", **opts} for name, opts in OPTIONS.items() if "random" not in name},
    }
    rows: dict[str, Any] = {}
    for model_name, model in big_models().items():
        rows[model_name] = {}
        for name, opts in table_options.items():
            opts = dict(opts)
            group = opts.pop("group_steps", 1)
            zipped = opts.pop("compression", "none") == "zlib"
            rec = RecordingSpec(**{"prune_first": prune[0], "prune_last": prune[1], **opts})
            measured = step_bytes(model, rec)
            if zipped:
                measured["uncompressed_bytes_per_step"] = measured["bytes_per_step"]
                measured["bytes_per_step"] = round(measured["bytes_per_step"] * zlib_ratio[name])
                measured["zlib_ratio"] = zlib_ratio[name]
            recorded = math.ceil(steps / group)
            rows[model_name][name] = {
                **measured, "group_steps": group, "recorded_steps": recorded,
                "run_bytes": measured["bytes_per_step"] * recorded + measured["mask_bytes"],
            }
        print(f"scale: {model_name} done", file=sys.stderr)
    return {"steps": steps, **IMAGENET, "rows": rows}


def compression(blobs: list[bytes]) -> dict[str, Any]:
    raw = sum(len(b) for b in blobs)
    out = {}
    for name, (enc, dec) in CODECS.items():
        t0 = time.perf_counter()
        packed = [enc(b) for b in blobs]
        t1 = time.perf_counter()
        for p in packed:
            dec(p)
        t2 = time.perf_counter()
        size = sum(len(p) for p in packed)
        out[name] = {"ratio": size / raw, "saved": 1 - size / raw,
                     "compress_mb_s": raw / 1e6 / max(t1 - t0, 1e-9), "decompress_mb_s": raw / 1e6 / max(t2 - t1, 1e-9)}
    return {"blob_bytes": raw, "blobs": len(blobs), "codecs": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="small-cnn")
    ap.add_argument("--limit", type=int, default=10_000, help="stratified training subset (0: all)")
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--forget-class", type=int, default=0)
    ap.add_argument("--share", type=float, default=0.2, help="share of batches holding the class")
    ap.add_argument("--prune-first", type=float, default=0.99)
    ap.add_argument("--prune-last", type=float, default=0.5)
    ap.add_argument("--compress-blobs", type=int, default=40, help="blobs per option for the codecs")
    ap.add_argument("--no-scale", action="store_true", help="skip the ImageNet-scale table")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "storage_options.json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    fast_math(device)
    started = time.perf_counter()
    prune = (args.prune_first, args.prune_last)
    result: dict[str, Any] = {
        "benchmark": "storage_options", **environment(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "baseline": BASELINE, "options": {}, "compression": {},
    }
    training = TrainingSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                            weight_decay=0.0, seed=0, concentrate_class=args.forget_class,
                            concentrate_share=args.share)
    with tempfile.TemporaryDirectory(prefix="lethe-storage-") as tmp:
        spec = dataset_spec(args.dataset, limit=args.limit or None, test_limit=args.test_limit or None,
                            workdir=Path(tmp))
        data = load_dataset(spec)
        positions = data.train.positions_of_class(args.forget_class)
        store = LocalBlobStore(Path(tmp) / "store")
        for i, (name, opts) in enumerate(OPTIONS.items()):
            run = train_run(store, run_id=f"opt{i}", dataset=data, dataset_spec=DatasetSpec(spec=spec),
                            model_name=args.model, training=training,
                            recording=RecordingSpec(**{"mode": "partial", "prune_first": prune[0],
                                                       "prune_last": prune[1], **opts}),
                            device=device)
            if i == 0:
                original = run.model_with(run.load_weights(run.spec.trained_weights))
                result["original"] = quick_metrics(original, data, positions, device=device)
            done = apply_method(store, run_id=f"opt{i}", method="partial-amnesiac",
                                forget=ForgetSpec(classes=(args.forget_class,)), device=device, publish=False)
            metrics = quick_metrics(done.outcome.model, data, positions, device=device)
            res = run.spec.results
            row = {
                "recording": {k: v for k, v in run.spec.recording.model_dump(mode="json").items()
                              if k in ("mask", "dtype", "skip_layers", "group_steps", "prune_first", "prune_last")},
                **{k: metrics[k] for k in ("forget_acc", "retain_acc", "test_acc")},
                "storage_bytes": res.storage_bytes, "recorded_steps": len(run.update_blobs),
                "optimizer_steps": res.steps, "bytes_per_recorded_step": res.storage_bytes / max(1, len(run.update_blobs)),
                "batches_subtracted": done.outcome.details.get("batches_subtracted"),
                "train_seconds": res.train_seconds, "unlearn_seconds": done.outcome.unlearn_seconds,
            }
            sample = run.update_blobs[: args.compress_blobs]
            result["compression"][name] = compression([store.get(b.key) for b in sample])
            result["options"][name] = row
            print(f"{name}: {row}", file=sys.stderr)
    base = result["options"][BASELINE]
    for row in result["options"].values():
        row["retain_vs_today_points"] = (row["retain_acc"] - base["retain_acc"]) * 100
        row["storage_vs_today"] = row["storage_bytes"] / base["storage_bytes"]
    if not args.no_scale:
        ratios = {}
        for name, opts in OPTIONS.items():
            if opts.get("compression") == "zlib":  # stored bytes over the same option without zlib
                plain = next(n for n, o in OPTIONS.items() if o == {k: v for k, v in opts.items() if k != "compression"})
                ratios[name] = result["options"][name]["storage_bytes"] / result["options"][plain]["storage_bytes"]
        result["imagenet_scale"] = scale_table(prune, ratios)
        verdict = {}
        rn = result["imagenet_scale"]["rows"]["resnet50"]
        for name, row in rn.items():
            measured = result["options"].get(name)
            verdict[name] = {
                "run_bytes": row["run_bytes"], "under_1tb": row["run_bytes"] < 1e12,
                "forget_acc": measured["forget_acc"] if measured else None,
                "retain_vs_today_points": measured["retain_vs_today_points"] if measured else None,
                "meets_target": bool(measured and row["run_bytes"] < 1e12 and measured["forget_acc"] == 0.0
                                     and measured["retain_vs_today_points"] >= -2.0),
            }
        result["resnet50_target"] = verdict
    result["wall_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = args.out.with_suffix(".png")
    plot(result, png)
    emit(result, args.out, [png])


def plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = result["options"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(names) + 1.5))
    y = range(len(names))
    ax.barh(list(y), [rows[n]["storage_bytes"] / 1e6 for n in names], color="#1f77b4")
    for i, n in enumerate(names):
        r = rows[n]
        ax.text(r["storage_bytes"] / 1e6, i, f" forget {r['forget_acc']:.2f} retain {r['retain_acc']:.3f}",
                va="center", fontsize=7)
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("MB stored (class-forgetting run)")
    ax.set_title("What each storage option stores and what partial amnesiac then forgets / keeps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
