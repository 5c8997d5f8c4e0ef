"""Optimisation-based unlearning: the fine-tune set-up once, the loss plugged in.

Label flipping, negative gradient and their partial variants all take the lineage head,
run a few SGD steps on some batches with some loss, optionally fine-tune on retained data
afterwards ("recovery"), and report the same figures. :class:`FinetuneMethod` does all of
that once: it reads :class:`FinetuneOptions` (steps, lr, batch size, plus the shared knobs),
loads the head, builds the optimiser with the per-layer step scaling of the partial
variants (:mod:`unlearning_core.methods.layerwise`: each layer's step times ``1 - p_l``),
runs :func:`run_finetune` (clipping, divergence guard, early stop) and the recovery, and
fills in the outcome. A method supplies only what is its own, as a :class:`FinetunePlan`:
the batches, the loss (a callable ``loss(model, batch, step) -> tensor``) and, if it wants,
an early stop, a hook on the gradients and its own details.

Adding an optimisation-based method (SCRUB's KL to a teacher, SalUn's saliency mask, ...)
is one module plus one import line in ``unlearning_core/methods/__init__.py``::

    class KlOptions(FinetuneOptions):
        temperature: float = Field(default=4.0, gt=0, le=100, description="softmax temperature")

    @register_method
    class KlToTeacher(FinetuneMethod):
        name = "kl-teacher"
        summary = "pull the head's outputs on the forget set towards an untrained teacher"
        options_model = KlOptions

        def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
            opts = ctx.options_as(KlOptions)
            teacher = ...                      # built once, before the loop
            forget = ctx.dataset.train.subset(ctx.forget_positions)
            x, y = forget.images.to(tune.device), forget.labels.to(tune.device)

            def loss(model, batch, step):      # the model, (inputs, targets), StepContext
                inputs, _ = batch
                return F.kl_div(...)

            return FinetunePlan(next_batch=lambda step: (x, y), loss=loss)

Partial variants set ``partial = True`` and use an options model that also extends
:class:`~unlearning_core.methods.options.PruneOptions`; everything else is inherited. The
plan is built inside the timed region, so its preparation (relabelling, targets) counts
as unlearning time, as it did when each method had its own loop.

The loop guards against divergence: gradients are clipped (gradient *ascent* has no
minimum to stop at), and a step that leads to a non-finite loss, gradient, weight or output
is undone and ends the loop, keeping the last finite state, so a result never holds NaN.
When even the first step diverges, nothing was unlearned and that is a :class:`MethodError`
(an erasure must not be recorded for an unchanged model).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from unlearning_core.errors import MethodError
from unlearning_core.methods.base import (
    UnlearnContext,
    UnlearningMethod,
    UnlearnOutcome,
    recover,
)
from unlearning_core.methods.layerwise import (
    layer_scales,
    layerwise_sgd,
    partial_schedule,
    scaled_running_stats,
)
from unlearning_core.methods.options import MethodOptions, PruneOptions
from unlearning_core.recording import PruneSchedule
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.training.loop import OptimConfig
from unlearning_core.vocab import SINGLE_MODEL_TRAINING, Guarantee

#: Gradient-norm clip of every fine-tune step.
CLIP_NORM = 5.0
#: SGD steps when the request names none.
DEFAULT_STEPS = 20

#: ``(inputs, targets)`` on the loop's device; the inputs also check the final state's outputs.
Batch = tuple[torch.Tensor, torch.Tensor]


class FinetuneOptions(MethodOptions):
    """The knobs of every fine-tune method (on top of the shared ones)."""

    steps: int = Field(
        default=DEFAULT_STEPS, ge=1, le=1_000_000, description="SGD steps at most (fewer if it stops early)"
    )
    lr: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        description="learning rate [default: the run's]",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="samples per step, also of the recovery fine-tune [default: the run's]",
    )


@dataclass(frozen=True)
class StepContext:
    """What a loss sees besides the model and the batch."""

    step: int  # 0-based index of this step
    device: torch.device
    #: The request being unlearned (its dataset, forget set, options); None when the loop
    #: runs outside a method.
    unlearn: UnlearnContext | None = None


#: ``loss(model, batch, step)``: the scalar the step *descends* (return ``-x`` to climb x).
LossFn = Callable[[torch.nn.Module, Batch, StepContext], torch.Tensor]


def cross_entropy(model: torch.nn.Module, batch: Batch, _step: StepContext) -> torch.Tensor:
    """The usual loss: cross-entropy of the model's logits against the batch's targets."""
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


def ascent(loss: LossFn) -> LossFn:
    """Gradient *ascent* on ``loss`` (negative gradient): the step climbs it."""

    def climb(model: torch.nn.Module, batch: Batch, step: StepContext) -> torch.Tensor:
        return -loss(model, batch, step)

    return climb


@dataclass(frozen=True)
class FinetuneResult:
    steps: int  # optimizer steps kept
    reached: bool  # ``stop`` answered True (the goal was met)
    stopped_early: bool  # ... with step budget left (or before the first step)
    diverged: (
        bool  # a non-finite loss, gradient, weight or output ended it (last finite state kept)
    )
    seconds: float


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _finite(model: torch.nn.Module) -> bool:
    """Every float tensor of the state finite (one device sync, not one per tensor)."""
    state = model.state_dict().values()
    checks = [torch.isfinite(v).all() for v in state if torch.is_floating_point(v)]
    return bool(torch.stack(checks).all()) if checks else True


def run_finetune(
    model: torch.nn.Module,
    *,
    optim: OptimConfig,
    scales: Mapping[str, float],
    next_batch: Callable[[int], Batch],
    loss: LossFn,
    steps: int,
    device: torch.device,
    stop: Callable[[], bool] | None = None,
    after_backward: Callable[[torch.nn.Module], None] | None = None,
    clip: float = CLIP_NORM,
    unlearn: UnlearnContext | None = None,
) -> FinetuneResult:
    """Up to ``steps`` SGD steps descending ``loss`` on ``next_batch(step)``.

    ``scales`` maps each layer (module name) to its step scale; its parameters step at
    ``lr * scale``. ``stop`` is asked before the first step and after each one; when it
    answers True the loop ends. ``after_backward`` sees the model once the gradients are
    in, before clipping (a saliency mask zeroes gradients there).

    Each state's outputs are checked by the next step's loss; the final state by one
    forward pass on the last batch. A non-finite value restores the state before the step.
    """
    model.to(device).train()
    optimizer = layerwise_sgd(model, optim, scales)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    started = time.perf_counter()
    taken, reached, diverged = 0, False, False
    prev: dict[str, torch.Tensor] | None = None  # the state before the previous step
    before: dict[str, torch.Tensor] | None = None  # the state before this step
    images: torch.Tensor | None = None
    with scaled_running_stats(model, scales):
        reached = stop is not None and stop()
        step = 0
        while not reached and step < steps:
            batch = next_batch(step)
            images = batch[0]
            context = StepContext(step=step, device=device, unlearn=unlearn)
            step += 1
            prev, before = before, _snapshot(model)
            optimizer.zero_grad(set_to_none=True)
            value = loss(model, batch, context)
            if not bool(torch.isfinite(value)):
                # The current state (the last step's result) is the bad one: undo that step.
                if prev is not None:
                    model.load_state_dict(prev)
                    taken -= 1
                diverged = True
                break
            value.backward()
            if after_backward is not None:
                after_backward(model)
            ok = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip)))
            if ok:
                optimizer.step()
                ok = _finite(model)
            if not ok:  # undo this step (and the forward's BatchNorm statistics)
                model.load_state_dict(before)
                diverged = True
                break
            taken += 1
            reached = stop is not None and stop()
        last_ok = diverged or before is None or images is None or _outputs_finite(model, images)
        if not last_ok and before is not None:
            model.load_state_dict(before)
            taken -= 1
            reached, diverged = False, True
    optimizer.zero_grad(set_to_none=True)
    if diverged and taken == 0:
        raise MethodError(
            f"the fine-tune diverged on its first step (non-finite loss or gradient at lr "
            f"{optim.lr:g}); nothing was changed: use a lower lr"
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return FinetuneResult(
        steps=taken,
        reached=reached,
        stopped_early=reached and taken < steps,
        diverged=diverged,
        seconds=time.perf_counter() - started,
    )


@torch.no_grad()
def _outputs_finite(model: torch.nn.Module, images: torch.Tensor) -> bool:
    """Whether the model gives finite logits on the batch (eval mode: no BatchNorm update)."""
    model.eval()
    try:
        return bool(torch.isfinite(model(images)).all())
    finally:
        model.train()


@torch.no_grad()
def accuracy_on(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, chunk: int = 1024
) -> float:
    """Accuracy of ``model`` on tensors already on its device (eval mode, then back to train)."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(labels), chunk):
        logits = model(images[start : start + chunk])
        correct += int((logits.argmax(dim=1) == labels[start : start + chunk]).sum())
    model.train(was_training)
    return correct / max(1, len(labels))


