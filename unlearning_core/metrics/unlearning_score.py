"""The NeurIPS 2023 machine unlearning challenge score, as a pure function of confidences.

Triantafillou et al., "NeurIPS 2023 - Machine Unlearning" (Kaggle), scoring code
google-deepmind/unlearning_evaluation (``metric.py``, ``main.py``); the definition is in the
challenge's technical note "Machine Unlearning Metric". The game: run the unlearning
algorithm many times from the *same* original model (its own randomness only) and retrain
from scratch many times (other seeds); an algorithm forgets example ``x`` to the extent that
``x``'s logit-scaled confidence under the unlearned models cannot be told from its
confidence under the retrained ones.

Per forget example:

1. every decision rule of the challenge's two families is tried: a single threshold
   (``c >= t`` says the population with the larger median) and a double threshold
   (``l <= c <= r`` says the peakier population, the one with the smaller range);
2. each rule's false-positive and false-negative rates give an epsilon at ``delta``,
   ``max(log(1 - delta - FPR) - log FNR, log(1 - delta - FNR) - log FPR)`` clipped at 0
   (the smallest epsilon an (epsilon, delta) guarantee would need to allow that test); the
   example's epsilon is the largest over the rules;
3. the epsilon is turned into points by buckets of width 0.5: ``[0, 0.5)`` earns 1,
   ``[0.5, 1)`` 1/2, each next bucket half the last (``2 ** -n``) up to
   ``ceil(log(N - 1))`` for ``N`` unlearned models (the largest epsilon ``N`` samples can
   resolve), beyond which it earns 0.

The forgetting quality ``F`` is the mean of the points over the forget set, and the final
score ``F * (retain acc unlearned / retrained) * (test acc unlearned / retrained)`` (means
over the models, not capped at 1, as ``main.py`` computes it).

As in ``metric.py``: a rule with ``FPR = FNR = 0`` (perfect separation) gives an infinite
epsilon; a rule with exactly one of them 0 is discarded (taken as too few samples); when
one population's range is under 1% of the other's, the example gets the cap (50) outright
(a very peaky distribution, e.g. a deterministic method run from one original model, is
distinguishable however the thresholds fall); epsilons are clipped to ``[0, 50]``.

One deliberate difference: ``metric.py`` scans thresholds on a grid (100 per unit, on a
GPU; the double threshold's right end in ``[min + w - 2, max + 2]`` of the peakier
population and its width within 2 of that population's range ``w``). Here the same rules
are taken at the grid's limit, every threshold in those ranges, computed exactly from the
data points (a rule's rates change only there): no rule of the grid is missed, so an
example's epsilon is at least the grid's (on random inputs, equal up to the grid's
resolution: a few hundredths more on average), on a CPU in milliseconds per example.
``family="all"`` tries every half-line and interval instead, either population inside: a
stricter judge, but with few models more prone to chance separations in the tails (with 32
models of each kind and identical distributions, ``F`` is about 0.1 instead of 0.18).

With few models ``F`` is low even for a perfect method: the max over many rules of rates
estimated from 32 samples exceeds 0.5 by chance for most examples. So a method's score is
read against retraining's own, measured the same way (a second set of retrained models in
place of the unlearned ones), not against 1.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The challenge's delta and epsilon cap.
DELTA = 1e-5
EPSILON_CAP = 50.0
#: Width of an epsilon bucket; each bucket earns half the points of the one before.
BUCKET_WIDTH = 0.5
#: A population whose range is below this share of the other's is "peaky" (epsilon = cap).
PEAKY_RATIO = 0.01


def epsilon_from_rates(fpr: Any, fnr: Any, delta: float = DELTA) -> np.ndarray:
    """Epsilon of one test with these error rates, as ``metric.py``: the larger of
    ``log(1 - delta - FPR) - log FNR`` and ``log(1 - delta - FNR) - log FPR``, clipped at 0.

    ``FPR = FNR = 0`` gives ``inf``; exactly one of them 0 gives ``nan`` (the challenge
    discards such a test); so does a rate above ``1 - delta`` in both terms. Works
    elementwise on arrays.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    fnr = np.asarray(fnr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1.0 - delta - fpr) - np.log(fnr)
        b = np.log(1.0 - delta - fnr) - np.log(fpr)
        both = np.where(np.isnan(a), b, np.where(np.isnan(b), a, np.maximum(a, b)))
        eps = np.clip(both, 0.0, None)
    eps = np.where((fpr == 0) & (fnr == 0), np.inf, eps)
    eps = np.where((fpr == 0) ^ (fnr == 0), np.nan, eps)
    return eps


