"""The metric registry: each metric is one function plus ``@register_metric``.

Every place that shows metrics (the dashboard's version tables and chart, the erasure
report, the ``lethe unlearn --compare`` table, the gap-to-retrain of a comparison) reads its
list from here, the benches pick theirs by name through it, and
:func:`~unlearning_core.metrics.evaluate_unlearning` is a loop over it. Before, a new
metric took six hand-kept name lists that drifted apart.

Adding a metric
---------------

Write one function of a :class:`MetricContext` in a module under ``unlearning_core/metrics/``
and decorate it::

    @register_metric(
        "forget_confidence",
        label="Forget confidence",
        direction="retrain",          # "higher" | "lower" | "retrain" (closer to it) | None
        description="Mean top-class probability on the forget set.",
    )
    def forget_confidence(ctx: MetricContext) -> float | None:
        if len(ctx.forget) == 0:
            return None
        return float(ctx.forget.probabilities.max(dim=1).values.mean())

The module must be imported by ``unlearning_core/metrics/__init__.py`` (built-ins are
registered in the order of those imports, which is the order of every table). A metric
registered in any other module works the same once that module is imported in the process
that evaluates and shows it (the worker, the CLI, a test).

Where it then shows up, with no other edit:

- ``evaluate_unlearning``'s result under its name, hence ``lethe unlearn --json``, the
  ``pipeline.report`` of every method, the metrics the worker stores with each published
  version (``GET /requests/{id}/status``, ``GET /models/{name}/versions``, audit events),
  and the erasure record kept beside the run;
- ``show`` picks the tables (default for a ``scalar``: ``version``, ``report``,
  ``compare``; for dicts and flags: none):

  ``version``  dashboard model page and request page (VERSION_METRICS),
  ``chart``    dashboard model chart, a 0..1 axis (CHART_METRICS),
  ``report``   erasure report's metrics table and summary (METRIC_ROWS),
  ``compare``  the human-readable ``lethe unlearn --compare`` table,
  ``gap``      each compared row's ``retrain_gap`` (value minus the retrained model's);

- tables print ``label`` (the CLI table, read beside ``--json``, heads columns by name)
  and format values with ``fmt`` (a :func:`format` spec; ``direction`` becomes the
  "higher is better" hint of the report and the dashboard's tooltips).

A test registers its metric in a fixture and removes it afterwards with
:func:`unregister_metric`, so other tests see the normal registry (``tests/toy_metric.py``
and ``tests/test_toy_metric.py`` follow one toy metric through every place above).

A metric is computed only when everything in ``needs`` is known (e.g. ``original_state``
for a distance to the trained model); otherwise its key is absent, as before the registry.
``cost="expensive"`` marks metrics that train (``relearn_steps``): callers that must be
fast pass ``expensive=False``. Values that are not computed here but are shown beside the
metrics (``unlearn_seconds``, ``recovery_seconds``, ``storage_bytes``, ...) are registered
with :func:`register_display` so that every table's list stays single.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args, overload

import numpy as np
import torch

from unlearning_core.data import Dataset, SampleSet
from unlearning_core.errors import LetheError
from unlearning_core.metrics.outputs import Outputs
from unlearning_core.training.loop import OptimConfig

Surface = Literal["version", "chart", "report", "compare", "gap"]
Kind = Literal["scalar", "per_class", "per_layer", "flag"]
Direction = Literal["higher", "lower", "retrain"]
Cost = Literal["cheap", "expensive"]
#: Optional inputs of a :class:`MetricContext` a metric may need; it is skipped without them.
Need = Literal["original_state", "retrained_state", "original_forget_acc", "relearn", "shadow_models"]

SURFACES: tuple[Surface, ...] = get_args(Surface)
NEEDS: tuple[Need, ...] = get_args(Need)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BETTER = {"higher": "higher is better", "lower": "lower is better", "retrain": "closer to retrain is better"}

T = TypeVar("T")


class MetricError(LetheError):
    """A metric name that is not registered (a typo in a selection of names)."""


@dataclass
class MetricContext:
    """Everything a metric may read, computed once per evaluated model.

    The three :class:`Outputs` are shared by every metric, so adding one costs no extra
    forward pass; the optional fields are ``None`` when the caller does not know them, and
    a metric that lists them in ``needs`` is then skipped.
    """

    model: torch.nn.Module
    dataset: Dataset
    forget_positions: np.ndarray
    forget: Outputs
    retain: Outputs  # a seeded subsample of the retained training samples
    test: Outputs
    device: torch.device
    seed: int = 0
    original_state: Mapping[str, torch.Tensor] | None = None  # the trained model (version 0)
    retrained_state: Mapping[str, torch.Tensor] | None = None  # retrained without the forget set
    original_forget_acc: float | None = None  # the target of relearn_steps
    relearn: OptimConfig | None = None  # optimizer of the relearn probe
    relearn_batch_size: int = 64
    relearn_max_steps: int = 100
    shadow_models: Sequence[torch.nn.Module] | None = None  # OUT models for mia_auc_lira
    #: Knobs of metrics registered outside the library (read with ``ctx.options.get``).
    options: Mapping[str, Any] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def forget_samples(self) -> SampleSet:
        """The forget set's samples themselves (for metrics that train or run other models)."""
        return self.memo("forget_samples", lambda: self.dataset.train.subset(self.forget_positions))

    @property
    def state(self) -> Mapping[str, torch.Tensor]:
        """The evaluated model's state dict, taken once for all distance metrics."""
        return self.memo("state", self.model.state_dict)

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per context: two metrics from one costly run (relearn steps
        and whether the target was reached) share it instead of training twice."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def has(self, need: str) -> bool:
        return getattr(self, need) is not None