@dataclass
class Tuning:
    """What :class:`FinetuneMethod` set up before asking the method for its plan."""

    run: RecordedRun
    model: torch.nn.Module  # the lineage head, on ``device``, about to be fine-tuned
    optim: OptimConfig  # the request's lr (else the run's), the run's momentum and decay
    steps: int
    batch_size: int  # the request's (else the run's)
    scales: dict[str, float]  # per layer: 1 - p_l for partial variants, else 1.0
    schedule: PruneSchedule | None  # partial variants' pruning shares
    device: torch.device


@dataclass
class FinetunePlan:
    """A method's part of a fine-tune: what to step on and what to descend."""

    next_batch: Callable[[int], Batch]
    loss: LossFn
    stop: Callable[[], bool] | None = None
    after_backward: Callable[[torch.nn.Module], None] | None = None
    #: Figures known before the loop (shown in the outcome's details).
    details: dict[str, Any] = field(default_factory=dict)
    #: Figures that need the loop's result (e.g. whether a target was reached).
    finish: Callable[[FinetuneResult], dict[str, Any]] | None = None
    #: The method's own step count (SCRUB's alternating schedule), else ``tune.steps``.
    steps: int | None = None
    #: The method's own optimiser settings (SalUn moves weight decay into its masked
    #: gradient), else ``tune.optim``.
    optim: OptimConfig | None = None


