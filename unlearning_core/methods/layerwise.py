"""Per-layer step scaling of the fine-tune methods' *partial* variants.

The fine-tune methods (:mod:`unlearning_core.methods.finetune`: label flipping, negative
gradient, ...) run a few SGD steps on the lineage head. Their *partial* variants scale
each layer's step by its keep share ``1 - p_l``, where p_l
is the :class:`~unlearning_core.recording.PruneSchedule` share of layer l (high for the
early, generic layers, lower with depth, as in partial amnesiac unlearning): the first
layers barely move and the deep, class-specific ones move most. The plain variants run the
very same code with every scale at 1.

The scaling is one SGD parameter group per layer (module, as :func:`layer_of` names it)
with ``lr * (1 - p_l)``; weight decay and momentum act inside the group, so the whole step
of the layer is scaled. BatchNorm running statistics are not optimizer steps, so their
update rate (``momentum``) is scaled by the same share while the loop runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from unlearning_core.errors import MethodError
from unlearning_core.methods.options import PruneOptions
from unlearning_core.recording import PruneSchedule
from unlearning_core.recording.masks import layer_of
from unlearning_core.training.loop import OptimConfig

#: Pruning shares when neither the request nor the run names any (first -> last layer).
DEFAULT_PRUNE = (0.99, 0.5)


def partial_schedule(
    recording_prune: tuple[float, float], options: PruneOptions
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
