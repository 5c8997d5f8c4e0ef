"""SISA exact unlearning: retrain only the affected shards, from the last clean slice.

For each shard holding forget data, restart from the checkpoint saved after the last slice
before the first affected one (or from the shard's seeded initialisation) and retrain the
remaining stages without every sample erased so far. Untouched shards are reused as they
are. The result equals SISA trained from scratch without those samples.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from unlearning_core.methods.base import UnlearnContext, UnlearningMethod, UnlearnOutcome, register_method
from unlearning_core.methods.options import MethodOptions
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.sisa.artifact import SisaRun, checkpoint_key, ensemble_state
from unlearning_core.sisa.train import full_training_cost, initial_state, train_shard
from unlearning_core.vocab import Guarantee, TrainingMethod
from unlearning_core.weights import save_state


class SisaOptions(MethodOptions):
    """SISA retrains with the run's own schedule; only the ensemble's vote is a choice."""

    aggregation: Literal["vote", "softmax"] | None = Field(
        default=None, description="how shard outputs are combined [default: the run's]"
    )


@register_method
class SisaMethod(UnlearningMethod):
    name = "sisa"
    guarantee = Guarantee.EXACT
    trained_with = (TrainingMethod.SISA,)
    summary = "retrain only the affected shards from the checkpoint before the first affected slice"
    options_model = SisaOptions

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run: SisaRun = ctx.artifact
        opts = ctx.options_as(SisaOptions)
        sisa, training = run.sisa, run.spec.training
        assignment = run.assignment
        checkpoints = ctx.ledger.checkpoints or {}
        ids = ctx.dataset.train.sample_ids
        erased = set(ctx.ledger.erased_sample_ids) | set(ctx.forget_ids)
        exclude = np.asarray([i for i, s in enumerate(ids) if s in erased], dtype=np.int64)
        # Only samples still in some shard's data matter: erased ones were retrained away.
        before = set(ctx.ledger.erased_sample_ids)
        fresh_pos = np.asarray(
            [p for p, sid in zip(ctx.forget_positions, ctx.forget_ids, strict=True) if sid not in before],
            dtype=np.int64,
        )
        affected = sorted({int(s) for s in assignment.shard[fresh_pos]})
        version = ctx.ledger.head.version + 1

        started = time.perf_counter()
        new_checkpoints = {k: list(v) for k, v in checkpoints.items()}
        members = [run.load_weights(checkpoints[str(s)][-1]) for s in range(sisa.shards)]
        processed = 0
        restarts: dict[str, int] = {}
        for shard in tqdm(affected, desc="sisa", disable=not ctx.progress, leave=False):
            in_shard = fresh_pos[assignment.shard[fresh_pos] == shard]
            first = int(assignment.slice[in_shard].min())
            restarts[str(shard)] = first
            start = (
                run.load_weights(checkpoints[str(shard)][first - 1])
                if first > 0
                else initial_state(run.new_model, training.seed, shard)
            )
            result = train_shard(
                run.new_model, ctx.dataset.train, assignment, shard=shard, slices=sisa.slices,
                start_slice=first, start_state=start, exclude=exclude, epochs=training.epochs,
                batch_size=training.batch_size, optim=run.optim(), seed=training.seed, device=ctx.device,
            )
            processed += result.samples_processed
            members[shard] = result.checkpoints[-1]
            kept = new_checkpoints[str(shard)][:first]
            if ctx.publish:
                kept += [
                    BlobPointer.of(save_state(run.store, checkpoint_key(run.prefix, shard, version, first + i), state))
                    for i, state in enumerate(result.checkpoints)
                ]
            new_checkpoints[str(shard)] = kept
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds = time.perf_counter() - started
        full_cost = full_training_cost(
            assignment, shards=sisa.shards, slices=sisa.slices, epochs=training.epochs, exclude=exclude
        )
        model = run.model_with(ensemble_state(members), opts.aggregation)
        return UnlearnOutcome(
            model=model.cpu(),
            unlearn_seconds=seconds,
            changed=bool(affected),
            checkpoints=new_checkpoints if ctx.publish and affected else None,
            details={
                "shards": sisa.shards,
                "slices": sisa.slices,
                "shards_retrained": len(affected),
                "restart_slices": restarts,
                "samples_processed": processed,
                "full_retrain_samples": full_cost,
                "cost_vs_full_retrain": processed / full_cost if full_cost else 0.0,
                "aggregation": opts.aggregation or sisa.aggregation,
            },
        )
