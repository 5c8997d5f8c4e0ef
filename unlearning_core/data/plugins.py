"""Dataset plugins: a user's own loader, installed as an entry point of ``lethe.datasets``.

A package declares ``[project.entry-points."lethe.datasets"] claims = "mypkg.data:load"``;
``load_dataset("claims")`` then calls ``load`` with whichever of ``seed``,
``test_fraction`` and ``data_dir`` it names, and expects an
:class:`unlearning_core.data.Dataset`: the training samples with their ids, labels and
(optionally) subjects, and an evaluation split. :func:`unlearning_core.data.from_arrays`
builds one from arrays. Plug-ins are looked up after the built-in names and before paths;
their modules are imported only when loaded. Like the model plug-ins, only installed entry
points count: nothing names a module to import.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from unlearning_core.data.sampleset import Dataset
from unlearning_core.errors import DatasetError

ENTRY_POINT_GROUP = "lethe.datasets"


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _entry_points() -> dict[str, Any]:
    return {_key(ep.name): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def dataset_plugin_names() -> tuple[str, ...]:
    return tuple(sorted(_entry_points()))


def is_dataset_plugin(name: str) -> bool:
    return _key(str(name)) in _entry_points()


def load_plugin(name: str, *, seed: int = 0, test_fraction: float = 0.2, data_dir: Path | None = None) -> Dataset:
    """The dataset plug-in ``name`` returns, checked: a :class:`Dataset` with training and
    evaluation samples; any failure of the plug-in is a :class:`DatasetError` naming it."""
    ep = _entry_points().get(_key(str(name)))
    if ep is None:
        raise DatasetError(f"no dataset plug-in named {name!r} (entry-point group {ENTRY_POINT_GROUP!r})")
    try:
        loader: Callable[..., Any] = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is the user's error, named
        raise DatasetError(f"dataset plug-in {name!r} ({ep.value}) cannot be imported: {exc}") from None
    offered: dict[str, Any] = {"seed": seed, "test_fraction": test_fraction, "data_dir": data_dir}
    try:
        params = inspect.signature(loader).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = offered if takes_all else {k: v for k, v in offered.items() if k in params}
    except (TypeError, ValueError):
        kwargs = offered
    try:
        dataset = loader(**kwargs)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"dataset plug-in {name!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(dataset, Dataset):
        raise DatasetError(
            f"dataset plug-in {name!r} returned {type(dataset).__name__}; it must return an "
            "unlearning_core.data.Dataset (build one with unlearning_core.data.from_arrays)"
        )
    if len(dataset.train) == 0 or len(dataset.test) == 0:
        raise DatasetError(
            f"dataset plug-in {name!r} returned {len(dataset.train)} training and {len(dataset.test)} "
            "evaluation samples; it needs both"
        )
    return dataset
