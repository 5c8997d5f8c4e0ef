"""Amnesiac and layer-wise partial amnesiac unlearning: subtract recorded updates.

For the forget set, find every step whose batch held one of its samples, sum those steps'
stored (pruned) updates and subtract the sum from the lineage's latest version. Cost is
the bytes of the affected updates: only their blobs are read, ahead of the summation on a
thread pool and within a memory bound (:mod:`unlearning_core.recording.prefetch`), and
summed in float32 on the request's device (:class:`unlearning_core.recording.UpdateSum`:
with fixed masks a sum of packed vectors and one scatter). Steps already in the lineage's
ledger are skipped, so no batch is subtracted twice.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import ClassVar, Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from unlearning_core.errors import MethodError, RunError
from unlearning_core.methods.base import (
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    recover,
    register_method,
)
from unlearning_core.methods.batchnorm import batchnorm_layers, repair_batchnorm
from unlearning_core.methods.layerwise import DEFAULT_PRUNE
from unlearning_core.methods.options import MethodOptions, PruneOptions
from unlearning_core.methods.prune_search import (
    PruneSearch,
    measurer,
    resolve_criterion,
    search_prune,
)
from unlearning_core.recording import (
    READ_AHEAD_BYTES,
    PruneSchedule,
    UpdateFormat,
    UpdateSum,
    serial,
)
from unlearning_core.recording.masks import MaskKind
from unlearning_core.recording.prefetch import Prefetch
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.vocab import Guarantee, TrainingMethod


class AmnesiacOptions(MethodOptions):
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="samples per step of the recovery fine-tune and of BatchNorm repair "
        "[default: the run's]",
    )
    bn_repair: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="re-estimate BatchNorm statistics on retained data: when subtraction left "
        "an invalid one (auto), always, or never",
    )


class PartialAmnesiacOptions(AmnesiacOptions, PruneOptions):
    mask: MaskKind | None = Field(
        default=None,
        description="a run that recorded full updates: the mask that prunes them now (fixed, "
        "random or magnitude) [default: the run's]; a partial run keeps the mask it recorded",
    )
    prune_search: PruneSearch | None = Field(
        default=None,
        description="--prune auto: search the largest last-layer pruning that still forgets "
        "(an object of PruneSearch's fields; {} for its defaults); every probe is reported",
    )


def prune_shares(
    run: RecordedRun, *, partial: bool, prune_first: float | None, prune_last: float | None
) -> dict[str, float] | None:
    """Per-tensor pruning to apply at unlearning time (``None``: use updates as stored)."""
    rec = run.spec.recording
    if rec.mode == "none":
        raise RunError(
            f"run {run.run_id!r} was trained without recording updates; "
            "amnesiac methods need `lethe train --record full` or `--record partial`"
        )
    if not partial:
        if rec.mode == "partial" or prune_first is not None or prune_last is not None:
            raise RunError(
                f"run {run.run_id!r} recorded {rec.mode} updates; full amnesiac needs --record full "
                "and takes no --prune-first/--prune-last (use partial-amnesiac)"
            )
        return None
    schedule = PruneSchedule(
        rec.prune_first if prune_first is None else prune_first,
        rec.prune_last if prune_last is None else prune_last,
        skip=rec.skip_layers,  # layers the run never recorded stay unrecorded
    )
    names = list(run.spec.tensors)
    if rec.mode == "partial" and not schedule.covers(rec.schedule, names):
        raise RunError(
            f"pruning {schedule.first}->{schedule.last} is lighter than the run's recorded "
            f"{rec.prune_first}->{rec.prune_last} on some layer; the pruned entries were never stored"
        )
    return schedule.tensor_shares(names)


def update_format(run: RecordedRun, mask: str | None = None) -> UpdateFormat:
    """The run's update format; ``mask`` prunes a full recording with another mask kind."""
    fmt = run.update_format()
    if mask is None or mask == fmt.mask:
        return fmt
    if fmt.mode != "full":
        raise RunError(
            f"run {run.run_id!r} recorded {fmt.mode} updates with {fmt.mask} masks; only a run that "
            f"recorded full updates can be pruned with another mask ({mask})"
        )
    return replace(fmt, mask=mask)  # type: ignore[arg-type]


