"""SISA: exact unlearning by retraining only affected shards from the last clean slice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearning_core.artifacts import open_artifact
from unlearning_core.data import Dataset, load_dataset
from unlearning_core.errors import MethodError
from unlearning_core.forget import ForgetSpec
from unlearning_core.metrics import accuracy, collect_outputs
from unlearning_core.pipeline import apply_method, unlearn
from unlearning_core.runs.spec import DatasetSpec, SisaSpec, TrainingSpec
from unlearning_core.sisa.artifact import SisaRun
from unlearning_core.sisa.assignment import assign
from unlearning_core.sisa.ensemble import SisaEnsemble
from unlearning_core.sisa.run import train_sisa_run
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
TRAINING = TrainingSpec(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=3)


def train(store, run_id: str, data: Dataset, *, shards: int = 4, slices: int = 3, by_subject: bool = False, model: str = "mlp") -> SisaRun:
    return train_sisa_run(
        store, run_id=run_id, dataset=data, dataset_spec=DatasetSpec(spec="digits", subject_size=10),
        model_name=model, training=TRAINING,
        sisa=SisaSpec(shards=shards, slices=slices, by_subject=by_subject), device=CPU,
    )


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits", subject_size=10)


@pytest.fixture(scope="module")
def sisa_run(tmp_path_factory, digits) -> SisaRun:
    return train(LocalBlobStore(tmp_path_factory.mktemp("sisa")), "sisa", digits)


def without(data: Dataset, ids: set[str]) -> Dataset:
    keep = [i for i, s in enumerate(data.train.sample_ids) if s not in ids]
    return Dataset(data.name, data.train.subset(keep), data.test, data.num_classes, data.class_names)


def test_placement_is_stable_under_removal_and_keeps_subjects_together(digits) -> None:
    a = assign(digits.train.sample_ids, digits.train.subject_ids, shards=4, slices=3, seed=1)
    keep = np.arange(1, len(digits.train), 2)
    b = assign([digits.train.sample_ids[i] for i in keep], [digits.train.subject_ids[i] for i in keep], shards=4, slices=3, seed=1)
    assert np.array_equal(a.shard[keep], b.shard) and np.array_equal(a.slice[keep], b.slice)
    counts = np.bincount(a.shard, minlength=4)
    assert counts.min() > 0.7 * counts.mean()  # uniform in expectation
    s = assign(digits.train.sample_ids, digits.train.subject_ids, shards=4, slices=3, seed=1, by_subject=True)
    subject = np.asarray(digits.train.subject_ids)
    for name in ("subject-0000", "subject-0042"):
        hit = subject == name
        assert len(set(s.shard[hit])) == 1 and len(set(s.slice[hit])) == 1


def test_unlearned_ensemble_is_bit_identical_to_training_without_the_forget_samples(tmp_path, digits) -> None:
    torch.use_deterministic_algorithms(True)
    try:
        store = LocalBlobStore(tmp_path)
        run = train(store, "full", digits)
        forget = ("5", "17", "300")
        done = apply_method(store, run_id="full", method="sisa", forget=ForgetSpec(sample_ids=forget), device=CPU)
        reference = train(store, "scratch", without(digits, set(forget)))
        got = run.load_weights(done.version.weights)
        want = reference.load_weights(reference.spec.trained_weights)
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
        # and different from the original: the forget samples did matter
        original = run.load_weights(run.spec.trained_weights)
        assert any(not torch.equal(original[k], got[k]) for k in got)
    finally:
        torch.use_deterministic_algorithms(False)


def test_only_affected_shards_are_retrained(sisa_run: SisaRun) -> None:
    a = sisa_run.assignment
    pos = int(np.flatnonzero((a.shard == 2) & (a.slice == 1))[0])
    sid = sisa_run.sample_table["sample_ids"][pos]
    out = unlearn(sisa_run.store, run_id="sisa", method="sisa", forget=ForgetSpec(sample_ids=(sid,)), device=CPU, evaluate=False, publish=False)
    assert out["shards_retrained"] == 1 and out["restart_slices"] == {"2": 1}
    assert 0 < out["samples_processed"] < out["full_retrain_samples"] / 4
    assert out["cost_vs_full_retrain"] == pytest.approx(out["samples_processed"] / out["full_retrain_samples"])


def test_subject_erasure_touches_one_shard_with_subject_placement(tmp_path, digits) -> None:
    run = train(LocalBlobStore(tmp_path), "subj", digits, by_subject=True)
    out = unlearn(run.store, run_id="subj", method="sisa", forget=ForgetSpec(subjects=("subject-0007",)), device=CPU, evaluate=False)
    assert out["shards_retrained"] == 1 and out["forget_samples"] == 10
    # Repeating it finds the samples already erased: nothing retrained, no new version.
    again = unlearn(run.store, run_id="subj", method="sisa", forget=ForgetSpec(subjects=("subject-0007",)), device=CPU, evaluate=False)
    assert again["shards_retrained"] == 0 and again["new_version"] is False and again["version"] == 1


def test_both_aggregations_work_and_forget_a_class(sisa_run: SisaRun) -> None:
    data = sisa_run.dataset()
    results = {
        agg: unlearn(sisa_run.store, run_id="sisa", method="sisa", forget=ForgetSpec(classes=(3,)), device=CPU,
                     publish=False, method_options={"aggregation": agg})
        for agg in ("vote", "softmax")
    }
    for agg, out in results.items():
        assert out["aggregation"] == agg
        assert out["forget_acc"] <= 0.05, agg  # no shard model saw class 3 any more
        assert out["test_acc"] > 0.6, agg
        assert out["guarantee"] == "exact"
    original = sisa_run.model_with(sisa_run.load_weights(sisa_run.spec.trained_weights))
    assert accuracy(collect_outputs(original, data.test, device=CPU)) > 0.85


def test_vote_aggregation_counts_votes_and_breaks_ties_by_softmax() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.tensor([logits])

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    members = [Fixed([5.0, 0.0, 0.0]), Fixed([5.0, 0.0, 0.0]), Fixed([0.0, 1.0, 0.0]), Fixed([0.0, 1.0, 0.0])]
    x = torch.zeros(1, 1)
    # 2:2 tie between class 0 and 1; class 0's mean softmax is higher.
    assert SisaEnsemble(members, "vote")(x).argmax().item() == 0
    members.append(Fixed([0.0, 1.0, 0.0]))
    assert SisaEnsemble(members, "vote")(x).argmax().item() == 1  # 3 votes beat confidence
    probs = SisaEnsemble(members, "softmax")(x).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_other_methods_refuse_a_sisa_artifact_and_sisa_refuses_others(sisa_run: SisaRun, tmp_path) -> None:
    assert isinstance(open_artifact(sisa_run.store, "sisa"), SisaRun)
    with pytest.raises(MethodError, match="trained with --method sisa"):
        apply_method(sisa_run.store, run_id="sisa", method="amnesiac", forget=ForgetSpec(classes=(1,)), device=CPU)


def test_shard_wise_training_is_idempotent_and_equals_train_sisa_run(tmp_path, digits) -> None:
    from unlearning_core.errors import RunError
    from unlearning_core.sisa.run import (
        finish_sisa_run,
        missing_shards,
        shard_marker,
        train_sisa_shard,
    )

    store = LocalBlobStore(tmp_path)
    sisa = SisaSpec(shards=3, slices=2)
    common = {"dataset": digits, "model_name": "mlp", "training": TRAINING, "sisa": sisa}
    first = train_sisa_shard(store, run_id="wise", shard=1, device=CPU, worker="w1", **common)
    assert len(first) == 2 and shard_marker(store, "wise", 1)["worker"] == "w1"
    again = train_sisa_shard(store, run_id="wise", shard=1, device=CPU, worker="w2", **common)
    assert again == first and shard_marker(store, "wise", 1)["worker"] == "w1"  # not retrained
    assert missing_shards(store, "wise", 3) == [0, 2]
    with pytest.raises(RunError, match="shards 0, 2 are not trained"):
        finish_sisa_run(store, run_id="wise", dataset_spec=DatasetSpec(spec="digits", subject_size=10),
                        device_name="cpu", **common)
    for shard in (2, 0):
        train_sisa_shard(store, run_id="wise", shard=shard, device=CPU, **common)
    wise = finish_sisa_run(store, run_id="wise", dataset_spec=DatasetSpec(spec="digits", subject_size=10),
                           device_name="cpu", **common)
    whole = train(store, "whole", digits, shards=3, slices=2)
    for attr in ("initial_weights", "trained_weights"):
        got = wise.load_weights(getattr(wise.spec, attr))
        want = whole.load_weights(getattr(whole.spec, attr))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), attr
    assert wise.spec.index.sha256 == whole.spec.index.sha256
    assert wise.spec.results.steps == whole.spec.results.steps
    assert wise.ledger().checkpoints["2"][1].sha256 == whole.ledger().checkpoints["2"][1].sha256
