"""Models by name (timm style), built-in or brought by their users.

A model is a *factory*: a callable returning a fresh ``nn.Module``. There are three ways to
name one:

- a name registered with ``@register_model`` in this process (tests, notebooks);
- a name registered through the entry-point group ``lethe.models`` of an installed
  package (``[project.entry-points."lethe.models"] my-net = "mypkg.nets:build"``). The
  built-ins are declared the same way in Lethe's own ``pyproject.toml``. Entry points are
  read lazily: a plug-in's module is imported only when its model is built, so a broken
  plug-in never breaks the listing;
- a ``package.module:callable`` path, imported on demand (:func:`create_model` with
  ``allow_import=True``: the CLI and the pure library). The service never does this: a
  name reaching it from an API caller must be registered, so no caller can make it import
  arbitrary code.

A factory receives whichever of ``in_channels``, ``image_size`` and ``num_classes`` its
signature names (all of them if it takes ``**kwargs``); a user's ``build()`` with no
parameters is called as is.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

import torch.nn as nn

from unlearning_core.errors import ModelError

ENTRY_POINT_GROUP = "lethe.models"


class ModelFactory(Protocol):
    def __call__(
        self, *, in_channels: int, image_size: tuple[int, int], num_classes: int
    ) -> nn.Module: ...


_FACTORIES: dict[str, Callable[..., Any]] = {}
#: Entry points found in installed packages: key -> "module:attr" (loaded on first use).
_ENTRY_POINTS: dict[str, str] = {}
_SCANNED = False


def _key(name: str) -> str:
    """Names compare case-insensitively with ``_`` == ``-`` (``small_cnn`` is ``small-cnn``)."""
    return name.strip().lower().replace("_", "-")


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(*, in_channels, image_size, num_classes) -> nn.Module`` as ``name``.

    The module must register its submodules from input to output: other code reads the
    ``state_dict`` order as depth order (layer-wise distances, per-layer pruning).
    A name is registered once (an entry point of the same name is then never loaded).
    """
    key = _key(name)

    def decorator(factory: ModelFactory) -> ModelFactory:
        if key in _FACTORIES:
            raise ValueError(f"model {key!r} is already registered")
        _FACTORIES[key] = factory
        return factory

    return decorator


def refresh_plugins() -> None:
    """Read the ``lethe.models`` entry points again (after installing a package at run time)."""
    global _SCANNED
    _ENTRY_POINTS.clear()
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _ENTRY_POINTS.setdefault(_key(ep.name), ep.value)
    _SCANNED = True


def _scan() -> None:
    if not _SCANNED:
        refresh_plugins()


def _known(key: str) -> bool:
    """Whether ``key`` is registered; on a miss the entry points are read again, so a
    package installed while the process runs is found without a restart."""
    _scan()
    if key in _FACTORIES or key in _ENTRY_POINTS:
        return True
    refresh_plugins()
    return key in _ENTRY_POINTS


def model_names() -> tuple[str, ...]:
    """Every registered name: in-process registrations in order, then installed plug-ins."""
    _scan()
    return tuple(_FACTORIES) + tuple(k for k in sorted(_ENTRY_POINTS) if k not in _FACTORIES)


def is_registered(name: str) -> bool:
    """Whether ``name`` is a registered model (decorator or installed entry point); a
    ``module:callable`` path that is not registered is not."""
    return _known(_key(str(name)))


def _import_path(path: str) -> Callable[..., Any]:
    """``package.module:callable`` (attribute dots allowed after the colon) imported."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model factory {path!r} must read package.module:callable")
    try:
        obj: Any = importlib.import_module(module_name.strip())
    except ImportError as exc:
        raise ModelError(f"model factory {path!r}: cannot import {module_name!r} ({exc})") from None
    for part in attr.strip().split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelError(f"model factory {path!r}: {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise ModelError(f"model factory {path!r} is not callable")
    return obj


def resolve_factory(name: str, *, allow_import: bool = True) -> Callable[..., Any]:
    """The factory ``name`` denotes (see the module doc); a :class:`ModelError` naming what
    is known otherwise."""
    key = _key(str(name))
    _known(key)
    if key in _FACTORIES:
        return _FACTORIES[key]
    if key in _ENTRY_POINTS:
        factory = _import_path(_ENTRY_POINTS[key])
        _FACTORIES[key] = factory
        return factory
    if ":" in str(name):
        if not allow_import:
            raise ModelError(
                f"model {name!r} is not a registered model; install it as an entry point of the "
                f"{ENTRY_POINT_GROUP!r} group on the service's machines (known: {', '.join(model_names())})"
            )
        return _import_path(str(name))
    raise ModelError(f"unknown model {name!r}; known models: {', '.join(model_names())}")


def call_factory(factory: Callable[..., Any], name: str, **kwargs: Any) -> nn.Module:
    """Call ``factory`` with the keyword arguments its signature accepts; an ``nn.Module``
    or a :class:`ModelError`."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: give it everything
        accepted = kwargs
    else:
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            accepted = kwargs
        else:
            accepted = {k: v for k, v in kwargs.items() if k in params}
    model = factory(**accepted)
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def create_model(
    name: str,
    *,
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    allow_import: bool = True,
) -> nn.Module:
    """A freshly initialised model (no pretrained weights; seed with ``torch.manual_seed``)."""
    factory = resolve_factory(name, allow_import=allow_import)
    h, w = (int(s) for s in image_size)
    if in_channels < 1 or h < 1 or w < 1:
        raise ModelError(
            f"model {name!r}: need in_channels >= 1 and a positive image size, "
            f"got {in_channels} channels of {h}x{w}"
        )
    if num_classes < 1:
        raise ModelError(f"model {name!r}: need at least one class, got {num_classes}")
    return call_factory(
        factory, str(name), in_channels=int(in_channels), image_size=(h, w), num_classes=int(num_classes)
    )
