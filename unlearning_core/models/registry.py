"""Models registered by name (timm style): adding one is a function plus ``@register_model``,
and callers (worker, CLI, benchmarks) never branch on architecture names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch.nn as nn

from unlearning_core.errors import ModelError


class ModelFactory(Protocol):
    def __call__(
        self, *, in_channels: int, image_size: tuple[int, int], num_classes: int
    ) -> nn.Module: ...


_FACTORIES: dict[str, ModelFactory] = {}


def _key(name: str) -> str:
    """Names compare case-insensitively with ``_`` == ``-`` (``small_cnn`` is ``small-cnn``)."""
    return name.strip().lower().replace("_", "-")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(*, in_channels, image_size, num_classes) -> nn.Module`` as ``name``.

    The module must register its submodules from input to output: other code reads the
    ``state_dict`` order as depth order (layer-wise distances, per-layer pruning).
    """
    key = _key(name)

    def decorator(factory: ModelFactory) -> ModelFactory:
        if key in _FACTORIES:
            raise ValueError(f"model {key!r} is already registered")
        _FACTORIES[key] = factory
        return factory

    return decorator


def model_names() -> tuple[str, ...]:
    """Every registered name, in registration order (built-ins and later plug-ins)."""
    return tuple(_FACTORIES)


def create_model(
    name: str, *, in_channels: int, image_size: tuple[int, int], num_classes: int
) -> nn.Module:
    """A freshly initialised model (no pretrained weights; seed with ``torch.manual_seed``)."""
    factory = _FACTORIES.get(_key(str(name)))
    if factory is None:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    h, w = (int(s) for s in image_size)
    if in_channels < 1 or h < 1 or w < 1:
        raise ModelError(
            f"model {name!r}: need in_channels >= 1 and a positive image size, "
            f"got {in_channels} channels of {h}x{w}"
        )
    if num_classes < 1:
        raise ModelError(f"model {name!r}: need at least one class, got {num_classes}")
    return factory(in_channels=int(in_channels), image_size=(h, w), num_classes=int(num_classes))