def _runs(values: np.ndarray, is_u: np.ndarray) -> dict[str, np.ndarray]:
    """The pooled sorted values of one example and, for every run ``v_i..v_j`` of them
    (``i <= j``, ends at tie-group boundaries, so that thresholds can cut exactly there),
    how many unlearned and retrained values it holds; unrealisable runs are masked out."""
    order = np.argsort(values, kind="stable")
    v, lab = values[order], is_u[order]
    m = len(v)
    cum_u = np.concatenate([[0.0], np.cumsum(lab)])
    cum_r = np.concatenate([[0.0], np.cumsum(1.0 - lab)])
    start_ok = np.ones(m, dtype=bool)
    start_ok[1:] = v[1:] != v[:-1]
    end_ok = np.ones(m, dtype=bool)
    end_ok[:-1] = v[:-1] != v[1:]
    i = np.arange(m)[:, None]
    j = np.arange(m)[None, :]
    valid = (j >= i) & start_ok[:, None] & end_ok[None, :]
    return {
        "v": v,
        "valid": valid,
        "u_in": cum_u[j + 1] - cum_u[i],
        "r_in": cum_r[j + 1] - cum_r[i],
    }


def _challenge_rules(u: np.ndarray, r: np.ndarray, runs: dict[str, np.ndarray], double: bool) -> np.ndarray:
    """Which runs are the decision sets of the challenge's rules, as ``metric.py`` scans
    them on its grid (taken here at the grid's limit, every threshold in its range):

    - single threshold: ``c >= t`` says the population with the larger median (runs that
      end at the highest value);
    - double threshold: ``l <= c <= r`` says the peakier population (the smaller range,
      width ``w``), with ``r`` in ``[min + w - 2, max + 2]`` of that population and
      ``r - l`` within 2 of ``w``.

    Returns ``[runs, 2]`` booleans: the run's rule exists with the unlearned population as
    the one "inside" (column 0) or the retrained one (column 1)."""
    v, valid = runs["v"], runs["valid"]
    m = len(v)
    out = np.zeros((m, m, 2), dtype=bool)
    # metric.py: the retrained population is positive only if its median is larger.
    u_larger = not bool(np.median(r) > np.median(u))
    single = valid.copy()
    single[:, :-1] = False  # {c >= v_i}: runs reaching the top value
    out[:, :, 0 if u_larger else 1] |= single
    if not double:
        return out
    # The peakier population: the positive one unless its range is at least the other's.
    pos_is_u = u_larger
    pos, neg = (u, r) if pos_is_u else (r, u)
    if np.ptp(pos) >= np.ptp(neg):
        pos_is_u = not pos_is_u
        pos, neg = neg, pos
    w, buffer = float(np.ptp(pos)), 2.0
    r_lo, r_hi = float(pos.min()) + w - buffer, float(pos.max()) + buffer
    before = np.concatenate([[-np.inf], v[:-1]])  # v_{i-1}
    after = np.concatenate([v[1:], [np.inf]])  # v_{j+1}
    i = np.arange(m)[:, None]
    j = np.arange(m)[None, :]
    # r must lie in [v_j, v_{j+1}) and in [r_lo, r_hi]; l = r - width in (v_{i-1}, v_i] with
    # width in [w - 2, w + 2], i.e. r in (v_{i-1} + w - 2, v_i + w + 2].
    lo = np.maximum(np.maximum(v[j], r_lo), before[i] + w - buffer)
    hi = np.minimum(np.minimum(after[j], r_hi), v[i] + w + buffer)
    strict = (after[j] == hi) | (before[i] + w - buffer == lo)
    feasible = valid & np.where(strict, lo < hi, lo <= hi)
    out[:, :, 0 if pos_is_u else 1] |= feasible
    return out


