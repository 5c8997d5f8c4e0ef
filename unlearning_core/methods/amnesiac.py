"""Amnesiac and layer-wise partial amnesiac unlearning: subtract recorded updates.

For the forget set, find every step whose batch held one of its samples, sum those steps'
stored (pruned) updates and subtract the sum from the lineage's latest version. Cost is
the bytes of the affected updates: only their blobs are read, with a small read-ahead.
Steps already in the lineage's ledger are skipped, so no batch is subtracted twice.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import torch
from tqdm.auto import tqdm

from typing import ClassVar, Literal

from pydantic import Field

from unlearning_core.errors import MethodError, RunError
from unlearning_core.methods.base import (
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    recover,
    register_method,
)
from unlearning_core.methods.batchnorm import repair_batchnorm
from unlearning_core.methods.layerwise import DEFAULT_PRUNE
from unlearning_core.methods.options import MethodOptions, PruneOptions
from unlearning_core.methods.prune_search import (
    PruneSearch,
    measurer,
    resolve_criterion,
    search_prune,
)
from unlearning_core.recording import PruneSchedule, decode_update
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.vocab import Guarantee, TrainingMethod

READ_AHEAD = 4


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
    )
    names = list(run.spec.tensors)
    if rec.mode == "partial" and not schedule.covers(PruneSchedule(rec.prune_first, rec.prune_last), names):
        raise RunError(
            f"pruning {schedule.first}->{schedule.last} is lighter than the run's recorded "
            f"{rec.prune_first}->{rec.prune_last} on some layer; the pruned entries were never stored"
        )
    return schedule.tensor_shares(names)


def _fetch(run: RecordedRun, pointers: list[BlobPointer]) -> Iterator[bytes]:
    """Blobs in order, verified against the run's sha256s, read ahead on a thread pool."""
    with ThreadPoolExecutor(max_workers=READ_AHEAD, thread_name_prefix="lethe-reader") as pool:
        window: deque[Future[bytes]] = deque()
        for p in pointers:
            window.append(pool.submit(run.store.get, p.key, expected_sha256=p.sha256))
            if len(window) >= READ_AHEAD:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def subtract_steps(
    run: RecordedRun,
    state: dict[str, torch.Tensor],
    steps: list[int],
    *,
    prune: dict[str, float] | None,
    device: torch.device,
    progress: bool = False,
    desc: str = "subtract",
) -> tuple[dict[str, torch.Tensor], int]:
    """``state`` minus the sum of the given steps' stored updates; also the bytes read."""
    fmt = run.update_format()
    blobs = run.update_blobs
    total = {n: torch.zeros(s, dtype=torch.float32, device=device) for n, s in fmt.shapes.items()}
    bytes_read = 0
    with tqdm(total=len(steps), desc=desc, disable=not progress, leave=False) as bar:
        for step, data in zip(steps, _fetch(run, [blobs[s] for s in steps]), strict=True):
            bytes_read += len(data)
            update = decode_update(
                data, fmt, epoch=int(run.index.epochs[step]), batch=int(run.index.batches[step]),
                prune=prune, device=device,
            )
            for name, delta in update.items():
                total[name] += delta
            bar.update(1)
    out = dict(state)
    for name, delta in total.items():
        out[name] = (state[name].to(device=device, dtype=torch.float32) - delta).to(
            dtype=state[name].dtype, device="cpu"
        )
    return out, bytes_read


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
                run, parent, todo, prune=prune, device=ctx.device, progress=ctx.progress, desc=self.name
            )
        model = run.model_with(state)
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
                **bn,
                **search,
            },
        )

    def _repair_bn(self, ctx: UnlearnContext, model: torch.nn.Module) -> dict[str, object]:
        """Subtracted moving averages are not statistics of any data: see methods/batchnorm."""
        run: RecordedRun = ctx.artifact
        opts = ctx.options_as(AmnesiacOptions)
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
                device=ctx.device, progress=ctx.progress, desc=f"{self.name} auto",
            )
            bytes_read += n
            model = run.model_with(state)
            self._repair_bn(ctx, model)
            return {k: v.cpu() for k, v in model.state_dict().items()}

        criterion = resolve_criterion(search_for, ctx.dataset.train.labels.numpy(), ctx.forget_positions)
        found = search_prune(
            first=first, floor=floor, search=search_for, criterion=criterion,
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
