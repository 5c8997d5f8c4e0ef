"""Layer-wise L2 distance between model states.

Reported per layer (module), because the partial method deliberately changes deep layers
more than early ones; a single global norm would hide exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from unlearning_core.metrics.registry import MetricContext, register_metric
from unlearning_core.recording.masks import layer_of, layer_order


def layer_l2(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> dict[str, float]:
    names = [k for k, v in a.items() if torch.is_floating_point(v) and k in b]
    sums: dict[str, float] = {layer: 0.0 for layer in layer_order(names)}
    for name in names:
        diff = a[name].detach().float().cpu() - b[name].detach().float().cpu()
        sums[layer_of(name)] += float((diff * diff).sum())
    return {layer: s**0.5 for layer, s in sums.items()}


def states_differ(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    """Whether two states differ in any floating-point tensor (bit for bit). A method whose
    model does not differ from the one it started from did nothing, and its seconds must not
    be read as a speed-up (benches report such a row as "no change")."""
    names = [k for k, v in a.items() if torch.is_floating_point(v)]
    if set(names) != {k for k, v in b.items() if torch.is_floating_point(v)}:
        return True
    return any(not torch.equal(a[k].detach().cpu(), b[k].detach().cpu()) for k in names)


def layer_distance(
    state: Mapping[str, torch.Tensor],
    original: Mapping[str, torch.Tensor],
    retrained: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """``{layer: {"original": d, "retrained": d}}`` (the latter only when given)."""
    to_original = layer_l2(state, original)
    to_retrained = layer_l2(state, retrained) if retrained is not None else {}
    result: dict[str, dict[str, float]] = {}
    for layer, d in to_original.items():
        result[layer] = {"original": d}
        if layer in to_retrained:
            result[layer]["retrained"] = to_retrained[layer]
    return result


@register_metric(
    "layer_distance", label="Layer distance (L2)", direction=None, kind="per_layer",
    needs=("original_state",),
)
def _layer_distance(ctx: MetricContext) -> dict[str, dict[str, float]]:
    """Per-layer L2 to the trained model and, when known, to the retrained one (the report
    draws it as a figure rather than a table row)."""
    assert ctx.original_state is not None
    return layer_distance(ctx.state, ctx.original_state, ctx.retrained_state)
