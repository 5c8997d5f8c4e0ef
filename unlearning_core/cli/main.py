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
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from unlearning_core.errors import LetheError
from unlearning_core.vocab import METHOD_OF_RECORD, RECORD_OF_METHOD, RecordMode, TrainingMethod

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
    fixed = "fixed"
    random = "random"
    magnitude = "magnitude"


class StoreDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class Aggregation(str, Enum):
    vote = "vote"
    softmax = "softmax"


class BnRepair(str, Enum):
    auto = "auto"
    always = "always"
    never = "never"


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
    model: Annotated[str, typer.Option("--model", help="A registered model (mlp, small-cnn, alexnet, resnet18, resnet50, vit, or one an installed package declares in the lethe.models entry-point group) or a factory path package.module:callable.")],
    store: StoreOpt,
    run_id: RunIdOpt,
    epochs: Annotated[int, typer.Option(min=1)] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option(min=0.0)] = 0.01,
    momentum: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.9,
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0)] = 0.0,
    seed: int = 0,
    method: Annotated[TrainingMethod | None, typer.Option(help="What the run prepares for: plain (nothing recorded), amnesiac (full updates), partial-amnesiac (pruned updates) or sisa (shards and slice checkpoints). Default: from --record.")] = None,
    record: Annotated[Record | None, typer.Option(help="Which updates to store for amnesiac unlearning [default: partial].")] = None,
    shards: Annotated[int, typer.Option(min=1, max=256, help="SISA: number of shards.")] = 8,
    slices: Annotated[int, typer.Option(min=1, max=256, help="SISA: slices per shard (a checkpoint after each).")] = 4,
    aggregation: Annotated[Aggregation, typer.Option(help="SISA: how shard outputs are combined.")] = Aggregation.softmax,
    sisa_by_subject: Annotated[bool, typer.Option("--sisa-by-subject", help="SISA: keep all samples of a data subject in one shard and slice.")] = False,
    prune_first: Annotated[float, typer.Option("--prune-first", help="Pruning share of the first layer's updates.")] = 0.99,
    prune_last: Annotated[float, typer.Option("--prune-last", help="Pruning share of the last layer's updates.")] = 0.5,
    mask: Annotated[Mask, typer.Option(help="How partial recording prunes: fixed (one mask per layer for the whole run, stored once; steps store only the kept values: fastest to record and unlearn), random (a new mask per step) or magnitude (each step's largest entries).")] = Mask.fixed,  # = recording.masks.DEFAULT_MASK
    mask_seed: Annotated[int | None, typer.Option("--mask-seed", help="Seed of fixed and random masks (default: --seed).")] = None,
    dtype: Annotated[StoreDtype, typer.Option(help="Precision of stored updates.")] = StoreDtype.float32,
    skip_layers: Annotated[int, typer.Option("--skip-layers", min=0, help="Partial recording: do not record the first N layers at all (their share is 1.0); --prune-first then applies to the first recorded layer.")] = 0,
    group_steps: Annotated[int, typer.Option("--group-steps", min=1, help="Record one blob per K optimizer steps of an epoch (their summed update): K times fewer blobs; an erasure subtracts every group that held its samples.")] = 1,
    compress: Annotated[bool, typer.Option("--compress", help="zlib-compress each stored update (lossless; about a quarter to a third fewer bytes, slower to write and to read back).")] = False,
    max_storage: Annotated[str | None, typer.Option("--max-storage", help="Budget for the recorded updates (e.g. 500MB, 2GB): float16, then coarser --group-steps, until the estimate fits; refused with the estimate if nothing does.")] = None,
    concentrate: Annotated[str | None, typer.Option(help="K:Q puts every training sample of class K into a share Q of the batches; subjects=ID,ID,...:Q does the same with those data subjects' samples.")] = None,
    subject_size: Annotated[int | None, typer.Option("--subject-size", min=1, help="Group consecutive training samples into data subjects of N.")] = None,
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.01, max=0.9, help="Test share for datasets without a test split.")] = 0.2,
    subject_map: Annotated[Path | None, typer.Option("--subject-map", help="A CSV (sample_id,subject_id) or Parquet file naming each training sample's subject (instead of --subject-size).")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Train a model and store it with everything unlearning needs later."""
    if subject_map is not None and subject_size is not None:
        raise typer.BadParameter("give --subject-size or --subject-map, not both", param_hint="--subject-map")
    from unlearning_core import pipeline
    from unlearning_core.recording import PruneSchedule
    from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, SisaSpec, TrainingSpec
    from unlearning_core.store import open_store
    from unlearning_core.training.batching import parse_concentrate
    from unlearning_core.training.loop import resolve_device

    _run_id_ok(run_id)
    if method is not None and record is not None and RECORD_OF_METHOD[method] != record.value:
        raise typer.BadParameter(
            f"--method {method.value} records {RECORD_OF_METHOD[method]}, not {record.value}",
            param_hint="--record",
        )
    mode: RecordMode = (
        cast(RecordMode, record.value) if record is not None
        else RECORD_OF_METHOD[method] if method else "partial"
    )
    train_method = method if method is not None else METHOD_OF_RECORD[mode]
    klass, subjects, share = parse_concentrate(concentrate) if concentrate else (None, None, None)
    from unlearning_core.recording.budget import parse_bytes

    if skip_layers and mode != "partial":
        raise typer.BadParameter("--skip-layers prunes layers away: it needs --record partial", param_hint="--skip-layers")
    recording = RecordingSpec(
        mode=mode, mask=mask.value, mask_seed=seed if mask_seed is None else mask_seed,
        prune_first=prune_first, prune_last=prune_last, dtype=dtype.value, skip_layers=skip_layers,
        group_steps=group_steps, compression="zlib" if compress else "none",
        budget={"max_bytes": parse_bytes(max_storage)} if max_storage is not None else None,
    )
    # Validated whatever the mode: a full run keeps it as the default for partial requests.
    PruneSchedule(prune_first, prune_last)
    result = pipeline.train(
        open_store(store),
        run_id=run_id,
        dataset=DatasetSpec(
            spec=dataset, split_seed=seed, test_fraction=test_fraction, subject_size=subject_size,
            subject_map=str(subject_map.expanduser().resolve()) if subject_map is not None else None,
        ),
        model=model,
        training=TrainingSpec(
            epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
            seed=seed, concentrate_class=klass, concentrate_subjects=subjects, concentrate_share=share,
        ),
        recording=recording,
        sisa=SisaSpec(shards=shards, slices=slices, aggregation=aggregation.value, by_subject=sisa_by_subject)
        if train_method == TrainingMethod.SISA
        else None,
        device=resolve_device(device),
        progress=True,
    )
    _emit(result, as_json, f"trained {run_id}")


@app.command()
def unlearn(
    store: StoreOpt,
    run_id: RunIdOpt,
    method: Annotated[str | None, typer.Option(help="An unlearning method: retrain, sisa, amnesiac, partial-amnesiac, label-flip, neg-grad, neggrad-plus, scrub, salun, l1-sparse, their partial- variants, ... (`lethe methods` lists them with their options).")] = None,
    compare: Annotated[str | None, typer.Option(help="Comma-separated methods to run side by side from the same trained runs (nothing is published).")] = None,
    sisa_run_id: Annotated[str | None, typer.Option("--sisa-run-id", help="With --compare: the SISA run for the sisa row.")] = None,
    forget_ids: Annotated[Path | None, typer.Option("--forget-ids", help="File with one sample id per line.")] = None,
    forget_class: Annotated[int | None, typer.Option("--forget-class", help="Forget every training sample of this class.")] = None,
    forget_subject: Annotated[str | None, typer.Option("--forget-subject", help="Forget every training sample of this data subject.")] = None,
    prune_first: Annotated[float | None, typer.Option("--prune-first", help="Partial methods: pruning share of the first layer.")] = None,
    prune_last: Annotated[float | None, typer.Option("--prune-last", help="Partial methods: pruning share of the last layer.")] = None,
    prune: Annotated[str | None, typer.Option("--prune", help="partial-amnesiac: 'auto' searches the largest last-layer pruning that still forgets (never below the run's recorded pruning); every probe is in the result.")] = None,
    auto_criterion: Annotated[str | None, typer.Option("--auto-criterion", help="--prune auto: forget_acc or mia_auc [default: forget_acc for whole classes, else mia_auc].")] = None,
    auto_max_forget_acc: Annotated[float, typer.Option("--auto-max-forget-acc", min=0.0, max=1.0, help="--prune auto, forget_acc: the most forget accuracy that counts as forgotten.")] = 0.0,
    auto_mia_target: Annotated[float, typer.Option("--auto-mia-target", min=0.0, max=1.0, help="--prune auto, mia_auc: the AUC to stay within 0.02 of (0.5, or the retrained model's).")] = 0.5,
    auto_probes: Annotated[int, typer.Option("--auto-probes", min=2, max=32, help="--prune auto: most candidates evaluated.")] = 8,
    recovery_steps: Annotated[int | None, typer.Option("--recovery-steps", min=0, help="Fine-tune steps on retained data afterwards [default: 0].")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="The fine-tuning methods (label-flip, neg-grad, neggrad-plus, scrub, salun, l1-sparse): iterations [default: each method's].")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="label-flip / neg-grad: learning rate [default: the run's].")] = None,
    target_forget_acc: Annotated[float | None, typer.Option("--target-forget-acc", min=0.0, max=1.0, help="neg-grad: stop once forget accuracy is at most this.")] = None,
    mix_retain: Annotated[float | None, typer.Option("--mix-retain", min=0.0, max=0.99, help="label-flip: share of each batch drawn from retained data [default: 0].")] = None,
    aggregation: Annotated[Aggregation | None, typer.Option(help="sisa: vote or softmax [default: the run's].")] = None,
    bn_repair: Annotated[BnRepair | None, typer.Option("--bn-repair", help="amnesiac methods: re-estimate BatchNorm statistics on retained data when subtraction left an invalid one (auto), always, or never [default: auto].")] = None,
    option: Annotated[list[str] | None, typer.Option("--option", metavar="NAME=VALUE", help="A method option (repeatable), checked against the method's options (`lethe methods` lists them); VALUE is read as JSON when it parses (2, 0.5, true, null, {...}), else as a string. The flags above set the same options.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Compute the efficacy metrics.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and evaluate, but publish no version and leave the ledger as it is.")] = False,
    dataset: Annotated[str | None, typer.Option("--dataset", help="A run recorded from your own loop (record_training) names no dataset: attach one holding its sample ids (a built-in, a dataset plug-in or a path), kept beside the run, for metrics and --forget-subject.")] = None,
    subject_map: Annotated[Path | None, typer.Option("--subject-map", help="With --dataset: a CSV (sample_id,subject_id) or Parquet file naming each sample's subject.")] = None,
    subject_size: Annotated[int | None, typer.Option("--subject-size", min=1, help="With --dataset: subjects of N consecutive training samples.")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Remove the forget set's influence from a run's latest version and publish a new one."""
    from unlearning_core import pipeline
    from unlearning_core.forget import ForgetSpec, read_id_file
    from unlearning_core.methods import OptionError, validate_options
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
    prune_search = None
    if prune is not None:
        from unlearning_core.methods.prune_search import CRITERIA

        if prune.strip().lower() != "auto":
            raise typer.BadParameter(f"only 'auto' is accepted (fixed shares: --prune-first/--prune-last), got {prune!r}", param_hint="--prune")
        if auto_criterion is not None and auto_criterion not in CRITERIA:
            raise typer.BadParameter(f"one of {', '.join(CRITERIA)}, got {auto_criterion!r}", param_hint="--auto-criterion")
        prune_search = {  # partial-amnesiac's prune_search option (a PruneSearch once validated)
            "criterion": auto_criterion, "max_forget_acc": auto_max_forget_acc,
            "mia_target": auto_mia_target, "max_probes": auto_probes,
        }
    flags = {  # the dedicated flags given, as the options they set
        "prune_first": prune_first, "prune_last": prune_last, "prune_search": prune_search,
        "recovery_steps": recovery_steps, "steps": steps, "lr": lr,
        "target_forget_acc": target_forget_acc, "mix_retain": mix_retain,
        "aggregation": aggregation.value if aggregation else None,
        "bn_repair": bn_repair.value if bn_repair else None,
    }
    options = _merge_options({k: v for k, v in flags.items() if v is not None}, option or [])
    names = [m.strip() for m in (compare.split(",") if compare is not None else [method or ""]) if m.strip()]
    if not names:
        raise typer.BadParameter("name at least one method", param_hint="--compare")
    try:  # before anything is read: a bad option is the user's, named with its flag
        if compare is None:
            validate_options(names[0], options)
        else:
            pipeline.options_per_method(names, options)
    except OptionError as exc:
        raise typer.BadParameter(str(exc), param_hint=_option_hint(exc.options, flags)) from None
    blob_store = open_store(store)
    if dataset is not None:
        _attach(blob_store, run_id, dataset, subject_map=subject_map, subject_size=subject_size)
    elif subject_map is not None or subject_size is not None:
        raise typer.BadParameter("--subject-map and --subject-size go with --dataset", param_hint="--dataset")
    _check_run_data(blob_store, run_id, evaluate=evaluate, compare=compare is not None)
    if compare is not None:
        result = pipeline.compare(
            blob_store, run_id=run_id, sisa_run_id=sisa_run_id and _run_id_ok(sisa_run_id),
            methods=names, forget=spec, method_options=options, device=resolve_device(device), progress=True,
        )
        if as_json:
            _emit(result, True, "")
        else:
            _compare_table(result)
        return
    result = pipeline.unlearn(
        blob_store, run_id=run_id, method=names[0], forget=spec, method_options=options,
        device=resolve_device(device), progress=True, evaluate=evaluate, publish=not dry_run,
    )
    _emit(result, as_json, f"{method} on {run_id}")


def _check_run_data(blob_store: Any, run_id: str, *, evaluate: bool, compare: bool) -> None:
    """Refuse, before anything is computed or published, what a run without a dataset
    cannot do. A run recorded from the user's own training loop (``record_training``)
    knows its samples by id only: subtracting its recorded updates needs nothing more, but
    evaluating the result does. Opening the run here also refuses an incomplete one (a
    loop that crashed) with the error it stopped on."""
    from unlearning_core.errors import RunError
    from unlearning_core.runs.artifact import RecordedRun

    run = RecordedRun.open(blob_store, run_id)
    if run.dataset_spec() is not None:  # its own, or one attached (--dataset)
        return
    why = f"run {run_id!r} names no dataset (it was recorded from its own training loop), so there is nothing to evaluate on"
    if compare:
        raise RunError(f"{why}: --compare evaluates every method; use --method amnesiac or partial-amnesiac with --no-evaluate")
    if evaluate:
        raise RunError(f"{why}: attach its data with --dataset (and --subject-map), or pass --no-evaluate")


def _attach(
    blob_store: Any, run_id: str, dataset: str, *, subject_map: Path | None, subject_size: int | None
) -> None:
    """Attach ``dataset`` to a run that names none (checked to hold every sample id of the
    run, with the same labels where the run knows them), kept beside the run."""
    from unlearning_core.errors import RunError
    from unlearning_core.runs.artifact import RecordedRun
    from unlearning_core.runs.attach import attach_dataset, attached_dataset
    from unlearning_core.runs.spec import DatasetSpec

    run = RecordedRun.open(blob_store, run_id)
    if run.spec.dataset is not None:
        raise RunError(f"run {run_id!r} names its dataset already ({run.spec.dataset.spec!r}); --dataset is for runs recorded from their own loop")
    spec = DatasetSpec(
        spec=dataset, subject_size=subject_size,
        subject_map=str(subject_map.expanduser().resolve()) if subject_map is not None else None,
    )
    table = run.sample_table  # checked before anything is written
    attached_dataset(spec, run_id, list(table["sample_ids"]), table.get("labels"))
    attach_dataset(blob_store, run_id, spec)


@app.command()
def compact(
    store: StoreOpt,
    run_id: RunIdOpt,
    new_run_id: Annotated[str | None, typer.Option("--new-run-id", help="Name of the new run [default: RUN_ID-cN, N its first version].")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Retrain a run from scratch without every sample its ledger erased: a new lineage
    whose first version is exact and continues the version numbers."""
    from unlearning_core.compaction import compact as run_compaction
    from unlearning_core.store import open_store
    from unlearning_core.training.loop import resolve_device

    _run_id_ok(run_id)
    if new_run_id is not None:
        _run_id_ok(new_run_id)
    result = run_compaction(
        open_store(store), run_id=run_id, new_run_id=new_run_id,
        device=resolve_device(device), progress=True,
    )
    _emit(result, as_json, f"compacted {run_id} into {result['run_id']}")


def _parse_option(text: str) -> tuple[str, Any]:
    """``NAME=VALUE``: the value as JSON when it parses (numbers, booleans, objects), else
    the text itself (so ``bn_repair=never`` needs no quotes)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise typer.BadParameter(f"expected NAME=VALUE, got {text!r}", param_hint="--option")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def _merge_options(flags: dict[str, Any], given: list[str]) -> dict[str, Any]:
    """The dedicated flags' options plus the ``--option``s; naming one option twice is an
    error rather than a silent override."""
    out = dict(flags)
    seen: set[str] = set()
    for text in given:
        name, value = _parse_option(text)
        if name in seen:
            raise typer.BadParameter(f"option {name!r} is given twice", param_hint="--option")
        if name in flags:
            raise typer.BadParameter(
                f"option {name!r} is already set by {_FLAG_OF.get(name, '--' + name)}",
                param_hint="--option",
            )
        seen.add(name)
        out[name] = value
    return out


#: The dedicated ``lethe unlearn`` flag of an option (for error hints).
_FLAG_OF = {
    "prune_first": "--prune-first", "prune_last": "--prune-last", "prune_search": "--prune",
    "recovery_steps": "--recovery-steps", "steps": "--steps", "lr": "--lr",
    "target_forget_acc": "--target-forget-acc", "mix_retain": "--mix-retain",
    "aggregation": "--aggregation", "bn_repair": "--bn-repair",
}


def _option_hint(names: tuple[str, ...], flags: dict[str, Any]) -> str:
    """The flags that set the refused options (``--option`` for the rest)."""
    hints = [_FLAG_OF[n] if flags.get(n) is not None and n in _FLAG_OF else "--option" for n in names]
    return " / ".join(dict.fromkeys(hints)) or "--option"


@app.command("methods")
def list_methods(as_json: JsonOpt = False) -> None:
    """List the unlearning methods: guarantee, the training each needs, and its options."""
    from unlearning_core.methods import method_catalog

    catalog = method_catalog()
    if as_json:
        _emit({"methods": catalog}, True, "")
        return
    overview = Table(title="unlearning methods (lethe unlearn --method NAME)")
    for column in ("method", "guarantee", "trained with (lethe train --method)", "what it does"):
        overview.add_column(column)
    for m in catalog:
        overview.add_row(m["name"], m["guarantee"], ", ".join(m["trained_with"]), m["summary"])
    _out.print(overview)
    for m in catalog:
        table = Table(title=f"{m['name']} options (--option NAME=VALUE)")
        for column in ("option", "type", "default", "bounds", "description"):
            table.add_column(column)
        for o in m["options"]:
            bounds = ", ".join(f"{k} {v}" for k, v in o["bounds"].items())
            table.add_row(o["name"], o["type"], json.dumps(o["default"]), bounds, o["description"])
        _out.print(table)


@app.command()
def report(
    store: StoreOpt,
    run_id: RunIdOpt,
    out: Annotated[Path, typer.Option("--out", help="Where to write the HTML report.")],
    version: Annotated[int | None, typer.Option("--version", min=1, help="Version to report [default: the latest].")] = None,
    compare_run: Annotated[str | None, typer.Option("--compare-run", help="Another run (same training, another method) whose version of the same erasure is shown beside this one.")] = None,
    compare_version: Annotated[int | None, typer.Option("--compare-version", min=1, help="Version of --compare-run [default: the same number].")] = None,
    pdf: Annotated[Path | None, typer.Option("--pdf", help="Also write the report as PDF here.")] = None,
    figures: Annotated[Path | None, typer.Option("--figures", help="Also save each figure as report-<name>.png in this folder.")] = None,
    layer: Annotated[str | None, typer.Option("--layer", help="Grad-CAM layer (module name) [default: the last conv layer].")] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Write a version's erasure report: metrics, Grad-CAM grid, accuracy timeline, sha256s."""
    from unlearning_core.report.build import Comparison, erasure_report
    from unlearning_core.artifacts import open_artifact
    from unlearning_core.store import open_store
    from unlearning_core.training.loop import resolve_device

    _run_id_ok(run_id)
    blob_store = open_store(store)
    run = open_artifact(blob_store, run_id)
    ledger = run.ledger()
    number = ledger.head.version if version is None else version
    comparison = None
    if compare_run is not None:
        other = open_artifact(blob_store, _run_id_ok(compare_run))
        comparison = Comparison(run=other, ledger=other.ledger(), version=compare_version or number)
    result = erasure_report(
        run, ledger, number, device=resolve_device(device), compare=comparison, layer=layer
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(result.html, encoding="utf-8")
    written = {"html": str(out)}
    if pdf is not None:
        pdf.write_bytes(result.pdf())
        written["pdf"] = str(pdf)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        for name, png in result.figures.items():
            path = figures / f"report-{name.replace('_', '-')}.png"
            path.write_bytes(png)
            written[f"figure_{name}"] = str(path)
    summary = {"run_id": run_id, "version": number, "written": written, **result.summary}
    _emit(summary if as_json else {"run_id": run_id, "version": number, **written}, as_json, f"report of {run_id} v{number}")


receipt_app = typer.Typer(help="Signed erasure receipts (GET /requests/{id}/receipt).", no_args_is_help=True)
app.add_typer(receipt_app, name="receipt")


def _read_key(key: str) -> Any:
    """KEY is a file (PEM, GET /receipt-key's JSON, base64, or the raw 32 bytes) or, when no
    such file exists, the base64 text itself."""
    from unlearning_core.receipts import ReceiptError, load_public_key

    path = Path(key)
    try:
        data: bytes | str = path.read_bytes() if path.is_file() else key
    except OSError as exc:
        raise ReceiptError(f"cannot read the key file {key}: {exc.strerror or exc}") from None
    return load_public_key(data)


@receipt_app.command("verify")
def receipt_verify(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The receipt as served by GET /requests/{id}/receipt.", show_default=False)],
    key: Annotated[str | None, typer.Option("--key", metavar="KEY", help="The service's public key: a file (PEM, the JSON of GET /receipt-key, base64) or the base64 text. Required: a receipt never vouches for itself.")] = None,
    allow_reformatted: Annotated[bool, typer.Option("--allow-reformatted", help="Accept a re-indented copy whose content is still as signed (default: the file must be byte for byte as issued).")] = False,
) -> None:
    """Verify a receipt's Ed25519 signature offline. Prints `valid` and the stage (exit 0);
    any changed byte, another key or an unreadable file is `error: ...` (exit 2)."""
    from unlearning_core.receipts import ReceiptError, verify

    if key is None:
        raise ReceiptError(
            "give --key: the service's public key (GET /receipt-key); a receipt names its key "
            "but never carries it, since a receipt cannot vouch for itself"
        )
    public = _read_key(key)
    try:
        document = file.read_bytes()
    except OSError as exc:
        raise ReceiptError(f"cannot read {file}: {exc.strerror or exc}") from None
    receipt = verify(document, public, allow_reformatted=allow_reformatted)
    _out.print(
        f"valid: request {receipt.get('request_id')}, stage {receipt.get('stage')}, "
        f"status {receipt.get('status')}, issued at {receipt.get('issued_at')}",
        markup=False, highlight=False, soft_wrap=True,
    )


def _compare_table(result: dict[str, Any]) -> None:
    """One row per method; the columns are the registry's ``compare`` metrics that some row
    has, headed by their JSON names (what ``--json`` prints) and formatted as registered."""
    from unlearning_core.metrics import registered_metrics

    rows = result["rows"]
    specs = [s for s in registered_metrics(surface="compare") if any(r.get(s.name) is not None for r in rows)]
    table = Table(title=f"forget {result['forget']}")
    table.add_column("method")
    table.add_column("guarantee")
    for spec in specs:
        table.add_column(spec.name, justify="right")
    for row in rows:
        table.add_row(str(row["method"]), str(row["guarantee"]), *(spec.format(row.get(spec.name)) for spec in specs))
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
