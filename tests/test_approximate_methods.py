"""Retraining, label flipping and negative gradient (plain and layer-wise partial), with real
torch training on the digits dataset (small CNN, a few epochs, CPU)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

# Imported directly so the methods register whatever methods/__init__.py imports.
import unlearning_core.methods.label_flip
import unlearning_core.methods.neg_grad
import unlearning_core.methods.retrain  # noqa: F401
from unlearning_core.data import load_dataset
from unlearning_core.errors import MethodError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.base import SINGLE_MODEL_TRAINING, get_method
from unlearning_core.methods.label_flip import batch_split, flip_labels
from unlearning_core.methods.layerwise import (
    layer_scales,
    layerwise_sgd,
    partial_schedule,
    scaled_running_stats,
)
from unlearning_core.methods.options import PruneOptions
from unlearning_core.metrics import accuracy, collect_outputs
from unlearning_core.pipeline import apply_method, unlearn
from unlearning_core.recording import PruneSchedule
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import BlobStore, LocalBlobStore
from unlearning_core.training.loop import OptimConfig

CPU = torch.device("cpu")
APPROXIMATE = ("label-flip", "partial-label-flip", "neg-grad", "partial-neg-grad")
ALL = ("retrain", *APPROXIMATE)
CLASS3 = ForgetSpec(classes=(3,))


def train_digits(
    store: BlobStore,
    run_id: str,
    *,
    record: str = "none",
    model: str = "small-cnn",
    epochs: int = 5,
    concentrate: tuple[int, float] | None = None,
) -> RecordedRun:
    return train_run(
        store,
        run_id=run_id,
        dataset=load_dataset("digits"),
        dataset_spec=DatasetSpec(spec="digits"),
        model_name=model,
        training=TrainingSpec(
            epochs=epochs,
            batch_size=32,
            lr=0.05,
            momentum=0.9,
            weight_decay=0.0,
            seed=0,
            concentrate_class=concentrate[0] if concentrate else None,
            concentrate_share=concentrate[1] if concentrate else None,
        ),
        recording=RecordingSpec(mode=record, prune_first=0.99, prune_last=0.5),
        device=CPU,
    )


def run_method(run: RecordedRun, method: str, forget: ForgetSpec = CLASS3, **options):
    return unlearn(
        run.store,
        run_id=run.run_id,
        method=method,
        forget=forget,
        method_options=options,
        device=CPU,
        publish=False,
    )


def candidate(run: RecordedRun, method: str, forget: ForgetSpec = CLASS3, **options):
    return apply_method(
        run.store,
        run_id=run.run_id,
        method=method,
        forget=forget,
        method_options=options,
        device=CPU,
        publish=False,
    ).outcome


def all_finite(model: nn.Module) -> bool:
    return all(
        bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point()
    )


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> RecordedRun:
    return train_digits(LocalBlobStore(tmp_path_factory.mktemp("plain")), "plain")


@pytest.fixture(scope="module")
def results(plain_run: RecordedRun) -> dict[tuple[str, int], dict]:
    """Each approximate method forgetting class 3, without and with a 40-step recovery."""
    out = {(m, r): run_method(plain_run, m, recovery_steps=r) for m in APPROXIMATE for r in (0, 40)}
    data = plain_run.dataset()
    original = plain_run.model_with(plain_run.load_weights(plain_run.spec.trained_weights))
    keep = np.flatnonzero(data.train.labels.numpy() != 3)
    retain = accuracy(collect_outputs(original, data.train.subset(keep), device=CPU))
    first = out[APPROXIMATE[0], 0]
    print(
        f"\ndigits small-cnn, forget class 3: original forget "
        f"{first['original_forget_acc']:.3f} retain {retain:.3f}"
    )
    for (m, r), res in out.items():
        print(
            f"  {m:<19} recovery {r:>2}: forget {res['forget_acc']:.3f} "
            f"retain {res['retain_acc']:.3f} test {res['test_acc']:.3f} steps {res['steps']} "
            f"unlearn {res['unlearn_seconds']:.3f}s recovery {res['recovery_seconds']:.3f}s"
        )
    return out


# -- the approximate methods ---------------------------------------------------------------


def test_approximate_methods_lower_forget_accuracy_of_a_class(results) -> None:
    for method in APPROXIMATE:
        res = results[method, 0]
        assert res["guarantee"] == "approximate"
        assert res["original_forget_acc"] > 0.9
        assert res["forget_acc"] <= 0.2, method
        assert res["forget_acc"] < res["original_forget_acc"] - 0.7, method
        assert res["per_class_acc"]["3"] <= 0.2, method


def test_recovery_fine_tune_restores_retain_accuracy_and_is_timed_apart(results) -> None:
    for method in APPROXIMATE:
        plain, healed = results[method, 0], results[method, 40]
        assert plain["recovery_seconds"] == 0.0 and healed["recovery_seconds"] > 0.0, method
        assert healed["unlearn_seconds"] > 0.0
        assert healed["retain_acc"] > plain["retain_acc"], method
        assert healed["retain_acc"] >= 0.9, method


def test_partial_variants_move_the_first_layer_less(results) -> None:
    for plain, partial in (("label-flip", "partial-label-flip"), ("neg-grad", "partial-neg-grad")):
        d_plain, d_partial = (
            results[plain, 0]["layer_distance"],
            results[partial, 0]["layer_distance"],
        )
        assert list(d_plain) == ["conv1", "conv2", "fc1", "head"]
        assert d_partial["conv1"]["original"] < 0.5 * d_plain["conv1"]["original"], partial
        scales = results[partial, 0]["layer_step_scale"]
        assert scales["conv1"] == pytest.approx(0.01) and scales["head"] == pytest.approx(0.5)
        assert (
            results[partial, 0]["prune_first"] == 0.99 and results[partial, 0]["prune_last"] == 0.5
        )
        assert set(results[plain, 0]["layer_step_scale"].values()) == {1.0}


def test_flipped_labels_are_never_the_true_label() -> None:
    for num_classes in (2, 3, 10):
        labels = torch.arange(2000) % num_classes
        for seed in range(5):
            flipped = flip_labels(labels, num_classes, seed)
            assert flipped.dtype == torch.int64 and flipped.shape == labels.shape
            assert not bool((flipped == labels).any())
            assert int(flipped.min()) >= 0 and int(flipped.max()) < num_classes
            # every wrong label gets drawn (uniform over the other classes)
            for k in range(num_classes):
                assert set(flipped[labels == k].tolist()) == set(range(num_classes)) - {k}
        assert torch.equal(flip_labels(labels, num_classes, 7), flip_labels(labels, num_classes, 7))
    assert not torch.equal(flip_labels(labels, 10, 0), flip_labels(labels, 10, 1))
    with pytest.raises(MethodError, match="two classes"):
        flip_labels(torch.zeros(3, dtype=torch.int64), 1, 0)


def test_label_flip_mixes_retained_samples_into_each_batch(plain_run: RecordedRun) -> None:
    assert batch_split(32, 0.0, 100, 1000) == (32, 0)
    assert batch_split(32, 0.5, 100, 1000) == (16, 16)
    assert batch_split(32, 0.5, 4, 1000) == (4, 4)  # a small forget set keeps the mix
    assert batch_split(32, 0.9, 100, 1000) == (3, 29)
    with pytest.raises(MethodError, match="mix_retain"):
        batch_split(32, 1.0, 100, 1000)
    mixed = run_method(plain_run, "label-flip", mix_retain=0.5)
    assert mixed["mix_retain"] == 0.5 and mixed["steps"] == 20
    assert (mixed["forget_per_batch"], mixed["retain_per_batch"]) == (16, 16)
    assert mixed["forget_acc"] <= 0.3
    assert mixed["retain_acc"] >= 0.8  # retained samples hold the rest of the model in place


def test_neg_grad_stops_when_the_target_is_reached(plain_run: RecordedRun) -> None:
    res = run_method(plain_run, "neg-grad", steps=50, target_forget_acc=0.5)
    assert res["stopped_early"] and res["target_reached"] and 1 <= res["steps"] < 50
    assert res["target_forget_acc"] == 0.5 and res["target_source"] == "option"
    assert res["forget_acc"] <= 0.5
    # class forgetting: the default target is what a retrained model shows on the class, 0
    default = candidate(plain_run, "neg-grad").details
    assert default["target_forget_acc"] == 0.0 and default["target_source"] == "class"
    # a few samples: the default target is the model's test accuracy
    few = ForgetSpec(sample_ids=tuple(str(i) for i in range(40)))
    data = plain_run.dataset()
    head = plain_run.model_with(plain_run.load_weights(plain_run.spec.trained_weights))
    test_acc = accuracy(collect_outputs(head, data.test, device=CPU))
    sampled = candidate(plain_run, "partial-neg-grad", few).details
    assert sampled["target_source"] == "test_acc"
    assert sampled["target_forget_acc"] == pytest.approx(test_acc)
    # a target already met: nothing to do, nothing changed
    met = candidate(plain_run, "neg-grad", target_forget_acc=1.0)
    assert met.details["steps"] == 0 and met.details["stopped_early"] and not met.changed


def test_a_huge_learning_rate_never_leaves_nan(plain_run: RecordedRun) -> None:
    test = plain_run.dataset().test
    diverged = []
    for method in ("label-flip", "neg-grad", "partial-label-flip"):
        for lr in (1e4, 1e8, 1e30):
            try:
                target = {"target_forget_acc": 0.0} if method == "neg-grad" else {}  # neg-grad's option
                out = candidate(plain_run, method, lr=lr, steps=30, **target)
            except MethodError as exc:  # diverged on the first step: refused, nothing recorded
                assert "diverged on its first step" in str(exc)
                diverged.append(True)
                continue
            assert all_finite(out.model), (method, lr)
            logits = collect_outputs(out.model, test, device=CPU).logits
            assert bool(torch.isfinite(logits).all()), (method, lr)
            diverged.append(out.details["diverged"])
    assert any(diverged)  # the guard undid a non-finite step, keeping the last finite state


def test_option_mistakes_are_clear_errors(plain_run: RecordedRun) -> None:
    with pytest.raises(MethodError, match="partial-label-flip"):
        candidate(plain_run, "label-flip", prune_first=0.9)
    with pytest.raises(MethodError, match="partial-neg-grad"):
        candidate(plain_run, "neg-grad", prune_last=0.1)
    with pytest.raises(MethodError, match="steps"):
        candidate(plain_run, "neg-grad", steps=0)
    with pytest.raises(MethodError, match="target_forget_acc"):
        candidate(plain_run, "partial-neg-grad", target_forget_acc=1.5)
    with pytest.raises(MethodError, match="mix_retain"):
        candidate(plain_run, "partial-label-flip", mix_retain=1.0)


# -- layer-wise scaling --------------------------------------------------------------------


def test_layerwise_optimizer_scales_each_layer_and_batchnorm_rate() -> None:
    model = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(1, 4, 3),
            bn=nn.BatchNorm2d(4),
            flat=nn.Flatten(),
            head=nn.Linear(4 * 36, 3),
        )
    )
    scales = layer_scales(model, PruneSchedule(0.9, 0.3))
    assert list(scales) == ["conv", "bn", "head"]
    assert scales == pytest.approx({"conv": 0.1, "bn": 0.4, "head": 0.7})
    opt = layerwise_sgd(model, OptimConfig(lr=0.5, momentum=0.9), scales)
    assert [(g["layer"], g["lr"], len(g["params"])) for g in opt.param_groups] == [
        ("conv", pytest.approx(0.05), 2),
        ("bn", pytest.approx(0.2), 2),
        ("head", pytest.approx(0.35), 2),
    ]
    assert layer_scales(model, None) == {"conv": 1.0, "bn": 1.0, "head": 1.0}
    with scaled_running_stats(model, scales):
        assert model.bn.momentum == pytest.approx(0.04)
    assert model.bn.momentum == 0.1
    # the run's schedule unless the request names one; 0.99 -> 0.5 when the run names none
    assert partial_schedule((0.9, 0.2), PruneOptions()) == PruneSchedule(0.9, 0.2)
    assert partial_schedule((0.9, 0.2), PruneOptions(prune_last=0.4)) == PruneSchedule(0.9, 0.4)
    assert partial_schedule((0.0, 0.0), PruneOptions()) == PruneSchedule(0.99, 0.5)


# -- retraining ----------------------------------------------------------------------------


def test_retrain_is_bit_deterministic_and_never_saw_the_class(plain_run: RecordedRun) -> None:
    first = candidate(plain_run, "retrain")
    second = candidate(plain_run, "retrain", recovery_steps=10)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    data = plain_run.dataset()
    labels = data.train.labels.numpy()
    forget, keep = np.flatnonzero(labels == 3), np.flatnonzero(labels != 3)
    forget_acc = accuracy(collect_outputs(first.model, data.train.subset(forget), device=CPU))
    retain_acc = accuracy(collect_outputs(first.model, data.train.subset(keep), device=CPU))
    print(f"\nretrain without class 3: forget {forget_acc:.3f} retain {retain_acc:.3f}")
    assert forget_acc <= 0.02 and retain_acc >= 0.9
    assert first.details["samples_processed"] == plain_run.spec.training.epochs * len(keep)
    assert "note" not in first.details and "recovery_steps ignored" in second.details["note"]
    assert second.recovery_seconds == 0.0
    assert get_method("retrain").guarantee == "exact"


def test_retrain_keeps_a_concentration_even_when_forgetting_that_class(tmp_path) -> None:
    run = train_digits(
        LocalBlobStore(tmp_path), "conc", model="mlp", epochs=2, concentrate=(3, 0.2)
    )
    for forget in (CLASS3, ForgetSpec(classes=(5,))):
        out = candidate(run, "retrain", forget)
        assert (
            all_finite(out.model)
            and out.details["samples_processed"] == 2 * out.details["retained_samples"]
        )


# -- artifacts, registry, publishing --------------------------------------------------------


def test_methods_accept_amnesiac_runs(tmp_path) -> None:
    run = train_digits(LocalBlobStore(tmp_path), "full", record="full", epochs=2)
    assert run.spec.method == "amnesiac"
    for method in ALL:
        out = candidate(run, method, **({} if method == "retrain" else {"steps": 5}))  # retrain has no steps
        assert out.changed and all_finite(out.model), method


def test_methods_refuse_a_sisa_artifact_and_are_registered() -> None:
    for name in ALL:
        method = get_method(name)
        assert (
            method.name == name and method.trained_with == SINGLE_MODEL_TRAINING and method.summary
        )
        assert method.guarantee == ("exact" if name == "retrain" else "approximate")
        with pytest.raises(MethodError, match="trained with --method sisa"):
            method.check_artifact("sisa", "x")
        for trained in SINGLE_MODEL_TRAINING:
            method.check_artifact(trained, "x")


def test_published_label_flip_version_and_retrain_honour_the_lineage(tmp_path) -> None:
    run = train_digits(LocalBlobStore(tmp_path), "pub", model="mlp", epochs=2)
    out = unlearn(
        run.store, run_id="pub", method="label-flip", forget=CLASS3, device=CPU, evaluate=False
    )
    assert out["version"] == 1 and out["new_version"]
    ledger = run.ledger()
    assert (
        ledger.head.version == 1 and ledger.head.method == "label-flip" and ledger.head.parent == 0
    )
    assert ledger.head.weights.sha256 == out["weights_sha256"]
    labels = np.asarray(run.sample_table["labels"])
    ids = run.sample_table["sample_ids"]
    assert set(ledger.erased_sample_ids) == {ids[i] for i in np.flatnonzero(labels == 3)}
    # The next request works from the new head, and retraining leaves out class 3 too.
    other = ids[int(np.flatnonzero(labels == 5)[0])]
    retrained = candidate(run, "retrain", ForgetSpec(sample_ids=(other,)))
    assert retrained.details["retained_samples"] == len(ids) - int((labels == 3).sum()) - 1
    # A target already met takes no step: the candidate is the lineage head (v1), not v0.
    same = candidate(run, "neg-grad", ForgetSpec(sample_ids=(other,)), target_forget_acc=1.0)
    head, state = run.load_weights(ledger.head.weights), same.model.state_dict()
    assert same.details["steps"] == 0 and all(torch.equal(head[k], state[k]) for k in head)