MetricFn = Callable[[MetricContext], Any]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric (``fn`` set) or display-only entry (``fn`` None) and what its
    consumers need to show it."""

    name: str
    label: str
    direction: Direction | None
    kind: Kind = "scalar"
    fmt: str = ".3f"
    cost: Cost = "cheap"
    needs: frozenset[Need] = frozenset()
    show: frozenset[Surface] = frozenset()
    description: str = ""
    fn: MetricFn | None = None

    @property
    def computed(self) -> bool:
        """False for display-only entries (timings and sizes the pipeline measures itself)."""
        return self.fn is not None

    @property
    def better(self) -> str:
        """``"higher is better"`` etc., for table tooltips; empty when informational."""
        return _BETTER.get(self.direction or "", "")

    def shown_on(self, surface: Surface) -> bool:
        return surface in self.show

    def ready(self, ctx: MetricContext) -> bool:
        """Whether ``ctx`` holds every input this metric needs."""
        return all(ctx.has(n) for n in self.needs)

    def format(self, value: Any, missing: str = "-") -> str:
        """``value`` as tables show it: ``fmt`` for numbers, ``missing`` for None, and
        ``str`` for anything ``fmt`` does not fit (a stored value of another type must not
        break a page)."""
        if value is None:
            return missing
        if isinstance(value, bool) or not isinstance(value, (int, float, np.generic)):
            return str(value)
        try:
            return format(value, self.fmt)
        except (TypeError, ValueError):
            return str(value)


_REGISTRY: dict[str, MetricSpec] = {}


def _spec(
    name: str, *, label: str, direction: Direction | None, kind: Kind, fmt: str, cost: Cost,
    needs: Collection[str], show: Collection[str] | None, description: str, fn: MetricFn | None,
) -> MetricSpec:
    """Validate at registration, so a typo fails at import rather than hiding a metric."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"metric name {name!r}: use lower-case letters, digits and '_' (DESIGN.md style)")
    if name in _REGISTRY:
        raise ValueError(f"metric {name!r} is already registered")
    if kind not in get_args(Kind):
        raise ValueError(f"metric {name!r}: kind {kind!r} is not one of {', '.join(get_args(Kind))}")
    if direction is not None and direction not in _BETTER:
        raise ValueError(f"metric {name!r}: direction {direction!r} is not one of {', '.join(_BETTER)} or None")
    if cost not in get_args(Cost):
        raise ValueError(f"metric {name!r}: cost {cost!r} is not one of {', '.join(get_args(Cost))}")
    if unknown := sorted(set(needs) - set(NEEDS)):
        raise ValueError(f"metric {name!r} needs unknown inputs {unknown}; known: {', '.join(NEEDS)}")
    surfaces = set(show) if show is not None else ({"version", "report", "compare"} if kind == "scalar" else set())
    if unknown := sorted(surfaces - set(SURFACES)):
        raise ValueError(f"metric {name!r}: unknown surfaces {unknown}; known: {', '.join(SURFACES)}")
    if kind != "scalar" and surfaces & {"chart", "gap"}:
        raise ValueError(f"metric {name!r}: only scalar metrics can be charted or differenced")
    format(0.5 if fmt[-1:] not in "dxXobcn" else 1, fmt)  # a bad spec fails here, not in a page
    return MetricSpec(
        name=name, label=label, direction=direction, kind=kind, fmt=fmt, cost=cost,
        needs=frozenset(needs), show=frozenset(surfaces), description=description, fn=fn,  # type: ignore[arg-type]
    )


