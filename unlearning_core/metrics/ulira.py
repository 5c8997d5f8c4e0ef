"""U-LiRA: the per-example online likelihood-ratio attack on unlearning.

Hayes, Shumailov, Triantafillou, Khalifa and Papernot (2024), "Inexact Unlearning Needs
More Careful Evaluations to Avoid a False Sense of Privacy". The attack Carlini et al.'s
LiRA makes against training (is example ``x`` in the training set?) is turned on
unlearning: was ``x`` trained on and then unlearned, or never trained on at all?

For each target example the attacker has shadow models of both kinds:

- IN: trained with ``x`` and then put through the unlearning method,
- OUT: trained without ``x`` (retrained from scratch on the retained data),

and fits one Gaussian to ``x``'s logit-scaled confidence
(:func:`~unlearning_core.metrics.logit_confidence`) under each kind. The attack's score of
a candidate model on ``x`` is the log likelihood ratio
``log N(c; mu_in, sd_in) - log N(c; mu_out, sd_out)`` of its confidence ``c``. Per-example
Gaussians remove the difficulty of each example, which a global threshold cannot. The
attack's quality is read off its ROC over (model, example) pairs: positives are held-out
unlearned models, negatives held-out retrained models; AUC 0.5 and TPR = FPR at every
threshold mean the method's output cannot be told from retraining on these examples. As
Carlini et al. insist, the TPR at a low FPR (1%, 0.1%) is what shows a confident leak of a
few examples, which an AUC near 0.5 can hide.

:func:`ulira` runs the whole evaluation from two ``[models, examples]`` confidence matrices,
cross-fitting: the models of each kind are split into ``folds`` groups, each group is
attacked with Gaussians fitted on the other groups, and the scores of all groups are pooled.
Intervals come from a bootstrap that redraws both the models (within each fold) and the
examples and reruns the attack: with a few dozen models of each kind, which models happened
to be trained moves the AUC more than which examples were erased.

:func:`online_lira_scores` is the attack itself and takes a membership mask instead of two
separate populations, so the same code serves a cache of shadows trained on random halves
of the data (each example is IN for about half of them, OUT for the rest; Carlini et al.'s
online LiRA): that is the form a service can keep per dataset and reuse for every erasure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from unlearning_core.metrics.mia_lira import (
    MIN_STD,
    PER_EXAMPLE_MIN_SHADOWS,
    lira_scores,
    logit_confidence,
    shared_std,
)
from unlearning_core.metrics.outputs import collect_outputs
from unlearning_core.metrics.registry import MetricContext, register_metric
from unlearning_core.metrics.unlearning_score import as_matrix as _matrix

#: The low false-positive rates the attack reports its TPR at.
FPRS = (0.01, 0.001)


def gaussian_fit(
    confs: Any, mask: Any | None = None, *, min_std: float = MIN_STD, fixed_variance: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation of ``confs`` (``[models, examples]``), over the
    models where ``mask`` is true (all when None).

    The deviation is per example (``ddof=1``) when every example has at least
    :data:`~unlearning_core.metrics.mia_lira.PER_EXAMPLE_MIN_SHADOWS` models, else one
    global deviation over all entries (LiRA's fixed variance); ``fixed_variance`` forces
    either. Floored at ``min_std``. An example with no model gets ``nan``.
    """
    c = _matrix(confs, "confs")
    m = np.ones_like(c, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if m.shape != c.shape:
        raise ValueError(f"mask has shape {m.shape}, confidences {c.shape}")
    counts = m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(m, c, 0.0).sum(axis=0) / counts
        if fixed_variance is None:
            fixed_variance = bool(counts.size == 0 or counts.min() < PER_EXAMPLE_MIN_SHADOWS)
        if fixed_variance:
            sd = np.full_like(mu, max(float(c[m].std()) if m.any() else 0.0, min_std))
        else:
            dev = np.where(m, c - mu, 0.0)
            sd = np.sqrt((dev**2).sum(axis=0) / (counts - 1))
            sd = np.maximum(np.nan_to_num(sd, nan=0.0), min_std)
    mu = np.where(counts > 0, mu, np.nan)
    return mu, np.where(counts > 0, sd, np.nan)


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2.0 * np.pi)


