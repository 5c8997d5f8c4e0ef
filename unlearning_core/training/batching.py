"""Which training samples go into which batch, epoch by epoch.

The plan is computed up front (seeded) instead of by a DataLoader so that the run can
store the exact sample -> batches index that unlearning needs, and so that given samples
can be *concentrated* into a share of the batches. Concentration models a subject whose
data arrived during part of training; it is also the setting in which amnesiac
class-forgetting works at all (with uniform shuffling every batch holds the class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from unlearning_core.errors import RunError

BatchPlan = list[list[np.ndarray]]  # [epoch][batch] -> sample positions


@dataclass(frozen=True)
class Concentration:
    """Put ``positions`` into a share ``share`` of each epoch's batches."""

    positions: np.ndarray
    share: float

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise RunError(f"concentration share must be in (0, 1], got {self.share}")
        if len(self.positions) == 0:
            raise RunError("concentration names no samples")


CONCENTRATE_HELP = "CLASS:SHARE such as 3:0.2, or subjects=ID,ID,...:SHARE such as subjects=subject-0001,subject-0002:0.1"


def parse_concentrate(spec: str) -> tuple[int | None, list[str] | None, float]:
    """``"K:Q"`` -> (class K, None, Q); ``"subjects=A,B:Q"`` -> (None, [A, B], Q).

    A clear error otherwise. The share comes after the last colon, so subject ids may not
    contain one.
    """
    what, sep, share_text = spec.rpartition(":")
    try:
        if not sep:
            raise ValueError
        share = float(share_text)
        if what.startswith("subjects="):
            subjects = [s.strip() for s in what.removeprefix("subjects=").split(",") if s.strip()]
            if not subjects:
                raise ValueError
            return None, subjects, share
        return int(what), None, share
    except ValueError:
        raise RunError(f"--concentrate takes {CONCENTRATE_HELP}; got {spec!r}") from None


def concentration_of(
    labels: np.ndarray,
    subject_ids: list[str | None],
    *,
    klass: int | None,
    subjects: list[str] | None,
    share: float | None,
    allow_missing: bool = False,
) -> Concentration | None:
    """The samples a run's ``concentrate_*`` settings name, as positions (None: none set).

    Training refuses settings that name missing samples. Retraining without the forget set
    passes ``allow_missing``: the named samples may be the ones forgotten, and whatever is
    left of them keeps its place (None when nothing is).
    """
    if klass is None and not subjects:
        return None
    if klass is not None and subjects:
        raise RunError("concentrate a class or subjects, not both")
    if klass is not None:
        positions = np.flatnonzero(labels == klass).astype(np.int64)
        what = f"class {klass}"
    else:
        wanted = set(subjects or ())
        positions = np.asarray([i for i, s in enumerate(subject_ids) if s in wanted], dtype=np.int64)
        missing = wanted - {subject_ids[i] for i in positions}
        if missing and len(positions) and not allow_missing:
            raise RunError(f"--concentrate names subjects with no samples: {', '.join(sorted(missing)[:5])}")
        what = f"subjects {', '.join(sorted(wanted)[:3])}{'...' if len(wanted) > 3 else ''}"
    if len(positions) == 0:
        if allow_missing:
            return None
        raise RunError(f"--concentrate names {what}, which has no samples")
    return Concentration(positions, share or 1.0)


def plan_batches(
    n_samples: int,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    concentrate: Concentration | None = None,
) -> BatchPlan:
    """Seeded batch plan; every sample sits in exactly one batch per epoch."""
    if n_samples < 1:
        raise RunError("cannot train on an empty dataset")
    if epochs < 1 or batch_size < 1:
        raise RunError(f"epochs and batch size must be at least 1, got {epochs} and {batch_size}")
    rng = np.random.default_rng(seed)
    n_batches = math.ceil(n_samples / batch_size)
    sizes = np.full(n_batches, batch_size, dtype=np.int64)
    sizes[-1] = n_samples - batch_size * (n_batches - 1)
    plan: BatchPlan = []
    for _ in range(epochs):
        if concentrate is None:
            order = rng.permutation(n_samples)
            plan.append([order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)])
        else:
            plan.append(_concentrated_epoch(n_samples, sizes, concentrate, rng))
    return plan


def _concentrated_epoch(
    n_samples: int, sizes: np.ndarray, conc: Concentration, rng: np.random.Generator
) -> list[np.ndarray]:
    special = rng.permutation(np.unique(conc.positions))
    is_special = np.zeros(n_samples, dtype=bool)
    is_special[special] = True
    others = rng.permutation(np.flatnonzero(~is_special))
    n_batches = len(sizes)
    n_chosen = max(1, round(conc.share * n_batches))
    # Full-size batches first, so the short last batch is only chosen when every batch is.
    candidates = np.flatnonzero(sizes == sizes.max())
    if n_chosen > len(candidates):
        candidates = np.arange(n_batches)
    chosen = np.sort(rng.choice(candidates, size=min(n_chosen, len(candidates)), replace=False))
    capacity = int(sizes[chosen].sum())
    if len(special) > capacity:
        raise RunError(
            f"{len(special)} concentrated samples do not fit in {len(chosen)} batches "
            f"({capacity} slots); raise the share or the batch size"
        )
    # Spread the samples in proportion to batch size (never more than a batch holds).
    quota = len(special) * sizes[chosen] / capacity
    counts = np.floor(quota).astype(np.int64)
    shortfall = len(special) - int(counts.sum())
    counts[np.argsort(counts - quota, kind="stable")[:shortfall]] += 1
    per_batch = np.zeros(n_batches, dtype=np.int64)
    per_batch[chosen] = counts
    batches: list[np.ndarray] = []
    s_at = o_at = 0
    for b in range(n_batches):
        k = int(per_batch[b])
        rest = int(sizes[b]) - k
        batch = np.concatenate([special[s_at : s_at + k], others[o_at : o_at + rest]])
        s_at += k
        o_at += rest
        batches.append(rng.permutation(batch))
    return batches