def register_metric(
    name: str,
    *,
    label: str,
    direction: Direction | None,
    kind: Kind = "scalar",
    fmt: str = ".3f",
    cost: Cost = "cheap",
    needs: Collection[Need] = (),
    show: Collection[Surface] | None = None,
    description: str = "",
) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register ``fn(ctx: MetricContext) -> value`` as metric ``name``.

    ``value`` must be JSON-serialisable (it is stored with the version); ``None`` means
    "not measurable here" (e.g. an empty set). ``direction``: ``"higher"`` or ``"lower"`` is
    better, ``"retrain"``: closer to a model retrained without the forget set is better,
    ``None``: informational. ``kind``: ``scalar``, ``per_class`` / ``per_layer`` (dicts),
    ``flag`` (bool). ``show``: surfaces (see the module docstring). ``needs``: optional
    context inputs without which it is skipped. ``cost``: ``"expensive"`` if it trains.
    """

    def decorate(fn: MetricFn) -> MetricFn:
        _REGISTRY[name] = _spec(
            name, label=label, direction=direction, kind=kind, fmt=fmt, cost=cost, needs=needs,
            show=show, description=description or (fn.__doc__ or "").strip().split("\n\n")[0], fn=fn,
        )
        return fn

    return decorate


def register_display(
    name: str,
    *,
    label: str,
    direction: Direction | None,
    kind: Kind = "scalar",
    fmt: str = ".3f",
    show: Collection[Surface] | None = None,
    description: str = "",
) -> MetricSpec:
    """Register a value shown with the metrics that ``evaluate_unlearning`` does not
    compute (the pipeline measures it: ``unlearn_seconds``, ``storage_bytes``, ...)."""
    spec = _spec(
        name, label=label, direction=direction, kind=kind, fmt=fmt, cost="cheap", needs=(),
        show=show, description=description, fn=None,
    )
    _REGISTRY[name] = spec
    return spec


def unregister_metric(name: str) -> MetricSpec:
    """Remove ``name`` (tests undo their registrations with it); returns what was removed."""
    try:
        return _REGISTRY.pop(name)
    except KeyError:
        raise MetricError(f"no metric {name!r} is registered") from None


def get_metric(name: str) -> MetricSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MetricError(f"unknown metric {name!r}; registered: {', '.join(_REGISTRY)}") from None


def registered_metrics(*, surface: Surface | None = None, computed: bool | None = None) -> tuple[MetricSpec, ...]:
    """Registered entries in registration order, optionally only those shown on ``surface``
    or only computed (``True``) / display-only (``False``) ones."""
    if surface is not None and surface not in SURFACES:
        raise ValueError(f"unknown surface {surface!r}; known: {', '.join(SURFACES)}")
    return tuple(
        s for s in _REGISTRY.values()
        if (surface is None or surface in s.show) and (computed is None or s.computed == computed)
    )


def metric_names(surface: Surface | None = None, *, computed: bool | None = None) -> tuple[str, ...]:
    return tuple(s.name for s in registered_metrics(surface=surface, computed=computed))


class MetricNames(Sequence[str]):
    """The names shown on one surface, read from the registry on every use.

    Consumers keep a module constant (``VERSION_METRICS = MetricNames("version")``) that
    templates and other modules may bind at import time; it still sees a metric registered
    later (a plugin, a test).
    """

    def __init__(self, surface: Surface) -> None:
        if surface not in SURFACES:
            raise ValueError(f"unknown surface {surface!r}; known: {', '.join(SURFACES)}")
        self.surface = surface

    def _names(self) -> tuple[str, ...]:
        return metric_names(self.surface)

    @property
    def specs(self) -> tuple[MetricSpec, ...]:
        return registered_metrics(surface=self.surface)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]  # it changes with the registry

    def __repr__(self) -> str:
        return f"MetricNames({self.surface!r}: {', '.join(self._names())})"


def compute_metrics(
    ctx: MetricContext, *, names: Collection[str] | None = None, expensive: bool = True
) -> dict[str, Any]:
    """Every computed metric whose inputs ``ctx`` holds, in registration order.

    ``names`` selects some (unknown ones raise :class:`MetricError`; display-only ones are
    ignored, having nothing to compute); ``expensive=False`` skips those that train.
    """
    wanted = None if names is None else {get_metric(n).name for n in names}
    out: dict[str, Any] = {}
    for spec in registered_metrics(computed=True):
        if wanted is not None and spec.name not in wanted:
            continue
        if (spec.cost == "expensive" and not expensive) or not spec.ready(ctx):
            continue
        assert spec.fn is not None
        out[spec.name] = spec.fn(ctx)
    return out