def online_lira_scores(
    target: Any,
    shadow_confs: Any,
    in_mask: Any,
    *,
    min_std: float = MIN_STD,
    fixed_variance: bool | None = None,
) -> np.ndarray:
    """Log likelihood ratio IN vs OUT of each ``target`` confidence.

    ``target``: ``[examples]`` or ``[targets, examples]`` confidences of the model(s)
    attacked; ``shadow_confs``: ``[shadows, examples]``; ``in_mask``: same shape, true where
    the shadow is IN for the example (trained with it; for U-LiRA also unlearned). Higher
    = more like IN. Examples lacking IN or OUT shadows score ``nan``.
    """
    shadows = _matrix(shadow_confs, "shadow_confs")
    mask = np.asarray(in_mask, dtype=bool)
    t = np.asarray(target, dtype=np.float64)
    if t.shape[-1] != shadows.shape[1]:
        raise ValueError(f"target has {t.shape[-1]} examples, shadows {shadows.shape[1]}")
    mu_in, sd_in = gaussian_fit(shadows, mask, min_std=min_std, fixed_variance=fixed_variance)
    mu_out, sd_out = gaussian_fit(shadows, ~mask, min_std=min_std, fixed_variance=fixed_variance)
    return _log_normal(t, mu_in, sd_in) - _log_normal(t, mu_out, sd_out)


def lira_log_ratio(
    target: Any, in_confs: Any, out_confs: Any, *, min_std: float = MIN_STD,
    fixed_variance: bool | None = None,
) -> np.ndarray:
    """:func:`online_lira_scores` with the IN and OUT shadows given apart (``[models,
    examples]`` each; every shadow of ``in_confs`` is IN for every example)."""
    a, b = _matrix(in_confs, "in_confs"), _matrix(out_confs, "out_confs")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"IN shadows cover {a.shape[1]} examples, OUT shadows {b.shape[1]}")
    mask = np.concatenate([np.ones_like(a, dtype=bool), np.zeros_like(b, dtype=bool)])
    return online_lira_scores(
        target, np.concatenate([a, b]), mask, min_std=min_std, fixed_variance=fixed_variance
    )


# ---------------------------------------------------------------------------------------
# ROC summaries


def roc_auc(pos: Any, neg: Any) -> float:
    """Mann-Whitney AUC of scores ``pos`` (positives) over ``neg`` (ties count half)."""
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.sort(np.asarray(neg, dtype=np.float64).ravel())
    if len(p) == 0 or len(n) == 0:
        raise ValueError("an AUC needs positives and negatives")
    below = np.searchsorted(n, p, side="left")
    ties = np.searchsorted(n, p, side="right") - below
    return float((below + 0.5 * ties).sum() / (len(p) * len(n)))


def tpr_at_fpr(pos: Any, neg: Any, fpr: float) -> float:
    """The attack's TPR at the strictest threshold whose FPR is at most ``fpr``: the share of
    positives scoring above the ``floor(fpr * n_neg) + 1``-th highest negative (so at most
    ``floor(fpr * n_neg)`` negatives lie above it)."""
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.sort(np.asarray(neg, dtype=np.float64).ravel())[::-1]
    if len(p) == 0 or len(n) == 0:
        raise ValueError("a TPR needs positives and negatives")
    allowed = int(np.floor(fpr * len(n) + 1e-12))
    if allowed >= len(n):
        return 1.0
    return float((p > n[allowed]).mean())


def attack_summary(pos: Any, neg: Any, fprs: Sequence[float] = FPRS) -> dict[str, float]:
    """``auc`` and ``tpr_at_<fpr>`` (e.g. ``tpr_at_0.01``) of one attack (as :func:`roc_auc`
    and :func:`tpr_at_fpr`, sorting the negatives once)."""
    p = np.asarray(pos, dtype=np.float64).ravel()
    n = np.sort(np.asarray(neg, dtype=np.float64).ravel())
    if len(p) == 0 or len(n) == 0:
        raise ValueError("an attack summary needs positives and negatives")
    below = np.searchsorted(n, p, side="left")
    above_or_tied = np.searchsorted(n, p, side="right")
    out = {"auc": float((below + 0.5 * (above_or_tied - below)).sum() / (len(p) * len(n)))}
    for f in fprs:
        allowed = int(np.floor(f * len(n) + 1e-12))
        # positives above the (allowed + 1)-th highest negative
        out[f"tpr_at_{f:g}"] = 1.0 if allowed >= len(n) else float((p > n[len(n) - 1 - allowed]).mean())
    return out