class FinetuneMethod(UnlearningMethod):
    """Base of the optimisation-based methods; subclasses write :meth:`plan` only."""

    guarantee: ClassVar[Guarantee] = Guarantee.APPROXIMATE
    trained_with = SINGLE_MODEL_TRAINING
    options_model: ClassVar[type[MethodOptions]] = FinetuneOptions
    #: Partial variant: each layer's step scaled by 1 - p_l (options extend PruneOptions).
    partial: ClassVar[bool] = False

    @abstractmethod
    def plan(self, ctx: UnlearnContext, tune: Tuning) -> FinetunePlan:
        """The batches, the loss and the rest for this request (called inside the timing)."""

    def schedule(self, run: RecordedRun, options: MethodOptions) -> PruneSchedule | None:
        """Partial variants: the request's pruning shares, else the run's, else 0.99 -> 0.5."""
        if not self.partial:
            return None
        if not isinstance(options, PruneOptions):
            raise MethodError(
                f"method {self.name!r} is partial: its options model must extend PruneOptions"
            )
        r = run.spec.recording
        return partial_schedule((r.prune_first, r.prune_last), options)

    def unlearn(self, ctx: UnlearnContext) -> UnlearnOutcome:
        run: RecordedRun = ctx.artifact
        opts, t, device = ctx.options_as(FinetuneOptions), run.spec.training, ctx.device
        schedule = self.schedule(run, opts)
        model = run.model_with(run.load_weights(ctx.ledger.head.weights)).to(device)
        tune = Tuning(
            run=run,
            model=model,
            optim=OptimConfig(lr=opts.lr or t.lr, momentum=t.momentum, weight_decay=t.weight_decay),
            steps=opts.steps,
            batch_size=opts.batch_size or t.batch_size,
            scales=layer_scales(model, schedule),
            schedule=schedule,
            device=device,
        )
        started = time.perf_counter()
        plan = self.plan(ctx, tune)
        optim = plan.optim or tune.optim
        result = run_finetune(
            model,
            optim=optim,
            scales=tune.scales,
            next_batch=plan.next_batch,
            loss=plan.loss,
            steps=tune.steps if plan.steps is None else plan.steps,
            device=device,
            stop=plan.stop,
            after_backward=plan.after_backward,
            unlearn=ctx,
        )
        unlearn_seconds = time.perf_counter() - started
        recovery_seconds = recover(
            model,
            ctx,
            optim=run.optim(),
            batch_size=tune.batch_size,
            seed=t.seed + len(ctx.ledger.versions),
        )
        details: dict[str, Any] = {
            "steps": result.steps,
            **plan.details,
            **(plan.finish(result) if plan.finish is not None else {}),
            "lr": optim.lr,
            "diverged": result.diverged,
            "layer_step_scale": tune.scales,
        }
        if schedule is not None:
            details.update(prune_first=schedule.first, prune_last=schedule.last)
        return UnlearnOutcome(
            model=model.cpu(),
            unlearn_seconds=unlearn_seconds,
            recovery_seconds=recovery_seconds,
            changed=result.steps > 0 or opts.recovery_steps > 0,
            details=details,
        )
