"""Retraining from scratch on the retained samples: the exact (gold standard) method.

Same architecture, initial weights (those seeded ``spec.training.seed`` and stored with the
run), optimizer, batch size, epochs and seeded batch plan as the original run, but trained
only on the samples still retained in the lineage: not this forget set, nor anything erased
before. A class concentration the run used is kept, on the retained positions. The result
never saw the forget set, so it is exact by construction; the price is the whole training.
On CPU the same request twice gives bit-identical weights.

The lineage head is not used (everything starts from scratch), and no recovery fine-tune
runs: the model was trained on the retained data to begin with.
"""

from __future__ import annotations

import time

import torch

from unlearning_core.errors import MethodError
from unlearning_core.methods.base import (
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    register_method,
)
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.training.batching import concentration_of, plan_batches
from unlearning_core.training.loop import train_plan
from unlearning_core.vocab import SINGLE_MODEL_TRAINING, Guarantee


@register_method
class RetrainMethod(UnlearningMethod):
    name = "retrain"
    guarantee = Guarantee.EXACT
    trained_with = SINGLE_MODEL_TRAINING
    summary = "train the same model from scratch on the retained samples; costs a full training run"

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run: RecordedRun = ctx.artifact
        t = run.spec.training
        retain_positions = ctx.retain_positions()
        if len(retain_positions) == 0:
            raise MethodError(
                f"nothing would be left to retrain run {run.run_id!r} on: every sample is erased"
            )
        samples = ctx.dataset.train.subset(retain_positions)
        concentrate = concentration_of(  # what is left of the concentrated samples keeps its place
            samples.labels.numpy(), list(samples.subject_ids), klass=t.concentrate_class,
            subjects=t.concentrate_subjects, share=t.concentrate_share, allow_missing=True,
        )
        plan = plan_batches(
            len(samples),
            epochs=t.epochs,
            batch_size=t.batch_size,
            seed=t.seed,
            concentrate=concentrate,
        )
        torch.manual_seed(t.seed)
        model = run.new_model()
        # The run's stored initial weights are exactly what its seed drew at training time;
        # loading them keeps retraining faithful even if a model factory's init changes.
        model.load_state_dict(run.load_weights(run.spec.initial_weights))
        started = time.perf_counter()
        train_plan(
            model,
            samples,
            plan,
            optim=run.optim(),
            device=ctx.device,
            progress=ctx.progress,
            desc=f"retrain {run.run_id}",
        )
        details: dict[str, object] = {
            "samples_processed": int(sum(len(b) for epoch in plan for b in epoch)),
            "retained_samples": len(samples),
            "epochs": t.epochs,
        }
        if ctx.options.recovery_steps > 0:
            details["note"] = (
                "recovery_steps ignored: retraining already trains on the retained data only"
            )
        return UnlearnOutcome(
            model=model.cpu(),
            unlearn_seconds=time.perf_counter() - started,
            recovery_seconds=0.0,
            details=details,
        )
