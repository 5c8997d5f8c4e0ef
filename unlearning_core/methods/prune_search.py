"""``--prune auto``: find, per request, the largest layer-wise pruning that still forgets.

Partial amnesiac trades forgetting for retained accuracy: the more of the stored updates
are pruned, the less of the other classes' learning is subtracted along with the forget
set, but past some pruning the forget set is no longer forgotten. Where that point lies
depends on the model, the data and how many batches held the forget set, so a fixed
schedule is either too timid or too weak. The search finds it at unlearning time.

The schedule family keeps the depth interpolation: the first layer's share stays fixed (the
request's ``prune_first``, else the run's, else 0.99) and the last layer's share ``L`` is
searched between a floor and a ceiling. Larger ``L`` prunes every layer but the first at
least as much (nested masks), so "forgets enough" holds for small ``L`` and fails past a
point; bisection finds the largest ``L`` that still holds.

Pruning can only go UP from what was recorded: a run recorded with ``--record partial``
never stored the entries its masks dropped, so the floor is the run's own ``prune_last``
(and the first layer's share cannot be below the run's ``prune_first``). A full recording
has floor 0.

Criteria ("forgets enough"):

- ``forget_acc`` (class forgetting): accuracy on the forget set at most ``max_forget_acc``
  (default 0, the seed's criterion);
- ``mia_auc`` (a subject's samples): the loss attack's AUC at most ``mia_target +
  mia_tolerance`` (0.5 + 0.02 by default, or a reference such as the retrained model's
  AUC). Heavier pruning leaves more of the samples' influence, which raises the AUC; the
  probe also records whether the AUC lies within the tolerance on both sides.

Every probe (schedule, pruned share, value, verdict) is returned, so the audit trail shows
how the pruning was chosen; the number of probes is bounded by ``max_probes``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from unlearning_core.data import Dataset
from unlearning_core.errors import MethodError
from unlearning_core.metrics.classification import accuracy
from unlearning_core.metrics.mia import mia_auc
from unlearning_core.metrics.outputs import collect_outputs
from unlearning_core.recording import PruneSchedule

Criterion = Literal["forget_acc", "mia_auc"]
CRITERIA: tuple[str, ...] = ("forget_acc", "mia_auc")


@dataclass(frozen=True)
class PruneSearch:
    """What ``--prune auto`` aims for and how hard it may look."""

    criterion: Criterion | None = None  # None: forget_acc for whole classes, else mia_auc
    max_forget_acc: float = 0.0
    mia_target: float = 0.5
    mia_tolerance: float = 0.02
    max_probes: int = 8
    resolution: float = 0.01  # stop bisecting once the bracket on L is this narrow
    ceiling: float = 0.99  # the most pruning tried at the last layer

    def __post_init__(self) -> None:
        if self.criterion is not None and self.criterion not in CRITERIA:
            raise MethodError(f"--prune auto: criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if self.max_probes < 2:
            raise MethodError(f"--prune auto needs at least 2 probes, got {self.max_probes}")
        if not 0.0 <= self.max_forget_acc <= 1.0:
            raise MethodError(f"--prune auto: max forget accuracy must be in [0, 1], got {self.max_forget_acc}")
        if not 0.0 <= self.mia_target <= 1.0 or not 0.0 <= self.mia_tolerance <= 0.5:
            raise MethodError(
                f"--prune auto: mia target must be in [0, 1] and tolerance in [0, 0.5], "
                f"got {self.mia_target} and {self.mia_tolerance}"
            )
        if not 0.0 < self.resolution < 1.0 or not 0.0 <= self.ceiling < 1.0:
            raise MethodError("--prune auto: resolution must be in (0, 1) and ceiling in [0, 1)")


@dataclass(frozen=True)
class Probe:
    prune_first: float
    prune_last: float
    pruned_share: float  # share of all update entries (parameter-weighted) pruned away
    value: float | None  # forget_acc or mia_auc of the candidate
    enough: bool  # forgets enough (the bisection's predicate)
    within_tolerance: bool  # mia_auc: |value - target| <= tolerance; forget_acc: == enough


@dataclass
class SearchResult:
    criterion: Criterion
    chosen: Probe
    probes: list[Probe] = field(default_factory=list)
    floor: float = 0.0
    ceiling: float = 0.99
    met: bool = True  # False: even the least pruning allowed does not forget enough
    state: Any = None  # the chosen candidate's weights (not serialised)

    def describe(self) -> dict[str, Any]:
        """The audit-trail record: criterion, bounds, every probe, the choice."""
        return {
            "criterion": self.criterion,
            "searched": "prune_last (first-layer share fixed, depth interpolation kept)",
            "floor": self.floor,
            "ceiling": self.ceiling,
            "note": "pruning can only go up from the recorded masks (nested masks)",
            "met": self.met,
            "chosen": asdict(self.chosen),
            "probes": [asdict(p) for p in self.probes],
        }


def pruned_share(schedule: PruneSchedule, shapes: dict[str, list[int]]) -> float:
    """Parameter-weighted share of update entries the schedule prunes."""
    shares = schedule.tensor_shares(shapes)
    sizes = {n: _numel(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    return sum(shares[n] * sizes[n] for n in shapes) / total if total else 0.0


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def search_prune(
    *,
    first: float,
    floor: float,
    search: PruneSearch,
    criterion: Criterion,
    shapes: dict[str, list[int]],
    candidate: Callable[[PruneSchedule], Any],
    measure: Callable[[Any], float | None],
    skip: int = 0,
) -> SearchResult:
    """Bisect ``prune_last`` in [floor, ceiling] for the largest pruning that forgets enough.

    ``candidate(schedule)`` builds the unlearned state for a schedule; ``measure(state)``
    returns the criterion's value (``None`` counts as not enough). Probes: the floor, then
    the ceiling, then midpoints, at most ``search.max_probes`` in all.
    """
    ceiling = max(floor, search.ceiling)

    def verdict(value: float | None) -> tuple[bool, bool]:
        if value is None:
            return False, False
        if criterion == "forget_acc":
            ok = value <= search.max_forget_acc + 1e-12
            return ok, ok
        return (
            value <= search.mia_target + search.mia_tolerance,
            abs(value - search.mia_target) <= search.mia_tolerance,
        )

    probes: list[Probe] = []
    states: dict[float, Any] = {}

    def probe(last: float, *, keep: bool = False) -> bool:
        schedule = PruneSchedule(first, last, skip=skip)
        state = candidate(schedule)
        value = measure(state)
        enough, within = verdict(value)
        probes.append(Probe(first, last, pruned_share(schedule, shapes), value, enough, within))
        if enough or keep:
            states.clear()  # keep only the best (largest enough) candidate in memory
            states[last] = state
        return enough

    def result(last: float, met: bool) -> SearchResult:
        chosen = next(p for p in reversed(probes) if p.prune_last == last)
        return SearchResult(criterion, chosen, probes, floor, ceiling, met, states.get(last))

    if not probe(floor, keep=True):
        # Nothing lighter may be applied: the least pruning allowed, flagged as not met.
        return result(floor, False)
    if ceiling <= floor or probe(ceiling):
        return result(ceiling if ceiling > floor else floor, True)
    lo, hi = floor, ceiling
    while len(probes) < search.max_probes and hi - lo > search.resolution:
        mid = (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return result(lo, True)



def resolve_criterion(search: PruneSearch, labels: np.ndarray, forget_positions: np.ndarray) -> Criterion:
    """The request's criterion, else ``forget_acc`` when the forget set is whole classes
    (every training sample of each of its labels), else ``mia_auc``."""
    if search.criterion is not None:
        return search.criterion
    if len(forget_positions) == 0:
        return "mia_auc"
    whole = np.flatnonzero(np.isin(labels, np.unique(labels[forget_positions])))
    return "forget_acc" if np.array_equal(np.sort(forget_positions), whole) else "mia_auc"


def measurer(
    criterion: Criterion,
    build: Callable[[dict[str, torch.Tensor]], torch.nn.Module],
    dataset: Dataset,
    forget_positions: np.ndarray,
    device: torch.device,
) -> Callable[[dict[str, torch.Tensor]], float | None]:
    """``state -> value`` of the criterion: forget-set accuracy, or the loss attack's AUC
    (forget set vs the unseen test set), as :mod:`unlearning_core.metrics` computes them."""
    forget = dataset.train.subset(forget_positions)

    def measure(state: dict[str, torch.Tensor]) -> float | None:
        model = build(state)
        out = collect_outputs(model, forget, device=device)
        if criterion == "forget_acc":
            return accuracy(out) if len(out) else None
        return mia_auc(out, collect_outputs(model, dataset.test, device=device))

    return measure