def example_epsilon(
    unlearned: Sequence[float] | np.ndarray,
    retrained: Sequence[float] | np.ndarray,
    *,
    delta: float = DELTA,
    double: bool = True,
    family: str = "challenge",
) -> float:
    """Epsilon of one example: the strongest rule telling its confidences under the
    unlearned models from those under the retrained ones (see the module docstring).

    ``family="challenge"``: the challenge's rules (:func:`_challenge_rules`); ``"all"``:
    every half-line and every interval, either population inside, a superset (stricter, and
    with few models more prone to chance separations in the tails). ``double=False`` keeps
    only the single-threshold rules.
    """
    if family not in ("challenge", "all"):
        raise ValueError(f"family must be 'challenge' or 'all', got {family!r}")
    u = np.asarray(unlearned, dtype=np.float64).ravel()
    r = np.asarray(retrained, dtype=np.float64).ravel()
    if len(u) == 0 or len(r) == 0:
        raise ValueError("an epsilon needs confidences from at least one model of each kind")
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(r))):
        raise ValueError("confidences must be finite")
    u_range, r_range = float(np.ptp(u)), float(np.ptp(r))
    largest, smallest = max(u_range, r_range), min(u_range, r_range)
    if largest == 0.0:  # two point masses: the same point, or perfectly told apart
        return 0.0 if u[0] == r[0] else EPSILON_CAP
    if smallest / largest < PEAKY_RATIO:
        return EPSILON_CAP
    runs = _runs(np.concatenate([u, r]), np.concatenate([np.ones(len(u)), np.zeros(len(r))]))
    if family == "challenge":
        rules = _challenge_rules(u, r, runs, double)
    else:
        ok = runs["valid"].copy()
        if not double:  # half-lines only: runs reaching the lowest or the highest value
            edge = np.zeros_like(ok)
            edge[0, :] = True
            edge[:, -1] = True
            ok &= edge
        rules = np.stack([ok, ok], axis=-1)
    nu, nr = float(len(u)), float(len(r))
    u_in, r_in = runs["u_in"], runs["r_in"]
    # Rules whose inside says "unlearned" (positives: the unlearned population): FPR =
    # retrained inside, FNR = unlearned outside; rules whose inside says "retrained" take the
    # retrained population as the positives (the epsilon formula is symmetric in the rates).
    a, b = rules[:, :, 0], rules[:, :, 1]
    fpr = np.concatenate([r_in[a] / nr, u_in[b] / nu])
    fnr = np.concatenate([1.0 - u_in[a] / nu, 1.0 - r_in[b] / nr])
    eps = epsilon_from_rates(fpr, fnr, delta)
    eps = eps[~np.isnan(eps)]
    if len(eps) == 0:
        return 0.0
    return float(np.clip(np.max(eps), 0.0, EPSILON_CAP))


