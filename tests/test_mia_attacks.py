"""The stronger membership-inference attack (offline LiRA on logit-scaled confidence) on
real models trained on digits: they must see membership in a model that trained on the
forget set, and see nothing in a model that never did."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearning_core.data import SampleSet, load_dataset
from unlearning_core.metrics import (
    Outputs,
    collect_outputs,
    lira_scores,
    logit_confidence,
    mia_auc,
    mia_auc_lira,
)
from unlearning_core.models import create_model
from unlearning_core.training.batching import plan_batches
from unlearning_core.training.loop import OptimConfig, train_plan

CPU = torch.device("cpu")


def _fit(samples: SampleSet, *, seed: int, epochs: int = 60) -> torch.nn.Module:
    """An MLP trained to (over)fit ``samples``: members end up far more confident."""
    torch.manual_seed(seed)
    model = create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)
    plan = plan_batches(len(samples), epochs=epochs, batch_size=32, seed=seed)
    train_plan(model, samples, plan, optim=OptimConfig(lr=0.05, momentum=0.9), device=CPU)
    return model


@pytest.fixture(scope="module")
def setting() -> dict:
    """Members (trained on by the target only), the rest of train (shadows' data), test."""
    data = load_dataset("digits")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.train))
    members, rest = order[:100], order[100:]
    target = _fit(data.train.subset(np.concatenate([members, rest[:200]])), seed=1)
    outsider = _fit(data.train.subset(rest[:200]), seed=2)  # never saw members nor test
    shadows = [_fit(data.train.subset(rng.permutation(rest)[:300]), seed=10 + i) for i in range(4)]
    member_set = data.train.subset(members)
    out = {
        "target": (collect_outputs(target, member_set, device=CPU), collect_outputs(target, data.test, device=CPU)),
        "outsider": (collect_outputs(outsider, member_set, device=CPU), collect_outputs(outsider, data.test, device=CPU)),
        "shadow_forget": [collect_outputs(s, member_set, device=CPU) for s in shadows],
        "shadow_test": [collect_outputs(s, data.test, device=CPU) for s in shadows],
    }
    return out


def test_logit_confidence_matches_the_formula_and_stays_finite_when_saturated() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [80.0, 0.0, 0.0]])
    labels = torch.tensor([0, 2, 0])
    out = Outputs(logits=logits, losses=torch.zeros(3), labels=labels)
    got = logit_confidence(out)
    p = logits.double().softmax(dim=1)[torch.arange(3), labels].numpy()
    # Same ranking as the loss, which is what makes it a drop-in score for LiRA.
    np.testing.assert_allclose(got[:2], np.log(p[:2] / (1 - p[:2])), rtol=1e-9)
    assert np.isfinite(got[2]) and got[2] == pytest.approx(80 - np.log(2), rel=1e-6)


def test_attacks_see_members_of_a_model_that_trained_on_them(setting: dict) -> None:
    forget, test = setting["target"]
    lira = mia_auc_lira(forget, test, setting["shadow_forget"], setting["shadow_test"])
    loss = mia_auc(forget, test)
    assert lira is not None and loss is not None
    assert lira > 0.58, lira
    # Per-example calibration is the point of LiRA: it beats the global loss threshold
    # (digits generalises well, so the loss threshold alone sees little).
    assert lira > loss + 0.03, (lira, loss)


def test_attacks_see_nothing_in_a_model_that_never_trained_on_them(setting: dict) -> None:
    forget, test = setting["outsider"]
    lira = mia_auc_lira(forget, test, setting["shadow_forget"], setting["shadow_test"])
    assert lira is not None and 0.4 < lira < 0.6, lira


def test_lira_scores_rejects_bad_shadows_and_handles_few_shadows() -> None:
    with pytest.raises(ValueError, match="at least one shadow"):
        lira_scores(np.zeros(3), [])
    with pytest.raises(ValueError, match="shape"):
        lira_scores(np.zeros(3), [np.zeros(4)])
    # One shadow: a global variance, so scores are finite and ordered like the differences.
    z = lira_scores(np.array([1.0, 2.0, 3.0]), [np.array([1.0, 1.0, 1.0])])
    assert np.all(np.isfinite(z)) and z[0] < z[1] < z[2]
    empty = Outputs(logits=torch.empty(0, 10), losses=torch.empty(0), labels=torch.empty(0, dtype=torch.long))
    assert mia_auc_lira(empty, empty, [], []) is None
