"""The judge (#18, part 2): the NeurIPS 2023 challenge score, U-LiRA and the one-variance
fix of offline LiRA, on synthetic confidences (no training: fast)."""

from __future__ import annotations

import itertools
import math
from types import ModuleType

import numpy as np
import pytest
import torch

from unlearning_core.metrics import (
    Outputs,
    attack_summary,
    epsilon_from_rates,
    example_epsilon,
    forget_quality,
    get_metric,
    lira_scores,
    mia_auc_lira,
    offline_lira_tpr,
    online_lira_scores,
    roc_auc,
    shared_std,
    tpr_at_fpr,
    ulira,
    unlearning_score,
)
from unlearning_core.metrics.ulira import gaussian_fit
from unlearning_core.metrics.unlearning_score import EPSILON_CAP, epsilon_points, max_epsilon

DELTA = 1e-5


def _confs(rng: np.random.Generator, n_models: int, centres: np.ndarray, shift: float = 0.0,
           scale: float = 1.0) -> np.ndarray:
    """``[models, examples]``: each example's own centre plus Gaussian model-to-model noise."""
    return centres + shift + scale * rng.normal(size=(n_models, len(centres)))


# ------------------------------------------------------------------ epsilon


def test_epsilon_from_rates_matches_hand_computed_cases() -> None:
    # max(log(1 - d - FPR) - log FNR, log(1 - d - FNR) - log FPR)
    assert epsilon_from_rates(0.1, 0.2, 0.0) == pytest.approx(math.log(0.8 / 0.1))
    assert epsilon_from_rates(0.25, 0.25, DELTA) == pytest.approx(math.log((0.75 - DELTA) / 0.25))
    assert epsilon_from_rates(0.5, 0.5, DELTA) == 0.0  # a coin flip: clipped at 0
    assert epsilon_from_rates(0.7, 0.6, DELTA) == 0.0  # worse than chance: 0, not negative
    assert epsilon_from_rates(0.0, 0.0, DELTA) == math.inf  # perfect separation
    assert np.isnan(epsilon_from_rates(0.0, 0.3, DELTA))  # one rate 0: discarded (metric.py)
    got = epsilon_from_rates(np.array([0.1, 0.0]), np.array([0.2, 0.0]), 0.0)
    assert got[0] == pytest.approx(math.log(8)) and got[1] == math.inf


def test_example_epsilon_single_and_double_threshold_by_hand() -> None:
    three = math.log((0.75 - DELTA) / 0.25)
    # Medians 1.5 < 4.5: "c >= t says retrained"; the best cut (t = 3) errs once on each side.
    assert example_epsilon([0, 1, 2, 3], [2.5, 4, 5, 6]) == pytest.approx(three)
    # A peaky unlearned population inside a spread retrained one: one threshold reaches only
    # FPR 1/2 at FNR 1/4 (log 2), the interval [0, 0.1] errs once on each side (log 3).
    peaky, spread = [-0.1, 0.0, 0.05, 0.1], [-3.0, -2.0, 0.02, 3.0]
    assert example_epsilon(peaky, spread, double=False) == pytest.approx(math.log((0.5 - DELTA) / 0.25))
    assert example_epsilon(peaky, spread) == pytest.approx(three)
    # Told apart perfectly, or one population 100x narrower: the cap, as metric.py.
    assert example_epsilon([0, 1, 2], [10, 11, 12]) == EPSILON_CAP
    assert example_epsilon([1.0, 1.0001, 1.0002], [0.0, 1.0, 2.0]) == EPSILON_CAP
    # The same values (or the same single point) under both: nothing to tell.
    assert example_epsilon([0, 1, 2, 3], [0, 1, 2, 3]) == 0.0
    assert example_epsilon([2.0, 2.0], [2.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="finite"):
        example_epsilon([0.0, np.inf], [0.0, 1.0])


def test_points_buckets_halve_up_to_the_resolvable_epsilon() -> None:
    assert max_epsilon(32) == 4.0  # ceil(log 31)
    pts = epsilon_points([0.2, 0.7, 1.2, 3.9, 4.0, 50.0, math.inf], 32)
    np.testing.assert_allclose(pts, [1, 0.5, 0.25, 2.0**-7, 0, 0, 0])


# ------------------------------------------------------------------ the challenge score


def test_identical_confidences_give_the_maximum_score() -> None:
    rng = np.random.default_rng(0)
    u = _confs(rng, 32, rng.normal(0, 3, size=50))
    s = unlearning_score(u, u.copy(), unlearned_retain_acc=[0.9] * 32, retrained_retain_acc=0.9,
                         unlearned_test_acc=0.8, retrained_test_acc=[0.8] * 32)
    assert s.forget_quality == 1.0 and s.score == 1.0
    assert s.n_unlearned == s.n_retrained == 32 and s.n_examples == 50 and s.max_epsilon == 4.0


def test_score_falls_monotonically_as_the_distributions_separate() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, size=200)
    base_u, base_r = rng.normal(size=(32, 200)), rng.normal(size=(32, 200))
    quality = [forget_quality(centres + base_u + shift, centres + base_r) for shift in (0.0, 0.5, 1.0, 2.0, 8.0)]
    assert all(a >= b for a, b in itertools.pairwise(quality)), quality
    assert quality[0] > 2 * quality[2] and quality[0] > 0.1, quality  # same law: the ceiling
    assert quality[-1] < 0.01, quality  # well separated: near 0
    # A method that is as random as retraining but narrower is caught by the double threshold.
    assert forget_quality(centres + 0.3 * base_u, centres + base_r) < quality[0] / 2


