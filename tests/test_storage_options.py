"""Storage that scales (#17, part 4): layers not recorded, one recorded step per K optimizer
steps, and a storage budget that picks the recording to fit or refuses with the estimate.

Real (tiny) trainings on the digits dataset through ``train_run``; each option's unlearning
is checked against the same arithmetic done by hand from an ungrouped full recording of the
identical training (recording only reads the model, so every recorded variant trains the
same weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearning_core.artifacts import open_artifact
from unlearning_core.data import load_dataset
from unlearning_core.errors import RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.amnesiac import subtract_steps
from unlearning_core.pipeline import apply_method
from unlearning_core.recording import PruneSchedule, decode_update
from unlearning_core.recording.budget import estimate, fit, parse_bytes
from unlearning_core.recording.masks import layer_order
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
TRAINING = TrainingSpec(epochs=2, batch_size=64, lr=0.05, momentum=0.9, weight_decay=0.0, seed=3)


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits", subject_size=10)


def train(store: LocalBlobStore, run_id: str, data, **recording):  # type: ignore[no-untyped-def]
    return train_run(store, run_id=run_id, dataset=data, dataset_spec=DatasetSpec(spec="digits", subject_size=10),
                     model_name="mlp", training=TRAINING, recording=RecordingSpec(**recording), device=CPU)


def updates(run) -> list[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    fmt = run.update_format()
    return [decode_update(run.store.get(b.key, expected_sha256=b.sha256), fmt, epoch=int(run.index.epochs[s]),
                          batch=int(run.index.batches[s])) for s, b in enumerate(run.update_blobs)]


def test_grouped_steps_store_the_groups_sums_and_an_erasure_subtracts_whole_groups(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    store = LocalBlobStore(tmp_path)
    full = train(store, "full", digits, mode="full")
    grouped = train(store, "grouped", digits, mode="full", group_steps=4)
    assert grouped.spec.recording.group_steps == 4 and grouped.spec.results.steps == full.spec.results.steps
    per_epoch = [int((full.index.epochs == e).sum()) for e in range(2)]
    assert grouped.index.n_steps == sum(math.ceil(n / 4) for n in per_epoch) == len(grouped.update_blobs)
    assert full.load_weights(full.spec.trained_weights)["fc1.weight"].equal(
        grouped.load_weights(grouped.spec.trained_weights)["fc1.weight"])  # recording only reads
    # each group is the sum of its 4 steps (the last group of an epoch may be shorter), and
    # holds the union of their samples
    steps = updates(full)
    for g, got in enumerate(updates(grouped)):
        e, k = int(grouped.index.epochs[g]), int(grouped.index.batches[g])
        members = [s for s in range(full.index.n_steps) if full.index.epochs[s] == e and full.index.batches[s] // 4 == k]
        assert 1 <= len(members) <= 4
        assert sorted(grouped.index.step_positions(g).tolist()) == sorted(
            np.concatenate([full.index.step_positions(s) for s in members]).tolist())
        for name, d in got.items():
            torch.testing.assert_close(d, sum(steps[s][name] for s in members), rtol=0, atol=1e-5)
    # erasing one subject subtracts every step of every group that held it: more than the
    # ungrouped run subtracts, exactly the members of those groups
    forget = ForgetSpec(subjects=("subject-0007",))
    done = apply_method(store, run_id="grouped", method="amnesiac", forget=forget, device=CPU, publish=False)
    positions = done.context.forget_positions
    hit = set(int(s) for s in grouped.index.steps_holding(positions))
    members = [s for s in range(full.index.n_steps)
               if any(int(grouped.index.epochs[g]) == full.index.epochs[s] and int(grouped.index.batches[g]) ==
                      full.index.batches[s] // 4 for g in hit)]
    assert done.outcome.details["batches_subtracted"] == len(hit)
    assert len(members) > len(full.index.steps_holding(positions))
    expected, _ = subtract_steps(full, full.load_weights(full.spec.trained_weights), members, prune=None, device=CPU)
    got = done.outcome.model.state_dict()
    for name, v in expected.items():
        torch.testing.assert_close(got[name], v, rtol=0, atol=1e-5)


def test_skipped_layers_store_nothing_and_stay_as_trained(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    store = LocalBlobStore(tmp_path)
    run = train(store, "skip", digits, mode="partial", prune_first=0.5, prune_last=0.2, skip_layers=1)
    first = layer_order(run.spec.tensors)[0]
    fmt = run.update_format()
    assert all(fmt.shares[n] == 1.0 for n in run.spec.tensors if n.startswith(first + "."))
    assert fmt.fixed is not None and all(fmt.fixed.kept(n) == 0 for n in run.spec.tensors if n.startswith(first + "."))
    others = [n for n in run.spec.tensors if not n.startswith(first + ".")]
    assert fmt.shares[others[0]] == pytest.approx(0.5) and fmt.shares[others[-1]] == pytest.approx(0.2)
    # bytes: a run without the skip stores more, by at least the first layer's kept share
    plain = train(store, "noskip", digits, mode="partial", prune_first=0.5, prune_last=0.2)
    assert run.spec.results.storage_bytes < plain.spec.results.storage_bytes
    done = apply_method(store, run_id="skip", method="partial-amnesiac", forget=ForgetSpec(subjects=("subject-0003",)),
                        device=CPU, publish=False, method_options={"prune_first": 0.6})
    trained = run.load_weights(run.spec.trained_weights)
    after = done.outcome.model.state_dict()
    assert all(after[n].equal(trained[n]) for n in run.spec.tensors if n.startswith(first + "."))
    assert any(not after[n].equal(trained[n]) for n in others)
    with pytest.raises(RunError, match="lighter"):  # the recorded shares bound a request from below
        apply_method(store, run_id="skip", method="partial-amnesiac", forget=ForgetSpec(subjects=("subject-0003",)),
                     device=CPU, publish=False, method_options={"prune_first": 0.4})


def test_compressed_runs_store_fewer_bytes_and_unlearn_identically(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    import zlib

    store = LocalBlobStore(tmp_path)
    plain = train(store, "plain", digits, mode="partial")
    packed = train(store, "zlib", digits, mode="partial", compression="zlib")
    assert packed.spec.results.storage_bytes < plain.spec.results.storage_bytes
    blob = packed.update_blobs[0]
    raw = store.get(blob.key, expected_sha256=blob.sha256)
    zlib.decompress(raw)  # stored compressed
    first_plain, first_zlib = updates(plain)[0], updates(packed)[0]  # the same update once decoded
    assert all(first_plain[k].equal(first_zlib[k]) for k in first_plain)
    forget = ForgetSpec(subjects=("subject-0005",))
    a = apply_method(store, run_id="plain", method="partial-amnesiac", forget=forget, device=CPU, publish=False)
    b = apply_method(store, run_id="zlib", method="partial-amnesiac", forget=forget, device=CPU, publish=False)
    sa, sb = a.outcome.model.state_dict(), b.outcome.model.state_dict()
    assert all(sa[k].equal(sb[k]) for k in sa)
    from unlearning_core.recording.codec import unpack_blob

    with pytest.raises(RunError, match="does not decompress"):  # named, should bytes ever pass the sha256
        unpack_blob(b"not zlib at all", packed.update_format())


def test_the_estimate_matches_what_is_stored(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    store = LocalBlobStore(tmp_path)
    for run_id, rec in (("e-full", {"mode": "full"}), ("e-part", {"mode": "partial", "dtype": "float16"}),
                        ("e-group", {"mode": "partial", "group_steps": 3, "mask": "random"})):
        run = train(store, run_id, digits, **rec)
        r = run.spec.recording
        shapes = {k: tuple(v) for k, v in run.spec.tensors.items()}
        batches = math.ceil(len(digits.train) / TRAINING.batch_size)
        est = estimate(shapes, mode=r.mode, mask=r.mask, schedule=r.schedule if r.mode == "partial" else None,
                       dtype=r.dtype, group_steps=r.group_steps, epoch_batches=[batches] * TRAINING.epochs,
                       seed=r.mask_seed)
        assert est.recorded_steps == run.index.n_steps, run_id
        stored = run.spec.results.storage_bytes
        assert abs(est.bytes_per_step * est.recorded_steps - stored) <= 0.05 * stored, (run_id, est, stored)


def test_a_budget_picks_the_recording_that_fits_or_refuses_before_writing(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    shapes = {"a.weight": (1000, 100), "a.bias": (1000,)}
    asked = estimate(shapes, mode="full", dtype="float32", epoch_batches=[100, 100]).total
    same = fit(asked + 1, shapes, mode="full", mask="fixed", schedule=None, dtype="float32", group_steps=1,
               epoch_batches=[100, 100])
    assert (same.dtype, same.group_steps, same.changed) == ("float32", 1, ())
    as_half = estimate(shapes, mode="full", dtype="float16", epoch_batches=[100, 100]).total
    half = fit(as_half, shapes, mode="full", mask="fixed", schedule=None, dtype="float32", group_steps=1,
               epoch_batches=[100, 100])
    assert (half.dtype, half.group_steps) == ("float16", 1) and "float16" in half.changed[0]
    grouped = fit(asked // 9, shapes, mode="full", mask="fixed", schedule=None, dtype="float32", group_steps=1,
                  epoch_batches=[100, 100])
    assert grouped.dtype == "float16" and grouped.group_steps == 8 and grouped.estimate.total <= asked // 9
    with pytest.raises(RunError, match=r"cannot fit in 1\.0 kB.*about"):
        fit(1000, shapes, mode="full", mask="fixed", schedule=None, dtype="float32", group_steps=1,
            epoch_batches=[100, 100])
    assert parse_bytes("1.5GB") == 1_500_000_000 and parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("10") == 10
    for bad in ("", "abc", "-5MB", "3XB", "0"):
        with pytest.raises(RunError, match="storage size"):
            parse_bytes(bad)
    # through training: the chosen recording and the estimate land in run.json; a budget that
    # nothing fits leaves the store empty
    store = LocalBlobStore(tmp_path)
    run = train(store, "budget", digits, mode="full", budget={"max_bytes": 2_000_000})
    b = run.spec.recording.budget
    assert b is not None and b["estimated_bytes"] <= 2_000_000 and run.spec.results.storage_bytes <= 2_000_000 * 1.05
    assert run.spec.recording.dtype == "float16" or run.spec.recording.group_steps > 1
    with pytest.raises(RunError, match="cannot fit"):
        train(store, "too-small", digits, mode="full", budget={"max_bytes": 100})
    assert not (tmp_path / "runs" / "too-small" / "weights").exists()
    assert json.loads(json.dumps(b))["changed"]


def test_the_cli_takes_the_storage_options_and_names_a_bad_budget(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    from api.cli import main

    def lethe(*argv: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["lethe", *argv])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    common = ["train", "--dataset", "digits", "--model", "mlp", "--store", str(tmp_path), "--epochs", "1"]
    code, err = lethe(*common, "--run-id", "bad", "--max-storage", "lots")
    assert code == 2 and "storage size from 'lots'" in err
    code, err = lethe(*common, "--run-id", "tiny", "--max-storage", "1kB")
    assert code == 2 and "cannot fit in 1.0 kB" in err and not (tmp_path / "runs" / "tiny").exists()
    code, err = lethe(*common, "--run-id", "ok", "--record", "partial", "--skip-layers", "1", "--group-steps", "2",
                      "--json")
    assert code == 0, err
    run = open_artifact(LocalBlobStore(tmp_path), "ok")
    assert run.spec.recording.skip_layers == 1 and run.spec.recording.group_steps == 2
    code, err = lethe(*common, "--run-id", "fs", "--record", "full", "--skip-layers", "1")
    words = " ".join(err.replace("│", " ").split())  # typer's box wraps the message
    assert code == 2 and "--skip-layers" in words and "needs --record partial" in words
    assert PruneSchedule(0.9, 0.1, skip=2).layer_shares(4) == pytest.approx([1.0, 1.0, 0.9, 0.1])


def test_the_recorder_measures_back_pressure_when_its_writers_fall_behind(tmp_path: Path) -> None:
    """A store slower than training fills the bounded queue: the training thread then waits
    for a slot, and that wait is what ``backpressure_seconds`` reports (at least the writes
    it had to wait for); with room in the queue it does not wait. Every update is written."""
    import time

    from unlearning_core.recording import UpdateRecorder, float_state
    from unlearning_core.runs.spec import RecordingSpec as Spec

    class SlowStore(LocalBlobStore):
        def put(self, key, data):  # type: ignore[no-untyped-def]
            time.sleep(0.05)
            return super().put(key, data)

    def record(max_pending: int, folder: str) -> tuple[float, int]:
        model = torch.nn.Linear(4, 2)
        fmt = Spec(mode="full").update_format({k: tuple(v.shape) for k, v in float_state(model).items()})
        rec = UpdateRecorder(model, fmt=fmt, store=SlowStore(tmp_path / folder), prefix="runs/x", writers=1,
                             max_pending=max_pending)
        for step in range(5):
            rec.before_step()
            with torch.no_grad():
                model.weight.add_(0.1)
            rec.after_step(step=step, epoch=0, batch=step)
        stats = rec.close()
        return stats.backpressure_seconds, len(stats.blobs)

    waited, written = record(1, "narrow")
    assert written == 5 and waited >= 3 * 0.05 * 0.9  # waited for (at least) three writes to finish
    roomy, written = record(16, "roomy")
    assert written == 5 and roomy < 0.05 < waited