def as_matrix(confs: Any, name: str) -> np.ndarray:
    """Per-model, per-example confidences as a float64 ``[models, examples]`` array (both
    judges take them so), or a ValueError naming the argument."""
    arr = np.asarray(confs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [models, examples], got shape {arr.shape}")
    return arr


def forget_epsilons(
    unlearned_confs: Any, retrained_confs: Any, *, delta: float = DELTA, family: str = "challenge"
) -> np.ndarray:
    """Per-example epsilons; both arguments are ``[models, examples]`` arrays of logit-scaled
    confidences (:func:`unlearning_core.metrics.logit_confidence`), same examples in order."""
    u = as_matrix(unlearned_confs, "unlearned_confs")
    r = as_matrix(retrained_confs, "retrained_confs")
    if u.shape[1] != r.shape[1]:
        raise ValueError(f"{u.shape[1]} examples under the unlearned models, {r.shape[1]} under the retrained")
    return np.array(
        [example_epsilon(u[:, i], r[:, i], delta=delta, family=family) for i in range(u.shape[1])]
    )


def max_epsilon(n_models: int) -> float:
    """The largest epsilon the bucket table resolves with ``n_models`` unlearned models:
    ``ceil(log(n_models - 1))``, the challenge's back-of-the-envelope bound."""
    if n_models < 3:
        raise ValueError("the score needs at least 3 unlearned models")
    return float(math.ceil(math.log(n_models - 1)))


def epsilon_points(epsilons: Any, n_models: int) -> np.ndarray:
    """Points per example: bucket ``k`` (``[k/2, (k+1)/2)``) earns ``2 ** -k``, for buckets
    that end at or below :func:`max_epsilon`; a larger epsilon earns 0."""
    eps = np.asarray(epsilons, dtype=np.float64)
    top = max_epsilon(n_models)
    n_buckets = math.floor(top / BUCKET_WIDTH + 1e-9)
    bucket = np.floor(eps / BUCKET_WIDTH)
    points = np.where(bucket < n_buckets, 2.0 ** (-np.minimum(bucket, 1074)), 0.0)
    return np.where(np.isnan(eps), 0.0, points)


def forget_quality(
    unlearned_confs: Any, retrained_confs: Any, *, delta: float = DELTA, family: str = "challenge"
) -> float:
    """The challenge's forgetting quality ``F`` in ``[0, 1]``: mean points over examples."""
    u = as_matrix(unlearned_confs, "unlearned_confs")
    eps = forget_epsilons(u, retrained_confs, delta=delta, family=family)
    return float(epsilon_points(eps, u.shape[0]).mean())


def _mean(x: Any) -> float:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError("accuracies must be finite and not empty")
    return float(arr.mean())


@dataclass(frozen=True)
class UnlearningScore:
    """The challenge's score and its parts (``to_dict`` for a result file)."""

    score: float
    forget_quality: float
    retain_ratio: float
    test_ratio: float
    n_unlearned: int
    n_retrained: int
    n_examples: int
    max_epsilon: float
    delta: float
    epsilons: np.ndarray = field(repr=False)
    points: np.ndarray = field(repr=False)
    forget_quality_ci: tuple[float, float] | None = None

    def to_dict(self, *, per_example: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "score": self.score,
            "forget_quality": self.forget_quality,
            "forget_quality_ci": list(self.forget_quality_ci) if self.forget_quality_ci else None,
            "retain_ratio": self.retain_ratio,
            "test_ratio": self.test_ratio,
            "n_unlearned": self.n_unlearned,
            "n_retrained": self.n_retrained,
            "n_examples": self.n_examples,
            "max_epsilon": self.max_epsilon,
            "delta": self.delta,
            "epsilon_median": float(np.median(self.epsilons)),
            "epsilon_histogram": epsilon_histogram(self.epsilons, self.max_epsilon),
        }
        if per_example:
            out["epsilons"] = [float(e) for e in self.epsilons]
        return out


def epsilon_histogram(epsilons: Any, top: float) -> dict[str, int]:
    """How many examples fall in each bucket (``"0.0-0.5"``, ...), and beyond the table."""
    eps = np.asarray(epsilons, dtype=np.float64)
    out: dict[str, int] = {}
    edges = np.arange(0.0, top + 1e-9, BUCKET_WIDTH)
    for lo, hi in itertools.pairwise(edges):
        out[f"{lo:.1f}-{hi:.1f}"] = int(((eps >= lo) & (eps < hi)).sum())
    out[f">={top:.1f}"] = int((eps >= top).sum())
    return out


def unlearning_score(
    unlearned_confs: Any,
    retrained_confs: Any,
    *,
    unlearned_retain_acc: Any,
    retrained_retain_acc: Any,
    unlearned_test_acc: Any,
    retrained_test_acc: Any,
    delta: float = DELTA,
    family: str = "challenge",
    n_boot: int = 0,
    seed: int = 0,
) -> UnlearningScore:
    """The NeurIPS 2023 unlearning challenge's final score.

    ``unlearned_confs`` / ``retrained_confs``: ``[models, examples]`` logit-scaled
    confidences of the forget examples under each unlearned / retrained model (all unlearned
    models from one original). Accuracies: one per model (or already averaged); their means
    make the utility ratios. ``n_boot`` > 0 adds a percentile 95% interval of ``F`` from
    resampling the forget examples. ``family``: the rules tried (:func:`example_epsilon`).
    """
    u = as_matrix(unlearned_confs, "unlearned_confs")
    r = as_matrix(retrained_confs, "retrained_confs")
    eps = forget_epsilons(u, r, delta=delta, family=family)
    points = epsilon_points(eps, u.shape[0])
    quality = float(points.mean())
    retain_ratio = _mean(unlearned_retain_acc) / _mean(retrained_retain_acc)
    test_ratio = _mean(unlearned_test_acc) / _mean(retrained_test_acc)
    ci = None
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(points), size=(n_boot, len(points)))
        draws = points[idx].mean(axis=1)
        ci = (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
    return UnlearningScore(
        score=quality * retain_ratio * test_ratio,
        forget_quality=quality,
        retain_ratio=retain_ratio,
        test_ratio=test_ratio,
        n_unlearned=int(u.shape[0]),
        n_retrained=int(r.shape[0]),
        n_examples=int(u.shape[1]),
        max_epsilon=max_epsilon(u.shape[0]),
        delta=delta,
        epsilons=eps,
        points=points,
        forget_quality_ci=ci,
    )