def test_score_multiplies_forget_quality_by_the_utility_ratios() -> None:
    rng = np.random.default_rng(2)
    u, r = _confs(rng, 16, np.zeros(30)), _confs(rng, 16, np.zeros(30))
    s = unlearning_score(u, r, unlearned_retain_acc=[0.8, 0.9], retrained_retain_acc=[0.85],
                         unlearned_test_acc=0.6, retrained_test_acc=0.8, n_boot=200)
    assert s.retain_ratio == pytest.approx(1.0) and s.test_ratio == pytest.approx(0.75)
    assert s.score == pytest.approx(s.forget_quality * 0.75)
    lo, hi = s.forget_quality_ci
    assert lo <= s.forget_quality <= hi
    d = s.to_dict()
    assert d["score"] == s.score and sum(d["epsilon_histogram"].values()) == 30
    with pytest.raises(ValueError, match="examples"):
        unlearning_score(u, r[:, :5], unlearned_retain_acc=1, retrained_retain_acc=1,
                         unlearned_test_acc=1, retrained_test_acc=1)


def test_a_deterministic_method_is_a_point_mass_and_scores_nothing() -> None:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=20)
    u = np.tile(centres, (32, 1))  # the same model 32 times
    assert forget_quality(u, _confs(rng, 32, centres)) == 0.0


# ------------------------------------------------------------------ U-LiRA


def test_roc_helpers_by_hand() -> None:
    neg = np.arange(100.0)
    assert tpr_at_fpr([50.5, 98.5, 99.5], neg, 0.01) == pytest.approx(2 / 3)  # above 98
    assert tpr_at_fpr([50.5, 98.5, 99.5], neg, 0.001) == pytest.approx(1 / 3)  # above 99
    assert roc_auc([1.0, 3.0], [0.0, 2.0]) == 0.75 and roc_auc([1.0], [1.0]) == 0.5


def test_ulira_sees_unlearned_examples_that_differ_from_retraining() -> None:
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 4, size=150)  # example difficulty: no global threshold works
    r = _confs(rng, 32, centres)
    leaky = ulira(_confs(rng, 32, centres, shift=1.0), r, n_boot=200)
    assert leaky.auc > 0.7 and leaky.tpr[0.01] > 0.05, leaky.to_dict()
    # A global threshold on the raw confidence sees far less than the per-example test.
    assert roc_auc(_confs(rng, 32, centres, shift=1.0), r) < leaky.auc - 0.15
    same = ulira(_confs(rng, 32, centres), r, n_boot=200)
    assert 0.45 < same.auc < 0.55 and same.tpr[0.01] < 0.05, same.to_dict()
    for res in (leaky, same):
        lo, hi = res.auc_ci
        assert lo <= res.auc <= hi
        for f, (tlo, thi) in res.tpr_ci.items():
            assert tlo <= res.tpr[f] <= thi
    assert same.auc_ci[0] < 0.5 < same.auc_ci[1]
    assert leaky.to_dict()["n_unlearned"] == 32 and leaky.positives.shape == (32, 150)


def test_online_lira_with_a_membership_mask_matches_in_and_out_apart() -> None:
    rng = np.random.default_rng(5)
    centres = rng.normal(size=40)
    shadows = _confs(rng, 12, centres)
    mask = rng.random((12, 40)) < 0.5
    shadows[mask] += 2.0  # IN shadows are more confident
    target = centres + 2.0  # a member everywhere
    scores = online_lira_scores(target, shadows, mask, fixed_variance=True)
    assert np.nanmean(scores) > 0
    one = online_lira_scores(target[:1], shadows[:, :1], mask[:, :1], fixed_variance=False)
    assert one.shape == (1,)


# ------------------------------------------------------------------ offline LiRA: one variance model


