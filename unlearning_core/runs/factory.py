"""Rebuilding a run's model from the factory it names.

A run recorded from the user's own training loop (:func:`unlearning_core.record_training`)
cannot name one of Lethe's built-in architectures with their three size arguments; it names
a *model factory* instead, a callable that returns a freshly built ``nn.Module`` whose
``state_dict`` has the recorded keys and shapes, named as the model registry names models
(:mod:`unlearning_core.models.registry`):

- a registered name: a built-in (``mlp``, ``small-cnn``, ...; ``model_kwargs`` then give
  ``in_channels``, ``image_size`` and ``num_classes``) or an entry point of the
  ``lethe.models`` group of an installed package;
- ``"pkg.module:callable"``: an import path. Importing it runs that module's code, so only a
  caller that trusts the run allows it (the library and the CLI on the user's own machine;
  a service opening runs from API callers passes ``allow_import_path=False``).

The factory is called with the run's ``model_kwargs`` (JSON values) as keyword arguments,
exactly as given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from unlearning_core.errors import ModelError
from unlearning_core.models.registry import resolve_factory


def factory_name(factory: str | Callable[..., Any]) -> str:
    """The name to store for ``factory``: a string as given, a callable as ``module:qualname``
    (which must import back to the same object: no lambdas, no functions defined inside
    another function)."""
    if isinstance(factory, str):
        name = factory.strip()
        if not name:
            raise ModelError("model_factory is empty: give 'pkg.module:callable' or a registered name")
        return name
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ModelError(
            f"model_factory {factory!r} cannot be named for later: pass a module-level function "
            "as 'pkg.module:callable' (a lambda, a nested function or one defined in __main__ "
            "cannot be imported back when the run is unlearned)"
        )
    name = f"{module}:{qualname}"
    try:
        found = resolve_model_factory(name)
    except ModelError:
        found = None
    if found is not factory:
        raise ModelError(f"model_factory {factory!r} does not import back as {name!r}; pass its import path")
    return name


def resolve_model_factory(name: str, *, allow_import_path: bool = True) -> Callable[..., torch.nn.Module]:
    """The callable ``name`` stands for, through the model registry
    (:func:`unlearning_core.models.registry.resolve_factory`): a registered name or
    ``lethe.models`` entry point, else (when allowed) an import path."""
    return resolve_factory(name, allow_import=allow_import_path)


def build_model(
    name: str, kwargs: Mapping[str, Any] | None = None, *, allow_import_path: bool = True
) -> torch.nn.Module:
    """A fresh model from the factory ``name`` called with ``kwargs``."""
    return _call(name, resolve_model_factory(name, allow_import_path=allow_import_path), kwargs)


def _call(name: str, factory: Callable[..., Any], kwargs: Mapping[str, Any] | None) -> torch.nn.Module:
    try:
        model = factory(**dict(kwargs or {}))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 (the user's code: any error, named)
        raise ModelError(f"model factory {name!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def state_layout(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every state-dict entry's shape and dtype (what a rebuilt model must match)."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()}


def check_factory(
    name: str, kwargs: Mapping[str, Any] | None, model: torch.nn.Module, *, allow_import_path: bool = True
) -> None:
    """Build the factory's model (on the meta device when it allows, so nothing is
    allocated) and check that its state dict has the keys and shapes of ``model``'s."""
    factory = resolve_model_factory(name, allow_import_path=allow_import_path)
    try:
        with torch.device("meta"):
            built = _call(name, factory, kwargs)
    except ModelError:  # e.g. a factory that loads weights from disk: build it for real
        built = _call(name, factory, kwargs)
    want, got = state_layout(model), state_layout(built)
    if list(want) != list(got) or any(want[k][0] != got[k][0] for k in want):
        missing = [k for k in want if k not in got]
        extra = [k for k in got if k not in want]
        shapes = [f"{k} {got[k][0]} != {want[k][0]}" for k in want if k in got and got[k][0] != want[k][0]]
        detail = "; ".join(
            part for part in (
                f"missing {', '.join(missing[:3])}" if missing else "",
                f"unexpected {', '.join(extra[:3])}" if extra else "",
                f"shapes {', '.join(shapes[:3])}" if shapes else "",
                "same keys in another order" if not (missing or extra or shapes) else "",
            ) if part
        )
        raise ModelError(
            f"model factory {name!r} builds a model whose state dict differs from the trained one's "
            f"({detail}); the run could not be rebuilt for unlearning"
        )
