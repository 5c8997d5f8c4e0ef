"""Stronger membership-inference attacks than the loss threshold of :mod:`.mia`.

``mia_auc`` thresholds the raw loss, which is dominated by how hard each example is: an
easy unseen test image has a lower loss than a hard trained one.

The logit-scaled confidence ``log(p_y / (1 - p_y))`` of the true class (the score of
LiRA and of the NeurIPS 2023 unlearning challenge) is the basis. A single global threshold
on it would rank examples exactly as the loss does (both are monotone in ``p_y``), so it
would give the same AUC as ``mia_auc``; what makes it stronger is comparing it per example
with models that never saw the example. The scaling makes it roughly Gaussian across
models, which is what that comparison assumes.

``mia_auc_lira``: offline LiRA (Carlini et al. 2022), as U-LiRA uses it for unlearning:
for each example, the logit-scaled confidences of a few *shadow* models that never trained
on it (OUT models, e.g. models trained on the retained data with other seeds) give a
per-example Gaussian; the attack score is how far above that Gaussian the candidate's
confidence lies. Per-example calibration removes the example-difficulty noise, so with a
handful of shadows it sees membership that the global threshold misses.

It reports the AUC of telling forget samples (positives) from unseen test samples;
0.5 means the attack cannot tell them apart, which is what retraining from scratch gives.

One variance model for both populations. With fewer than four shadows the per-example
variance cannot be estimated, and LiRA's "fixed variance" variant uses one global standard
deviation instead (Carlini et al., ``fix_variance``: the spread of the shadow confidences
over *all* target examples, members and non-members alike). Before, ``mia_auc_lira``
called :func:`lira_scores` once for the forget and once for the test examples, so each
population got a global deviation of its own. Those two differ (the forget examples are
a few hundred samples of a few subjects, the test set is thousands of every kind), and
dividing the two populations by different deviations shifts one set of scores against the
other: a candidate that is uniformly a little more (or less) confident than the shadows,
forget and test alike, got an AUC away from 0.5 although nothing tells its forget samples
from its test samples. Now :func:`shared_std` computes the one deviation over both
populations' shadow confidences and both are scored with it (``lira_scores(..., sigma=)``);
with four shadows or more each example keeps its own deviation, as before. Callers that
score two populations themselves (the benches) pass the shared deviation the same way.

The per-example *online* attack, with IN shadows as well as OUT shadows (U-LiRA), is
:mod:`unlearning_core.metrics.ulira`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from unlearning_core.metrics.outputs import Outputs, collect_outputs
from unlearning_core.metrics.registry import MetricContext, register_metric

#: Floor of the per-example standard deviation, so an example on which every shadow agrees
#: (often a saturated one) does not get an infinite score from a tiny difference.
MIN_STD = 1e-2


def logit_confidence(out: Outputs) -> np.ndarray:
    """``log(p_y) - log(1 - p_y)`` per example, computed from log-softmax for stability.

    ``log(1 - p_y)`` is the log-sum-exp of the other classes' log-probabilities, which stays
    finite when ``p_y`` rounds to 1 in float32 (where ``log(1 - p)`` would be ``-inf``).
    """
    if len(out) == 0:
        return np.empty(0, dtype=np.float64)
    logp = torch.log_softmax(out.logits.double(), dim=1)
    idx = out.labels.long().view(-1, 1)
    true = logp.gather(1, idx).squeeze(1)
    others = logp.scatter(1, idx, float("-inf")).logsumexp(dim=1)
    return (true - others).numpy()


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if len(pos) == 0 or len(neg) == 0:
        return None
    truth = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    return float(roc_auc_score(truth, np.concatenate([pos, neg])))


#: Fewer OUT shadows than this: one global deviation (LiRA's fixed variance), not per example.
PER_EXAMPLE_MIN_SHADOWS = 4


def _stack(shadows_out: Sequence[np.ndarray]) -> np.ndarray:
    if len(shadows_out) == 0:
        raise ValueError("LiRA needs at least one shadow model")
    return np.stack([np.asarray(s, dtype=np.float64) for s in shadows_out])


def shared_std(*populations: Sequence[np.ndarray]) -> float:
    """The one global deviation of LiRA's fixed-variance variant for several populations
    scored together (forget and test examples): the standard deviation of every shadow
    confidence of every population, floored at :data:`MIN_STD`. Each population is a list
    of per-shadow arrays, as :func:`lira_scores` takes them."""
    values = [_stack(p).ravel() for p in populations if len(p)]
    if not values:
        raise ValueError("LiRA needs at least one shadow model")
    return max(float(np.concatenate(values).std()), MIN_STD)


def lira_scores(
    target: np.ndarray, shadows_out: Sequence[np.ndarray], *, sigma: float | None = None
) -> np.ndarray:
    """Per-example z-score of ``target`` confidences against OUT shadow confidences.

    ``shadows_out`` holds one array per shadow model, aligned with ``target``. With fewer
    than four shadows the variance cannot be estimated per example, so one global deviation
    is used (the "fixed variance" variant of the LiRA paper, also its advice for few
    shadows): ``sigma`` when given, which must be the same for every population compared
    with these scores (:func:`shared_std` of all of them), else the deviation of these
    shadows' confidences alone (right only when this is the only population).
    """
    stack = _stack(shadows_out)
    if stack.shape[1:] != np.shape(target):
        raise ValueError(f"shadow confidences have shape {stack.shape[1:]}, target {np.shape(target)}")
    mu = stack.mean(axis=0)
    if len(shadows_out) < PER_EXAMPLE_MIN_SHADOWS:
        fixed = shared_std(shadows_out) if sigma is None else max(float(sigma), MIN_STD)
        sd = np.full_like(mu, fixed)
    else:
        sd = np.maximum(stack.std(axis=0, ddof=1), MIN_STD)
    return (np.asarray(target, dtype=np.float64) - mu) / sd


def mia_auc_lira(
    forget: Outputs,
    test: Outputs,
    shadow_forget: Sequence[Outputs],
    shadow_test: Sequence[Outputs],
) -> float | None:
    """AUC of offline LiRA telling forget from test samples.

    ``shadow_forget[i]`` / ``shadow_test[i]`` are shadow model i's outputs on the same forget
    and test samples; every shadow must have been trained without both sets.
    """
    if len(forget) == 0 or len(test) == 0:
        return None
    if len(shadow_forget) != len(shadow_test):
        raise ValueError("give each shadow model's outputs on both the forget and the test set")
    out_forget = [logit_confidence(s) for s in shadow_forget]
    out_test = [logit_confidence(s) for s in shadow_test]
    sigma = shared_std(out_forget, out_test)  # one variance model for both populations
    pos = lira_scores(logit_confidence(forget), out_forget, sigma=sigma)
    neg = lira_scores(logit_confidence(test), out_test, sigma=sigma)
    return _auc(pos, neg)


@register_metric(
    "mia_auc_lira", label="MIA AUC (LiRA)", direction="retrain", needs=("shadow_models",),
    show=("report", "compare"),
)
def _mia_auc_lira(ctx: MetricContext) -> float | None:
    """Offline LiRA AUC, forget vs test samples, against the context's OUT shadow models
    (computed only when the caller trained some: they must never have seen either set)."""
    shadows = ctx.shadow_models or ()
    forget = ctx.forget_samples
    return mia_auc_lira(
        ctx.forget, ctx.test,
        [collect_outputs(m, forget, device=ctx.device) for m in shadows],
        [collect_outputs(m, ctx.dataset.test, device=ctx.device) for m in shadows],
    )
