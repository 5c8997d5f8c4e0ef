"""The fine-tune loop of the gradient methods, with per-layer step scaling.

Label flipping and negative gradient both fine-tune the lineage head for a few SGD steps.
Their *partial* variants scale each layer's step by its keep share ``1 - p_l``, where p_l
is the :class:`~unlearning_core.recording.PruneSchedule` share of layer l (high for the
early, generic layers, lower with depth, as in partial amnesiac unlearning): the first
layers barely move and the deep, class-specific ones move most. The plain variants run the
very same code with every scale at 1.

The scaling is one SGD parameter group per layer (module, as :func:`layer_of` names it)
with ``lr * (1 - p_l)``; weight decay and momentum act inside the group, so the whole step
of the layer is scaled. BatchNorm running statistics are not optimizer steps, so their
update rate (``momentum``) is scaled by the same share while the loop runs.

The loop guards against divergence: gradients are clipped (gradient *ascent* has no
minimum to stop at), and a step that leads to a non-finite loss, gradient, weight or output
is undone and ends the loop, keeping the last finite state, so a result never holds NaN.
When even the first step diverges, nothing was unlearned and that is a :class:`MethodError`
(an erasure must not be recorded for an unchanged model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearning_core.errors import MethodError
from unlearning_core.methods.base import UnlearnOptions
from unlearning_core.recording import PruneSchedule
from unlearning_core.recording.masks import layer_of
from unlearning_core.training.loop import OptimConfig

#: Gradient-norm clip of every fine-tune step.
CLIP_NORM = 5.0
#: Pruning shares when neither the request nor the run names any (first -> last layer).
DEFAULT_PRUNE = (0.99, 0.5)

Batch = tuple[torch.Tensor, torch.Tensor]


def partial_schedule(
    recording_prune: tuple[float, float], options: UnlearnOptions
) -> PruneSchedule:
    """The request's shares, else the run's recorded ones, else 0.99 -> 0.5.

    A run whose recording names no schedule (both shares 0, the RecordingSpec default of a
    run not trained through the CLI) falls back to :data:`DEFAULT_PRUNE`: a partial variant
    with every share 0 would be the plain method under another name.
    """
    first, last = recording_prune
    if first == 0.0 and last == 0.0:
        first, last = DEFAULT_PRUNE
    return PruneSchedule(
        first if options.prune_first is None else options.prune_first,
        last if options.prune_last is None else options.prune_last,
    )


def check_no_prune(method: str, options: UnlearnOptions) -> None:
    """The plain variants scale nothing; a pruning option there is a mistake, not a no-op."""
    if options.prune_first is not None or options.prune_last is not None:
        raise MethodError(
            f"method {method!r} takes no --prune-first/--prune-last (use partial-{method})"
        )


def layer_scales(model: torch.nn.Module, schedule: PruneSchedule | None) -> dict[str, float]:
    """Per layer (depth order), the step scale ``1 - p_l``; all 1.0 without a schedule."""
    names = [k for k, v in model.state_dict().items() if torch.is_floating_point(v)]
    if schedule is None:
        return {layer_of(n): 1.0 for n in names}
    shares = schedule.tensor_shares(names)
    return {layer_of(n): 1.0 - shares[n] for n in names}


def layerwise_sgd(
    model: torch.nn.Module, optim: OptimConfig, scales: Mapping[str, float]
) -> torch.optim.SGD:
    """SGD with one parameter group per layer, each at ``optim.lr * scales[layer]``."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault(layer_of(name), []).append(param)
    if not groups:
        raise MethodError("the model has no trainable parameters to fine-tune")
    return torch.optim.SGD(
        [
            {"params": params, "lr": optim.lr * scales.get(layer, 1.0), "layer": layer}
            for layer, params in groups.items()
        ],
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
    )


@contextmanager
def scaled_running_stats(model: torch.nn.Module, scales: Mapping[str, float]) -> Iterator[None]:
    """BatchNorm layers update their running statistics ``scale`` times as fast, then reset."""
    saved: list[tuple[torch.nn.modules.batchnorm._BatchNorm, float]] = []
    for name, module in model.named_modules():
        if (
            isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
            and module.momentum is not None
        ):
            saved.append((module, module.momentum))
            module.momentum = module.momentum * scales.get(name, 1.0)
    try:
        yield
    finally:
        for module, momentum in saved:
            module.momentum = momentum


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


def finetune(
    model: torch.nn.Module,
    *,
    optim: OptimConfig,
    scales: Mapping[str, float],
    next_batch: Callable[[int], Batch],
    steps: int,
    device: torch.device,
    ascent: bool = False,
    stop: Callable[[], bool] | None = None,
    clip: float = CLIP_NORM,
) -> FinetuneResult:
    """Up to ``steps`` SGD steps on ``next_batch(step)`` (images, targets on ``device``).

    ``ascent`` climbs the cross-entropy instead of descending it. ``stop`` is asked before
    the first step and after each one; when it answers True the loop ends.

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
            images, targets = next_batch(step)
            step += 1
            prev, before = before, _snapshot(model)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(images), targets)
            if not bool(torch.isfinite(loss)):
                # The current state (the last step's result) is the bad one: undo that step.
                if prev is not None:
                    model.load_state_dict(prev)
                    taken -= 1
                diverged = True
                break
            (-loss if ascent else loss).backward()
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


def check_finetune_options(method: str, options: UnlearnOptions) -> None:
    if options.steps is not None and options.steps < 1:
        raise MethodError(f"{method}: steps must be at least 1, got {options.steps}")
    if options.batch_size is not None and options.batch_size < 1:
        raise MethodError(f"{method}: batch size must be at least 1, got {options.batch_size}")
    if options.lr is not None and not options.lr > 0:
        raise MethodError(f"{method}: lr must be positive, got {options.lr}")
