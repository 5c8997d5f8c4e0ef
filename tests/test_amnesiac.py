"""Recorded training and (layer-wise partial) amnesiac unlearning, with real torch training.

Small and fast on CPU: the digits dataset, tiny CNNs, a few epochs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unlearning_core.data import load_dataset
from unlearning_core.errors import BlobIntegrityError, ForgetSetError, MethodError, RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.models import register_model
from unlearning_core.models.registry import model_names
from unlearning_core.pipeline import apply_method, unlearn
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import BlobStore, LocalBlobStore

CPU = torch.device("cpu")

if "test-bn-cnn" not in model_names():

    @register_model("test-bn-cnn")
    def _bn_cnn(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
        """A model with BatchNorm, so float buffers must be recorded for subtraction to be complete."""
        return nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * image_size[0] * image_size[1], num_classes),
        )


def train_digits(
    store: BlobStore,
    run_id: str,
    *,
    model: str = "small-cnn",
    record: str = "full",
    epochs: int = 5,
    prune: tuple[float, float] = (0.99, 0.5),
    concentrate: tuple[int, float] | None = None,
    subject_size: int | None = None,
    mask: str = "random",
) -> RecordedRun:
    spec = DatasetSpec(spec="digits", subject_size=subject_size)
    data = load_dataset("digits", subject_size=subject_size)
    return train_run(
        store,
        run_id=run_id,
        dataset=data,
        dataset_spec=spec,
        model_name=model,
        training=TrainingSpec(
            epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0,
            concentrate_class=concentrate[0] if concentrate else None,
            concentrate_share=concentrate[1] if concentrate else None,
        ),
        recording=RecordingSpec(mode=record, mask=mask, mask_seed=0, prune_first=prune[0], prune_last=prune[1]),
        device=CPU,
    )


def positions(run: RecordedRun, spec: ForgetSpec) -> tuple[np.ndarray, list[str]]:
    t = run.sample_table
    pos = spec.resolve(t["sample_ids"], t["labels"], t["subject_ids"])
    return pos, [t["sample_ids"][i] for i in pos]


def amnesiac(run: RecordedRun, spec: ForgetSpec, *, partial: bool, publish: bool = True, **options):
    return apply_method(
        run.store, run_id=run.run_id, method="partial-amnesiac" if partial else "amnesiac",
        forget=spec, method_options=options, device=CPU, publish=publish,
    )


def dry(run: RecordedRun, spec: ForgetSpec, **kw) -> dict[str, torch.Tensor]:
    return amnesiac(run, spec, publish=False, **kw).outcome.model.state_dict()


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> LocalBlobStore:
    return LocalBlobStore(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def class_run(module_store: LocalBlobStore) -> RecordedRun:
    """Class 3 in 20% of the batches: the setting where amnesiac class forgetting works."""
    return train_digits(module_store, "class3", concentrate=(3, 0.2))


def test_subtracting_every_update_returns_the_initial_weights(tmp_path) -> None:
    run = train_digits(LocalBlobStore(tmp_path), "bn", model="test-bn-cnn", epochs=2)
    state = dry(run, ForgetSpec(classes=tuple(range(10))), partial=False)
    initial = run.load_weights(run.spec.initial_weights)
    trained = run.load_weights(run.spec.trained_weights)
    assert not torch.allclose(trained["1.running_mean"], initial["1.running_mean"])
    for name, value in initial.items():
        if torch.is_floating_point(value):
            assert torch.allclose(state[name], value, atol=1e-5), name


def test_each_sample_sits_in_exactly_epochs_batches(class_run: RecordedRun) -> None:
    index = class_run.index
    counts = np.bincount(index.positions, minlength=len(class_run.sample_table["sample_ids"]))
    assert (counts == class_run.spec.training.epochs).all()
    assert len(class_run.update_blobs) == index.n_steps == class_run.spec.results.steps


def test_partial_with_pruning_zero_equals_full_amnesiac(tmp_path, class_run: RecordedRun) -> None:
    forget = ForgetSpec(classes=(3,))
    full = dry(class_run, forget, partial=False)
    partial_at_zero = dry(class_run, forget, partial=True, prune_first=0.0, prune_last=0.0)
    # A run *recorded* partial at pruning 0 stores exactly the full updates, too.
    recorded_partial = train_digits(
        LocalBlobStore(tmp_path), "p0", record="partial", prune=(0.0, 0.0), concentrate=(3, 0.2)
    )
    from_partial = dry(recorded_partial, forget, partial=True)
    for name in full:
        assert torch.equal(full[name], partial_at_zero[name])
        assert torch.equal(full[name], from_partial[name])


def test_unlearning_reads_only_the_affected_updates(class_run: RecordedRun) -> None:
    pos, _ = positions(class_run, ForgetSpec(sample_ids=("5",)))
    details = amnesiac(class_run, ForgetSpec(sample_ids=("5",)), partial=False, publish=False).outcome.details
    steps = class_run.index.steps_holding(pos)
    assert details["batches_subtracted"] == len(steps) == class_run.spec.training.epochs
    assert details["bytes_read"] == sum(class_run.update_blobs[s].size for s in steps)
    assert details["bytes_read"] * 20 < class_run.spec.results.storage_bytes


def test_a_batch_is_never_subtracted_twice_whatever_the_order(tmp_path) -> None:
    a, b = ForgetSpec(subjects=("subject-0003",)), ForgetSpec(subjects=("subject-0004",))
    finals, ledgers = [], []
    for name, order in (("ab", [a, b, a, b]), ("ba", [b, a])):
        run = train_digits(LocalBlobStore(tmp_path / name), name, subject_size=10, epochs=2)
        counts = []
        for spec in order:
            counts.append(amnesiac(run, spec, partial=False).outcome.details["batches_subtracted"])
        union = set(run.index.steps_holding(positions(run, a)[0])) | set(
            run.index.steps_holding(positions(run, b)[0])
        )
        ledger = run.ledger()
        assert sum(counts) == len(union) == len(ledger.subtracted_steps)
        if name == "ab":
            assert counts[2:] == [0, 0]  # the repeats found every batch already subtracted
        assert sorted(ledger.subtracted_steps) == sorted(int(s) for s in union)
        finals.append(run.load_weights(ledger.head.weights))
        ledgers.append(ledger)
    # Same batches subtracted in another order: the same weights (up to float summation order).
    for name in finals[0]:
        assert torch.allclose(finals[0][name].float(), finals[1][name].float(), atol=1e-5)
    assert [v.version for v in ledgers[0].versions] == [0, 1, 2]  # repeats published nothing
    assert ledgers[0].erased_sample_ids == ledgers[1].erased_sample_ids


def test_class_forgetting_partial_keeps_retain_accuracy_above_amnesiac(class_run: RecordedRun) -> None:
    results = {
        method: unlearn(
            class_run.store, run_id=class_run.run_id, method=method, forget=ForgetSpec(classes=(3,)),
            device=CPU, publish=False,
            method_options={"prune_first": 0.95, "prune_last": 0.3} if method == "partial-amnesiac" else None,
        )
        for method in ("amnesiac", "partial-amnesiac")
    }
    amn, part = results["amnesiac"], results["partial-amnesiac"]
    print(
        f"\ndigits class 3 in 20% of batches: original forget {amn['original_forget_acc']:.3f}; "
        f"amnesiac forget {amn['forget_acc']:.3f} retain {amn['retain_acc']:.3f}; "
        f"partial forget {part['forget_acc']:.3f} retain {part['retain_acc']:.3f}"
    )
    assert amn["original_forget_acc"] > 0.9
    assert amn["forget_acc"] <= 0.05 and part["forget_acc"] <= 0.05
    assert part["retain_acc"] > amn["retain_acc"]
    assert part["per_class_acc"]["3"] <= 0.05
    assert set(amn["layer_distance"]) == {"conv1", "conv2", "fc1", "head"}


def test_subject_forgetting_keeps_retain_accuracy(tmp_path) -> None:
    run = train_digits(LocalBlobStore(tmp_path), "subjects", subject_size=10, record="partial", prune=(0.95, 0.3))
    data = run.dataset()
    from unlearning_core.metrics import accuracy, collect_outputs

    original = accuracy(collect_outputs(run.model_with(run.load_weights(run.spec.trained_weights)), data.train, device=CPU))
    out = unlearn(
        run.store, run_id=run.run_id, method="partial-amnesiac",
        forget=ForgetSpec(subjects=("subject-0005",)), device=CPU,
    )
    print(f"\ndigits subject forgetting: original retain {original:.3f}, after {out['retain_acc']:.3f}")
    assert out["forget_samples"] == 10 and out["new_version"] and out["version"] == 1
    assert out["retain_acc"] >= original - 0.03
    assert 0.0 <= out["mia_auc"] <= 1.0 and out["relearn_steps"] >= 0


def test_recovery_fine_tune_is_timed_separately_and_restores_retain(class_run: RecordedRun) -> None:
    forget = ForgetSpec(classes=(3,))
    plain = unlearn(class_run.store, run_id=class_run.run_id, method="amnesiac", forget=forget, device=CPU, publish=False)
    healed = unlearn(
        class_run.store, run_id=class_run.run_id, method="amnesiac", forget=forget, device=CPU,
        publish=False, method_options={"recovery_steps": 40},
    )
    assert plain["recovery_seconds"] == 0.0 and healed["recovery_seconds"] > 0.0
    assert healed["retain_acc"] > plain["retain_acc"]
    assert healed["forget_acc"] <= 0.2


def test_method_and_recording_mismatches_are_clear_errors(tmp_path, class_run: RecordedRun) -> None:
    partial_run = train_digits(LocalBlobStore(tmp_path), "partial", record="partial", epochs=1)
    one = ForgetSpec(sample_ids=("1",))
    with pytest.raises(MethodError, match="--method amnesiac"):
        amnesiac(partial_run, one, partial=False)
    with pytest.raises(RunError, match="lighter than the run's recorded"):
        amnesiac(partial_run, one, partial=True, prune_first=0.5)
    plain = train_digits(LocalBlobStore(tmp_path / "plain"), "plain", record="none", epochs=1)
    with pytest.raises(MethodError, match="trained with --method plain"):
        amnesiac(plain, one, partial=True)
    with pytest.raises(MethodError, match="unknown unlearning method"):
        apply_method(plain.store, run_id="plain", method="forgetful", forget=one, device=CPU)
    with pytest.raises(ForgetSetError, match="not in the run"):
        positions(class_run, ForgetSpec(sample_ids=("no-such-id",)))
    with pytest.raises(ForgetSetError, match="empty"):
        positions(class_run, ForgetSpec())
    with pytest.raises(RunError, match="already exists"):
        train_digits(class_run.store, class_run.run_id)


def test_a_tampered_update_blob_is_refused(tmp_path) -> None:
    store = LocalBlobStore(tmp_path)
    run = train_digits(store, "tamper", model="mlp", epochs=1)
    pos, _ = positions(run, ForgetSpec(sample_ids=("0",)))
    victim = run.update_blobs[int(run.index.steps_holding(pos)[0])]
    path = tmp_path / victim.key
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(BlobIntegrityError, match=victim.key):
        amnesiac(run, ForgetSpec(sample_ids=("0",)), partial=False)
    assert run.ledger().head.version == 0  # nothing published from a corrupt read


@pytest.mark.s3
def test_recorded_run_round_trips_through_s3(s3_store) -> None:
    run = train_digits(s3_store, "s3run", model="mlp", record="partial", mask="magnitude", epochs=1, prune=(0.9, 0.5))
    reopened = RecordedRun.open(s3_store, "s3run")
    assert reopened.spec == run.spec
    out = unlearn(s3_store, run_id="s3run", method="partial-amnesiac", forget=ForgetSpec(sample_ids=("0", "7")), device=CPU)
    assert out["weights"].startswith("s3://") and out["version"] == 1
    assert reopened.ledger().head.weights.sha256 == out["weights_sha256"]
    assert out["bytes_read"] > 0