def bootstrap_summary(
    pos: np.ndarray, neg: np.ndarray, *, n_boot: int, seed: int = 0, fprs: Sequence[float] = FPRS
) -> dict[str, list[float]]:
    """Percentile 95% intervals of :func:`attack_summary` from resampling the *examples*
    (columns of ``pos`` / ``neg``, ``[targets, examples]`` each), every resampled example
    keeping all its target models: examples, not model pairs, are the independent units."""
    p, n = _matrix(pos, "pos"), _matrix(neg, "neg")
    if p.shape[1] != n.shape[1]:
        raise ValueError("positives and negatives must cover the same examples")
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    k = p.shape[1]
    for _ in range(n_boot):
        idx = rng.integers(0, k, k)
        for key, v in attack_summary(p[:, idx], n[:, idx], fprs).items():
            draws.setdefault(key, []).append(v)
    return {key: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for key, v in draws.items()}


@dataclass(frozen=True)
class ULiraResult:
    """U-LiRA's summary (``to_dict`` for a result file)."""

    auc: float
    tpr: dict[float, float]
    auc_ci: tuple[float, float] | None
    tpr_ci: dict[float, tuple[float, float]]
    n_unlearned: int
    n_retrained: int
    n_examples: int
    folds: int
    positives: np.ndarray  # [unlearned targets, examples] log likelihood ratios
    negatives: np.ndarray  # [retrained targets, examples]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"auc": self.auc, "auc_ci": list(self.auc_ci) if self.auc_ci else None}
        for f, v in self.tpr.items():
            out[f"tpr_at_{f:g}"] = v
            ci = self.tpr_ci.get(f)
            out[f"tpr_at_{f:g}_ci"] = list(ci) if ci else None
        out.update(n_unlearned=self.n_unlearned, n_retrained=self.n_retrained,
                   n_examples=self.n_examples, folds=self.folds)
        return out


def _groups(n: int, folds: int) -> list[np.ndarray]:
    return [np.arange(n)[i::folds] for i in range(folds)]