def _outputs(conf: np.ndarray) -> Outputs:
    """Two-class outputs whose logit-scaled confidence of label 0 is exactly ``conf``."""
    logits = torch.tensor(np.stack([conf, np.zeros_like(conf)], axis=1), dtype=torch.float64)
    return Outputs(logits=logits.float(), losses=torch.zeros(len(conf)), labels=torch.zeros(len(conf), dtype=torch.long))


def test_offline_lira_scores_forget_and_test_with_one_variance() -> None:
    """A candidate uniformly a little more confident than its two shadows, on forget and test
    samples alike, gives away nothing about the forget set: AUC 0.5. With a deviation per
    population (the old behaviour) the widely spread forget examples were divided by a much
    larger deviation than the test examples, and the AUC fell far from 0.5."""
    rng = np.random.default_rng(6)
    mu_f, mu_t = rng.normal(0, 5, size=300), rng.normal(0, 0.5, size=3000)

    def model(mu: np.ndarray, shift: float = 0.0) -> np.ndarray:
        return mu + shift + rng.normal(0, 0.3, size=len(mu))

    shadows_f = [model(mu_f) for _ in range(2)]
    shadows_t = [model(mu_t) for _ in range(2)]
    forget, test = model(mu_f, 0.5), model(mu_t, 0.5)
    auc = mia_auc_lira(_outputs(forget), _outputs(test), [_outputs(s) for s in shadows_f],
                       [_outputs(s) for s in shadows_t])
    assert auc is not None and 0.45 < auc < 0.55, auc
    # the old per-population deviation, for contrast
    old = roc_auc(lira_scores(forget, shadows_f), lira_scores(test, shadows_t))
    assert old < 0.3, old
    # the shared deviation is what both populations are divided by
    sigma = shared_std(shadows_f, shadows_t)
    np.testing.assert_allclose(
        lira_scores(forget, shadows_f, sigma=sigma), (forget - np.mean(shadows_f, axis=0)) / sigma
    )
    tpr = offline_lira_tpr(forget, test, shadows_f, shadows_t)
    assert tpr is not None and tpr < 0.05


def test_the_cheap_form_is_a_registered_metric_that_needs_shadows() -> None:
    spec = get_metric("mia_tpr_lira")
    assert spec.needs == frozenset({"shadow_models"}) and spec.direction == "retrain"
    assert offline_lira_tpr(np.empty(0), np.zeros(3), [np.empty(0)], [np.zeros(3)]) is None


def test_attack_summary_agrees_with_the_separate_helpers() -> None:
    rng = np.random.default_rng(7)
    pos, neg = rng.normal(0.3, 1, size=(5, 300)), np.round(rng.normal(0, 1, size=(5, 300)), 1)
    got = attack_summary(pos, neg)
    assert got["auc"] == pytest.approx(roc_auc(pos, neg))
    for f in (0.01, 0.001):
        assert got[f"tpr_at_{f:g}"] == pytest.approx(tpr_at_fpr(pos, neg, f))


# ------------------------------------------------------------------ the judge page's verdict


