"""Membership-inference scores of the kind unlearning papers report.

``mia_auc``: a threshold attack on the per-sample loss, telling forget samples (trained
on, then erased) from unseen test samples. 0.5 means the attack cannot tell them apart,
which is what a model retrained without the forget set gives.

``mia_efficacy``: as in the SalUn / l1-sparse evaluations, an attack model is fitted on
retain (member) vs test (non-member) outputs and then asked about the forget set; the
score is the share of forget samples it calls non-members (higher = more forgotten).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from unlearning_core.metrics.outputs import Outputs
from unlearning_core.metrics.registry import MetricContext, register_metric


def mia_auc(forget: Outputs, test: Outputs) -> float | None:
    if len(forget) == 0 or len(test) == 0:
        return None
    scores = -torch.cat([forget.losses, test.losses]).numpy()
    truth = np.concatenate([np.ones(len(forget)), np.zeros(len(test))])
    return float(roc_auc_score(truth, scores))


def _features(out: Outputs) -> np.ndarray:
    probs = out.probabilities.clamp_min(1e-12)
    entropy = -(probs * probs.log()).sum(dim=1)
    confidence = probs.max(dim=1).values
    return torch.stack([out.losses, entropy, confidence], dim=1).numpy().astype(np.float64)


def mia_efficacy(retain: Outputs, test: Outputs, forget: Outputs, *, seed: int = 0) -> float | None:
    if len(forget) == 0 or len(retain) == 0 or len(test) == 0:
        return None
    rng = np.random.default_rng(seed)
    n = min(len(retain), len(test))
    members = _features(retain)[rng.choice(len(retain), size=n, replace=False)]
    others = _features(test)[rng.choice(len(test), size=n, replace=False)]
    x = np.concatenate([members, others])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    attack = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    attack.fit(x, y)
    return float((attack.predict(_features(forget)) == 0).mean())


@register_metric(
    "mia_auc", label="MIA AUC (loss)", direction="retrain",
    show=("version", "chart", "report", "compare", "gap"),
)
def _mia_auc(ctx: MetricContext) -> float | None:
    """Loss-threshold attack AUC, forget vs unseen test samples (0.5 = indistinguishable)."""
    return mia_auc(ctx.forget, ctx.test)


@register_metric(
    "mia_efficacy", label="MIA efficacy", direction="retrain", show=("version", "report", "compare", "gap")
)
def _mia_efficacy(ctx: MetricContext) -> float | None:
    """Share of forget samples a retain-vs-test attack calls non-members."""
    return mia_efficacy(ctx.retain, ctx.test, ctx.forget, seed=ctx.seed)