def _cross_fit(
    u: np.ndarray, r: np.ndarray, gus: list[np.ndarray], grs: list[np.ndarray], kw: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every model against Gaussians fitted on the other folds' models.
    ``gus`` / ``grs``: per fold, the rows of ``u`` / ``r`` it holds (possibly repeated)."""
    pos, neg = [], []
    for i, (gu, gr) in enumerate(zip(gus, grs, strict=True)):
        fit_in = u[np.concatenate(gus[:i] + gus[i + 1 :])]
        fit_out = r[np.concatenate(grs[:i] + grs[i + 1 :])]
        pos.append(lira_log_ratio(u[gu], fit_in, fit_out, **kw))
        neg.append(lira_log_ratio(r[gr], fit_in, fit_out, **kw))
    return np.concatenate(pos), np.concatenate(neg)


def _centred_interval(estimate: float, draws: np.ndarray) -> list[float]:
    """The bootstrap's 95% spread around its median, moved onto the estimate (clipped to
    ``[0, 1]``). A resampled fold fits its Gaussians on fewer distinct models (a copy adds no
    information), so the draws of the attack are biased low; their percentiles alone can
    even miss the estimate with few models. The spread is kept, the shift is not."""
    lo, mid, hi = (float(np.percentile(draws, q)) for q in (2.5, 50.0, 97.5))
    return [max(0.0, estimate - (mid - lo)), min(1.0, estimate + (hi - mid))]


def ulira(
    unlearned_confs: Any,
    retrained_confs: Any,
    *,
    folds: int = 2,
    n_boot: int = 1000,
    seed: int = 0,
    fprs: Sequence[float] = FPRS,
    min_std: float = MIN_STD,
    fixed_variance: bool | None = None,
    resample: str = "models+examples",
) -> ULiraResult:
    """U-LiRA from the confidences of the same examples under unlearned models (IN: trained
    with the examples, then unlearned) and retrained ones (OUT), ``[models, examples]``.

    Models of each kind are dealt round-robin into ``folds`` groups; group ``g``'s models are
    the attacked targets of a fit on the other groups (cross-fitting: no model is both a
    shadow and a target of the same fit). With 32 models of each kind and 2 folds, each
    example's Gaussians come from 16 shadows of each kind, and 32 x examples pairs of each
    kind are attacked.

    Intervals (``n_boot`` > 0): ``resample="models+examples"`` redraws, per bootstrap sample,
    the models of each fold (with replacement, within the fold, so that a copy of a target
    never fits its own Gaussians) and the examples, and reruns the whole attack: the interval
    covers which models happened to be trained as well as which examples were erased (with 32
    models of each kind the first dominates). It is the draws' 95% spread centred on the
    estimate (:func:`_centred_interval`: duplicated shadows bias the draws low).
    ``"examples"`` resamples the examples only, keeping the scores: plain percentiles,
    narrower, and too narrow to compare two populations of models.
    """
    if resample not in ("models+examples", "examples"):
        raise ValueError(f"resample must be 'models+examples' or 'examples', got {resample!r}")
    u = _matrix(unlearned_confs, "unlearned_confs")
    r = _matrix(retrained_confs, "retrained_confs")
    if u.shape[1] != r.shape[1]:
        raise ValueError(f"{u.shape[1]} examples under the unlearned models, {r.shape[1]} under the retrained")
    if folds < 2 or min(len(u), len(r)) < folds:
        raise ValueError(f"{folds} folds need at least {max(folds, 2)} models of each kind")
    kw: dict[str, Any] = {"min_std": min_std, "fixed_variance": fixed_variance}
    gus, grs = _groups(len(u), folds), _groups(len(r), folds)
    pos_rows, neg_rows = _cross_fit(u, r, gus, grs, kw)
    pos, neg = np.empty_like(u), np.empty_like(r)
    pos[np.concatenate(gus)], neg[np.concatenate(grs)] = pos_rows, neg_rows
    summary = attack_summary(pos, neg, fprs)
    cis: dict[str, list[float]] = {}
    if n_boot > 0 and resample == "examples":
        cis = bootstrap_summary(pos, neg, n_boot=n_boot, seed=seed, fprs=fprs)
    elif n_boot > 0:
        rng = np.random.default_rng(seed)
        draws: dict[str, list[float]] = {}
        k = u.shape[1]
        for _ in range(n_boot):
            cols = rng.integers(0, k, k)
            bu = [rng.choice(g, size=len(g)) for g in gus]
            br = [rng.choice(g, size=len(g)) for g in grs]
            p, n = _cross_fit(u[:, cols], r[:, cols], bu, br, kw)
            for key, v in attack_summary(p, n, fprs).items():
                draws.setdefault(key, []).append(v)
        cis = {key: _centred_interval(summary[key], np.asarray(v)) for key, v in draws.items()}
    return ULiraResult(
        auc=summary["auc"],
        tpr={f: summary[f"tpr_at_{f:g}"] for f in fprs},
        auc_ci=tuple(cis["auc"]) if cis else None,  # type: ignore[arg-type]
        tpr_ci={f: tuple(cis[f"tpr_at_{f:g}"]) for f in fprs} if cis else {},  # type: ignore[misc]
        n_unlearned=len(u),
        n_retrained=len(r),
        n_examples=u.shape[1],
        folds=folds,
        positives=pos,
        negatives=neg,
    )


# ---------------------------------------------------------------------------------------
# The cheap form a service can compute per version


def offline_lira_tpr(
    forget_target: np.ndarray,
    test_target: np.ndarray,
    out_forget: Sequence[np.ndarray],
    out_test: Sequence[np.ndarray],
    fpr: float = FPRS[0],
) -> float | None:
    """TPR at ``fpr`` of offline LiRA telling forget from test samples (the attack of
    :func:`~unlearning_core.metrics.mia_auc_lira`, one variance model for both populations)."""
    if len(forget_target) == 0 or len(test_target) == 0:
        return None
    sigma = shared_std(out_forget, out_test)
    pos = lira_scores(forget_target, out_forget, sigma=sigma)
    neg = lira_scores(test_target, out_test, sigma=sigma)
    return tpr_at_fpr(pos, neg, fpr)


@register_metric(
    "mia_tpr_lira", label="LiRA TPR @ 1% FPR", direction="retrain", needs=("shadow_models",),
    fmt=".3f", show=("report", "compare"),
)
def _mia_tpr_lira(ctx: MetricContext) -> float | None:
    """TPR at 1% FPR of offline LiRA (forget vs test samples) against the context's OUT
    shadow models, e.g. a handful of cached references retrained without the forget and test
    sets: the low-FPR view of ``mia_auc_lira`` (a model retrained without the forget set
    gives about 0.01). The per-version form of the judge; the full one is bench/judge.py."""
    shadows = ctx.shadow_models or ()

    def confidences() -> tuple[list[np.ndarray], list[np.ndarray]]:
        forget = ctx.forget_samples
        return (
            [logit_confidence(collect_outputs(m, forget, device=ctx.device)) for m in shadows],
            [logit_confidence(collect_outputs(m, ctx.dataset.test, device=ctx.device)) for m in shadows],
        )

    out_forget, out_test = ctx.memo("lira_out_confidences", confidences)
    return offline_lira_tpr(logit_confidence(ctx.forget), logit_confidence(ctx.test), out_forget, out_test)