def _module(relative: str, name: str) -> ModuleType:
    """A file of the checkout that is not a package module (a docs hook, a bench script)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hook() -> ModuleType:
    return _module("docs/hooks/bench_tables.py", "lethe_docs_bench_tables_judge")


def _bench_judge() -> ModuleType:
    return _module("bench/judge.py", "lethe_bench_judge")


def _judge_result(*, ulira_auc: float, score: float, speedup: float) -> dict:
    def row(label: str, method: str, auc: float, sc: float) -> dict:
        return {"label": label, "method": method, "models": 32, "distinct_models": 32,
                "recovery_steps": 40 if "+40" in label else 0, "options": {"temperature": 2.0},
                "score": {"score": sc, "forget_quality": sc, "forget_quality_ci": [sc, sc],
                          "retain_ratio": 1.0, "test_ratio": 1.0},
                "ulira": {"auc": auc, "auc_ci": [auc - 0.02, auc + 0.02], "tpr_at_0.01": 0.01,
                          "tpr_at_0.01_ci": [0.0, 0.02], "tpr_at_0.001": 0.001, "tpr_at_0.001_ci": [0, 0.002]}}

    m4 = {"forget_acc": 0.88, "mia_auc": 0.52, "test_acc_gap": -0.004, "speedup_vs_retrain": speedup}
    result = {
        "benchmark": "judge", "commit": "abc", "time": "t", "host": "h", "load_average": [0, 0, 0],
        "command": "python bench/judge.py", "counts": {}, "reference": {},
        "methods": [row("retrain", "retrain", 0.5, 0.2), row("scrub +40", "scrub", ulira_auc, score)],
        "experiment4": {"retrain": {"forget_acc_ci": [0.85, 0.9], "mia_auc_ci": [0.49, 0.54]},
                        "methods": {"scrub +40": m4}},
    }
    judge = _bench_judge()  # the verdict is the judge's; the page only words it
    result["verdicts"] = judge.verdicts(result["methods"], result["experiment4"])
    result["ranking"] = judge.ranking(result["verdicts"])
    return result


def test_the_judge_page_computes_the_verdict_from_the_result_file() -> None:
    hook = _hook()
    meets = hook.render("judge", _judge_result(ulira_auc=0.51, score=0.19, speedup=25.0))
    assert "Meets the target: `scrub +40`" in meets
    misses = hook.render("judge", _judge_result(ulira_auc=0.6, score=0.1, speedup=10.0))
    assert "No approximate method meets the target" in misses
    verdict = misses.rsplit("Closest", 1)[1]
    assert "misses 3 of 6" in verdict and "0.080 above" in verdict  # AUC 0.60 vs [0.48, 0.52]
    assert "50% of retrain's, 30% short" in verdict and "2.0x too slow" in verdict


def test_the_judge_writes_the_ranking_auto_reads(tmp_path) -> None:
    import json

    from unlearning_core.methods.auto import choose, load_ranking

    path = tmp_path / "judge.json"
    path.write_text(json.dumps(_judge_result(ulira_auc=0.51, score=0.19, speedup=25.0)))
    ranking = load_ranking(path)
    assert ranking is not None and [(j.method, j.met_target) for j in ranking.methods] == [("scrub", True)]
    assert ranking.methods[0].options == {"temperature": 2.0, "recovery_steps": 40}
    choice = choose(trained_with="plain", forget_samples=5, train_samples=1000, ranking=ranking)
    assert choice.method == "scrub" and choice.options["recovery_steps"] == 40
    path.write_text(json.dumps(_judge_result(ulira_auc=0.6, score=0.1, speedup=10.0)))
    missed = load_ranking(path)
    assert missed is not None and not missed.methods[0].met_target
    assert set(missed.methods[0].misses) == {"ulira_auc", "speedup", "score"}


def test_the_cheap_form_runs_through_evaluate_unlearning_with_shadows() -> None:
    """The registry computes it beside ``mia_auc_lira`` when the caller passes OUT shadows
    (untrained models here: only the wiring is under test), and skips it without them."""
    from unlearning_core.data import load_dataset
    from unlearning_core.metrics import evaluate_unlearning
    from unlearning_core.models import create_model

    data = load_dataset("digits")

    def net(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return create_model("mlp", in_channels=1, image_size=(8, 8), num_classes=10)

    forget = np.arange(40)
    cpu = torch.device("cpu")
    got = evaluate_unlearning(net(0), data, forget, device=cpu, shadow_models=[net(1), net(2)],
                              names=["mia_auc_lira", "mia_tpr_lira"])
    assert set(got) == {"mia_auc_lira", "mia_tpr_lira"} and 0.0 <= got["mia_tpr_lira"] <= 1.0
    assert evaluate_unlearning(net(0), data, forget, device=cpu, names=["mia_tpr_lira"]) == {}


def test_gaussian_fit_is_per_example_with_enough_shadows_and_global_with_few() -> None:
    confs = np.array([[0.0, 10.0], [1.0, 10.0], [2.0, 10.0], [3.0, 10.0]])
    mu, sd = gaussian_fit(confs)  # four shadows: a deviation per example
    np.testing.assert_allclose(mu, [1.5, 10.0])
    np.testing.assert_allclose(sd, [np.std([0, 1, 2, 3], ddof=1), 1e-2])  # the floor
    mu, sd = gaussian_fit(confs[:3])  # three: one global deviation (fixed variance)
    np.testing.assert_allclose(sd, [confs[:3].std()] * 2)
    # A point mass among IN shadows stays a point mass: the attack sees it at once.
    rng = np.random.default_rng(8)
    centres = rng.normal(0, 3, size=100)
    res = ulira(np.tile(centres + 0.5, (16, 1)), _confs(rng, 16, centres), n_boot=0)
    assert res.auc > 0.99 and res.tpr[0.01] > 0.9


def test_ulira_intervals_hold_the_estimate_even_with_few_models() -> None:
    """Resampled folds fit on duplicated models, which biases the bootstrap draws low; the
    interval keeps their spread but is centred on the estimate."""
    rng = np.random.default_rng(9)
    centres = rng.normal(0, 3, size=80)
    for shift in (0.0, 0.7, 3.0):
        res = ulira(_confs(rng, 8, centres, shift=shift), _confs(rng, 8, centres), n_boot=100)
        lo, hi = res.auc_ci
        assert lo <= res.auc <= hi and 0.0 <= lo and hi <= 1.0, (shift, res.auc, res.auc_ci)
        for f, (tlo, thi) in res.tpr_ci.items():
            assert tlo <= res.tpr[f] <= thi
