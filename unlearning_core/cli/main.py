"""The ``lethe`` command line.

Results go to stdout (with ``--json``: one JSON object on the last line); progress bars
and errors go to stderr. Any :class:`LetheError` becomes a one-line ``error: ...`` and
exit status 2, so scripts can tell bad input from a crash.
"""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from unlearning_core.errors import LetheError

app = typer.Typer(
    name="lethe",
    help="Lethe: machine unlearning for GDPR Art. 17 erasure requests.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_out = Console()
# Imports of torch and friends stay inside the commands so that `lethe --help` is instant.


class Record(str, Enum):
    none = "none"
    full = "full"
    partial = "partial"


class Mask(str, Enum):
    random = "random"
    magnitude = "magnitude"


class StoreDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class TrainMethod(str, Enum):
    plain = "plain"
    amnesiac = "amnesiac"
    partial_amnesiac = "partial-amnesiac"
    sisa = "sisa"


class Aggregation(str, Enum):
    vote = "vote"
    softmax = "softmax"


RECORD_OF_METHOD = {"plain": "none", "amnesiac": "full", "partial-amnesiac": "partial", "sisa": "none"}
METHOD_OF_RECORD = {"none": "plain", "full": "amnesiac", "partial": "partial-amnesiac"}


StoreOpt = Annotated[
    str,
    typer.Option("--store", help="Blob store: a local directory or s3://BUCKET/PREFIX (LETHE_S3_* settings)."),
]
RunIdOpt = Annotated[str, typer.Option("--run-id", help="Name of the run inside the store.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, or auto (CUDA when present).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the results as one JSON object on the last line.")]


def _emit(result: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        return
    table = Table(title=title, show_header=False)
    for key, value in result.items():
        if isinstance(value, dict):
            value = json.dumps(value, default=str)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        table.add_row(key, str(value))
    _out.print(table)


def _run_id_ok(run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id):
        raise typer.BadParameter("use letters, digits, '.', '_' or '-' (at most 128)", param_hint="--run-id")
    return run_id


@app.command()
def train(
    dataset: Annotated[str, typer.Option("--dataset", help="digits, fashion-mnist, or a path (idx folder, ImageFolder, .npz manifest).")],
    model: Annotated[str, typer.Option("--model", help="mlp, small-cnn, alexnet, resnet18, resnet50, vit.")],
    store: StoreOpt,
    run_id: RunIdOpt,
    epochs: Annotated[int, typer.Option(min=1)] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.01,
    momentum: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.9,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 0.0,
    seed: int = 0,
    method: Annotated[TrainMethod | None, typer.Option(help="What the run prepares for: plain (nothing recorded), amnesiac (full updates), partial-amnesiac (pruned updates) or sisa (shards and slice checkpoints). Default: from --record.")] = None,
    record: Annotated[Record | None, typer.Option(help="Which updates to store for amnesiac unlearning [default: partial].")] = None,
    shards: Annotated[int, typer.Option(min=1, max=256, help="SISA: number of shards.")] = 8,
    slices: Annotated[int, typer.Option(min=1, max=256, help="SISA: slices per shard (a checkpoint after each).")] = 4,
    aggregation: Annotated[Aggregation, typer.Option(help="SISA: how shard outputs are combined.")] = Aggregation.softmax,
    sisa_by_subject: Annotated[bool, typer.Option("--sisa-by-subject", help="SISA: keep all samples of a data subject in one shard and slice.")] = False,
    prune_first: Annotated[float, typer.Option("--prune-first", help="Pruning share of the first layer's updates.")] = 0.99,
    prune_last: Annotated[float, typer.Option("--prune-last", help="Pruning share of the last layer's updates.")] = 0.5,
    mask: Mask = Mask.random,
    mask_seed: Annotated[int | None, typer.Option("--mask-seed", help="Seed of random masks (default: --seed).")] = None,
    dtype: Annotated[StoreDtype, typer.Option(help="Precision of stored updates.")] = StoreDtype.float32,
    concentrate: Annotated[str | None, typer.Option(help="K:Q puts every training sample of class K into a share Q of the batches.")] = None,
    subject_size: Annotated[int | None, typer.Option("--subject-size", min=1, help="Group consecutive training samples into data subjects of N.")] = None,
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.01, max=0.9, help="Test share for datasets without a test split.")] = 0.2,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Train a model and store it with everything unlearning needs later."""
    from unlearning_core import pipeline
    from unlearning_core.recording import PruneSchedule
    from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, SisaSpec, TrainingSpec
    from unlearning_core.store import open_store
    from unlearning_core.training.batching import parse_concentrate
    from unlearning_core.training.loop import resolve_device

    _run_id_ok(run_id)
    if method is not None and record is not None and RECORD_OF_METHOD[method.value] != record.value:
        raise typer.BadParameter(
            f"--method {method.value} records {RECORD_OF_METHOD[method.value]}, not {record.value}",
            param_hint="--record",
        )
    mode = record.value if record is not None else RECORD_OF_METHOD[method.value] if method else "partial"
    train_method = method.value if method is not None else METHOD_OF_RECORD[mode]
    klass, share = parse_concentrate(concentrate) if concentrate else (None, None)
    recording = RecordingSpec(
        mode=mode, mask=mask.value, mask_seed=seed if mask_seed is None else mask_seed,
        prune_first=prune_first, prune_last=prune_last, dtype=dtype.value,
    )
    # Validated whatever the mode: a full run keeps it as the default for partial requests.
    PruneSchedule(prune_first, prune_last)
    result = pipeline.train(
        open_store(store),
        run_id=run_id,
        dataset=DatasetSpec(spec=dataset, split_seed=seed, test_fraction=test_fraction, subject_size=subject_size),
        model=model,
        training=TrainingSpec(
            epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
            seed=seed, concentrate_class=klass, concentrate_share=share,
        ),
        recording=recording,
        sisa=SisaSpec(shards=shards, slices=slices, aggregation=aggregation.value, by_subject=sisa_by_subject)
        if train_method == "sisa"
        else None,
        device=resolve_device(device),
        progress=True,
    )
    _emit(result, as_json, f"trained {run_id}")


@app.command()
def unlearn(
    store: StoreOpt,
    run_id: RunIdOpt,
    method: Annotated[str | None, typer.Option(help="retrain, sisa, amnesiac, partial-amnesiac, label-flip, neg-grad, partial-label-flip, partial-neg-grad.")] = None,
    compare: Annotated[str | None, typer.Option(help="Comma-separated methods to run side by side from the same trained runs (nothing is published).")] = None,
    sisa_run_id: Annotated[str | None, typer.Option("--sisa-run-id", help="With --compare: the SISA run for the sisa row.")] = None,
    forget_ids: Annotated[Path | None, typer.Option("--forget-ids", help="File with one sample id per line.")] = None,
    forget_class: Annotated[int | None, typer.Option("--forget-class", help="Forget every training sample of this class.")] = None,
    forget_subject: Annotated[str | None, typer.Option("--forget-subject", help="Forget every training sample of this data subject.")] = None,
    prune_first: Annotated[float | None, typer.Option("--prune-first", help="Partial methods: pruning share of the first layer.")] = None,
    prune_last: Annotated[float | None, typer.Option("--prune-last", help="Partial methods: pruning share of the last layer.")] = None,
    recovery_steps: Annotated[int, typer.Option("--recovery-steps", min=0, help="Fine-tune steps on retained data afterwards.")] = 0,
    steps: Annotated[int | None, typer.Option(min=1, help="label-flip / neg-grad: iterations [default: 20].")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="label-flip / neg-grad: learning rate [default: the run's].")] = None,
    target_forget_acc: Annotated[float | None, typer.Option("--target-forget-acc", min=0.0, max=1.0, help="neg-grad: stop once forget accuracy is at most this.")] = None,
    mix_retain: Annotated[float, typer.Option("--mix-retain", min=0.0, max=0.99, help="label-flip: share of each batch drawn from retained data.")] = 0.0,
    aggregation: Annotated[Aggregation | None, typer.Option(help="sisa: vote or softmax [default: the run's].")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Compute the efficacy metrics.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and evaluate, but publish no version and leave the ledger as it is.")] = False,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Remove the forget set's influence from a run's latest version and publish a new one."""
    from unlearning_core import pipeline
    from unlearning_core.forget import ForgetSpec, read_id_file
    from unlearning_core.methods import UnlearnOptions
    from unlearning_core.store import open_store
    from unlearning_core.training.loop import resolve_device

    _run_id_ok(run_id)
    if (method is None) == (compare is None):
        raise typer.BadParameter("give exactly one of --method NAME or --compare A,B,...", param_hint="--method")
    spec = ForgetSpec(
        sample_ids=read_id_file(forget_ids) if forget_ids else (),
        classes=(forget_class,) if forget_class is not None else (),
        subjects=(forget_subject,) if forget_subject else (),
    )
    options = UnlearnOptions(
        prune_first=prune_first, prune_last=prune_last, recovery_steps=recovery_steps, steps=steps,
        lr=lr, target_forget_acc=target_forget_acc, mix_retain=mix_retain,
        aggregation=aggregation.value if aggregation else None,
    )
    blob_store = open_store(store)
    if compare is not None:
        names = [m.strip() for m in compare.split(",") if m.strip()]
        if not names:
            raise typer.BadParameter("name at least one method", param_hint="--compare")
        result = pipeline.compare(
            blob_store, run_id=run_id, sisa_run_id=sisa_run_id and _run_id_ok(sisa_run_id),
            methods=names, forget=spec, options=options, device=resolve_device(device), progress=True,
        )
        if as_json:
            _emit(result, True, "")
        else:
            _compare_table(result)
        return
    result = pipeline.unlearn(
        blob_store, run_id=run_id, method=method, forget=spec, options=options,
        device=resolve_device(device), progress=True, evaluate=evaluate, publish=not dry_run,
    )
    _emit(result, as_json, f"{method} on {run_id}")


def _compare_table(result: dict[str, Any]) -> None:
    cols = ("method", "guarantee", "forget_acc", "retain_acc", "test_acc", "mia_auc", "mia_efficacy",
            "unlearn_seconds", "recovery_seconds", "relearn_steps", "speedup_vs_retrain")
    table = Table(title=f"forget {result['forget']}")
    for c in cols:
        table.add_column(c)
    for row in result["rows"]:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in (row.get(c) for c in cols)))
    _out.print(table)


def main() -> None:
    try:
        app()
    except LetheError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