def subtract_steps(
    run: RecordedRun,
    state: dict[str, torch.Tensor],
    steps: list[int],
    *,
    prune: dict[str, float] | None,
    device: torch.device,
    progress: bool = False,
    desc: str = "subtract",
    mask: str | None = None,
    max_bytes: int = READ_AHEAD_BYTES,
    workers: int | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """``state`` minus the sum of the given steps' stored updates; also the bytes read.

    The blobs are read (ahead on ``workers`` threads, default by the store: see
    :func:`unlearning_core.recording.prefetch.auto_workers`; at most ``max_bytes`` held at
    once) while earlier ones are summed in float32 on ``device``; ``mask`` prunes a full
    recording with another mask kind.
    """
    fmt = update_format(run, mask)
    blobs = run.update_blobs
    total = UpdateSum(fmt, prune=prune, device=device)
    bytes_read = 0
    pointers = [blobs[s] for s in steps]
    epochs, batches = run.index.epochs, run.index.batches
    with tqdm(total=len(steps), desc=desc, disable=not progress, leave=False) as bar:
        for i, data in Prefetch(run.store, pointers, max_bytes=max_bytes, workers=workers):
            step = steps[i]
            bytes_read += len(data)
            total.add(data, epoch=int(epochs[step]), batch=int(batches[step]))
            del data
            bar.update(1)
    out = dict(state)
    for name, delta in total.result().items():
        out[name] = serial.minus(state[name], delta)
    return out, bytes_read


def model_with_fresh(run: RecordedRun, state: dict[str, torch.Tensor], *, fresh: set[str]) -> torch.nn.Module:
    """The run's model holding ``state``: the tensors named in ``fresh`` (just computed, owned
    by nobody else) become its parameters and buffers as they are (``assign``: no copy, which
    on a busy CPU costs more than the whole subtraction of a small erasure); the others are
    copied."""
    model = run.new_model()
    owned = {k: v if k in fresh else v.clone() for k, v in state.items()}
    model.load_state_dict(owned, assign=True)
    return model


@register_method
class AmnesiacMethod(UnlearningMethod):
    name = "amnesiac"
    guarantee = Guarantee.APPROXIMATE
    trained_with: ClassVar[tuple[TrainingMethod, ...]] = (TrainingMethod.AMNESIAC,)
    summary = "subtract the full recorded updates of every batch that held forget data"
    options_model: ClassVar[type[MethodOptions]] = AmnesiacOptions
    partial = False

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run: RecordedRun = ctx.artifact
        if any(v.method == "retrain" for v in ctx.ledger.versions):
            raise MethodError(
                f"run {run.run_id!r} was retrained from scratch in this lineage; its recorded "
                "updates no longer describe the current weights"
            )
        opts = ctx.options_as(AmnesiacOptions)
        shares = opts if isinstance(opts, PruneOptions) else PruneOptions()
        mask = opts.mask if isinstance(opts, PartialAmnesiacOptions) else None
        search_for = opts.prune_search if isinstance(opts, PartialAmnesiacOptions) else None
        prune = prune_shares(
            run, partial=self.partial, prune_first=shares.prune_first, prune_last=shares.prune_last
        )
        done = set(ctx.ledger.subtracted_steps)
        affected = [int(s) for s in run.index.steps_holding(ctx.forget_positions)]
        todo = [s for s in affected if s not in done]
        parent = run.load_weights(ctx.ledger.head.weights)
        started = time.perf_counter()
        search: dict = {}
        if search_for is not None:
            state, bytes_read, search = self._search(ctx, parent, todo, search_for)
        else:
            state, bytes_read = subtract_steps(
                run, parent, todo, prune=prune, device=ctx.device, progress=ctx.progress, desc=self.name,
                mask=mask,
            )
        model = model_with_fresh(run, state, fresh=set() if search_for is not None else set(run.spec.tensors))
        bn = self._repair_bn(ctx, model)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        unlearn_seconds = time.perf_counter() - started
        recovery_seconds = recover(
            model, ctx, optim=run.optim(), batch_size=opts.batch_size or run.spec.training.batch_size,
            seed=run.spec.training.seed + len(ctx.ledger.versions),
        )
        return UnlearnOutcome(
            model=model.cpu(),
            unlearn_seconds=unlearn_seconds,
            recovery_seconds=recovery_seconds,
            changed=bool(todo) or opts.recovery_steps > 0,
            subtracted_steps=set(todo),
            details={
                "batches_subtracted": len(todo),
                "batches_already_subtracted": len(affected) - len(todo),
                "bytes_read": bytes_read,
                **({"mask": mask} if mask is not None else {}),
                **bn,
                **search,
            },
        )

    def _repair_bn(self, ctx: UnlearnContext, model: torch.nn.Module) -> dict[str, object]:
        """Subtracted moving averages are not statistics of any data: see methods/batchnorm."""
        run: RecordedRun = ctx.artifact
        opts = ctx.options_as(AmnesiacOptions)
        if not batchnorm_layers(model):
            return {}  # nothing to repair: skip gathering the retained samples
        return repair_batchnorm(
            model, ctx.dataset.train.subset(ctx.retain_positions()), mode=opts.bn_repair,
            device=ctx.device, batch_size=opts.batch_size or run.spec.training.batch_size,
            seed=run.spec.training.seed,
        )

    def _search(
        self,
        ctx: UnlearnContext,
        parent: dict[str, torch.Tensor],
        todo: list[int],
        search_for: PruneSearch,
    ) -> tuple[dict[str, torch.Tensor], int, dict]:
        """``--prune auto``: the largest pruning that still forgets (see prune_search)."""
        run: RecordedRun = ctx.artifact
        opts = ctx.options_as(PartialAmnesiacOptions)
        if opts.prune_last is not None:
            raise MethodError("--prune auto searches the last layer's share: drop --prune-last")
        rec = run.spec.recording
        recorded = rec.mode == "partial"
        first = opts.prune_first if opts.prune_first is not None else (
            rec.prune_first if recorded else DEFAULT_PRUNE[0]
        )
        floor = rec.prune_last if recorded else 0.0
        prune_shares(run, partial=True, prune_first=first, prune_last=floor)  # lighter than recorded?
        bytes_read = 0

        def candidate(schedule: PruneSchedule) -> dict[str, torch.Tensor]:
            nonlocal bytes_read
            state, n = subtract_steps(
                run, parent, todo, prune=schedule.tensor_shares(run.spec.tensors),
                device=ctx.device, progress=ctx.progress, desc=f"{self.name} auto", mask=opts.mask,
            )
            bytes_read += n
            model = run.model_with(state)
            self._repair_bn(ctx, model)
            return {k: v.cpu() for k, v in model.state_dict().items()}

        criterion = resolve_criterion(search_for, ctx.dataset.train.labels.numpy(), ctx.forget_positions)
        found = search_prune(
            first=first, floor=floor, search=search_for, criterion=criterion, skip=rec.skip_layers,
            shapes=run.spec.tensors, candidate=candidate,
            measure=measurer(criterion, run.model_with, ctx.dataset, ctx.forget_positions, ctx.device),
        )
        record = {
            "prune_first": found.chosen.prune_first,
            "prune_last": found.chosen.prune_last,
            "pruned_share": found.chosen.pruned_share,
            "prune_auto": found.describe(),
        }
        return found.state, bytes_read, record


@register_method
class PartialAmnesiacMethod(AmnesiacMethod):
    name = "partial-amnesiac"
    trained_with = (TrainingMethod.AMNESIAC, TrainingMethod.PARTIAL_AMNESIAC)
    summary = "subtract the layer-wise pruned recorded updates (less pruning with depth)"
    options_model = PartialAmnesiacOptions
    partial = True
