"""``--prune auto``: the largest layer-wise pruning that still forgets, found per request.

Real training on digits (small CNN, CPU). Each test checks the search's promise against an
independent evaluation: the chosen candidate meets the criterion, and the next-larger
pruning probed does not (or the choice is the ceiling).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from unlearning_core.cli.main import app
from unlearning_core.data import load_dataset
from unlearning_core.errors import MethodError, RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.prune_search import PruneSearch, pruned_share, resolve_criterion
from unlearning_core.metrics import accuracy, collect_outputs
from unlearning_core.pipeline import apply_method
from unlearning_core.recording import PruneSchedule
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
from unlearning_core.runs.train import train_run
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
FORGET_CLASS = 3


def _train(tmp_path, *, record: str, prune: tuple[float, float] = (0.0, 0.0), subject_size=None) -> RecordedRun:
    store = LocalBlobStore(tmp_path / "store")
    return train_run(
        store, run_id=f"auto-{record}", dataset=load_dataset("digits", subject_size=subject_size),
        dataset_spec=DatasetSpec(spec="digits", subject_size=subject_size), model_name="small-cnn",
        training=TrainingSpec(
            epochs=4, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0, seed=0,
            concentrate_class=FORGET_CLASS, concentrate_share=0.2,
        ),
        recording=RecordingSpec(mode=record, prune_first=prune[0], prune_last=prune[1]), device=CPU,
    )


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> RecordedRun:
    return _train(tmp_path_factory.mktemp("full"), record="full", subject_size=10)


def _auto(run: RecordedRun, forget: ForgetSpec, search: PruneSearch, **options):
    return apply_method(
        run.store, run_id=run.run_id, method="partial-amnesiac", forget=forget,
        method_options={"prune_search": search, **options}, device=CPU, publish=False,
    )


def _check_largest(record: dict, search: PruneSearch) -> None:
    """The choice holds; every larger probe failed, unless the choice is the ceiling."""
    chosen, probes = record["chosen"], record["probes"]
    assert chosen["enough"] is True
    larger = [p for p in probes if p["prune_last"] > chosen["prune_last"] + 1e-12]
    if chosen["prune_last"] < record["ceiling"] - 1e-12:
        assert larger, "a choice below the ceiling must have a failed larger probe"
        assert not any(p["enough"] for p in larger)
        nearest = min(larger, key=lambda p: p["prune_last"])
        # Bisection stops when the bracket is narrow or the probe budget is spent.
        gap = nearest["prune_last"] - chosen["prune_last"]
        assert gap <= search.resolution + 1e-9 or len(probes) == search.max_probes
    assert len(probes) <= search.max_probes


def test_class_forgetting_picks_largest_pruning_with_zero_forget_acc(full_run: RecordedRun) -> None:
    search = PruneSearch()
    done = _auto(full_run, ForgetSpec(classes=(FORGET_CLASS,)), search)
    details = done.outcome.details
    record = details["prune_auto"]
    assert record["criterion"] == "forget_acc"
    assert record["met"] is True
    _check_largest(record, search)
    assert details["prune_last"] == record["chosen"]["prune_last"]
    assert details["prune_first"] == pytest.approx(0.99)  # a full recording: the default first share
    # Independent check: the returned candidate really has forget accuracy 0 ...
    data = load_dataset("digits", subject_size=10)
    forget = data.train.subset(data.train.positions_of_class(FORGET_CLASS))
    assert accuracy(collect_outputs(done.outcome.model, forget, device=CPU)) == 0.0
    # ... and a larger pruning, rebuilt through the fixed-schedule path, does not.
    larger = [p for p in record["probes"] if p["prune_last"] > details["prune_last"]]
    if larger:
        probe = min(larger, key=lambda p: p["prune_last"])
        fixed = apply_method(
            full_run.store, run_id=full_run.run_id, method="partial-amnesiac",
            forget=ForgetSpec(classes=(FORGET_CLASS,)),
            method_options={"prune_first": probe["prune_first"], "prune_last": probe["prune_last"]},
            device=CPU, publish=False,
        )
        assert accuracy(collect_outputs(fixed.outcome.model, forget, device=CPU)) == pytest.approx(probe["value"])
        assert probe["value"] > 0.0
    # The probes' pruned shares grow with the last layer's share.
    ordered = sorted(record["probes"], key=lambda p: p["prune_last"])
    shares = [p["pruned_share"] for p in ordered]
    assert shares == sorted(shares)


def test_threshold_allows_more_pruning(full_run: RecordedRun) -> None:
    strict = _auto(full_run, ForgetSpec(classes=(FORGET_CLASS,)), PruneSearch(max_probes=5)).outcome.details
    loose = _auto(full_run, ForgetSpec(classes=(FORGET_CLASS,)), PruneSearch(max_probes=5, max_forget_acc=0.5)).outcome.details
    assert loose["prune_last"] >= strict["prune_last"]
    assert loose["prune_auto"]["chosen"]["value"] <= 0.5


def test_subject_forgetting_uses_mia_auc(full_run: RecordedRun) -> None:
    search = PruneSearch(max_probes=5)
    done = _auto(full_run, ForgetSpec(subjects=("subject-0003",)), search)
    record = done.outcome.details["prune_auto"]
    assert record["criterion"] == "mia_auc"
    if record["met"]:
        _check_largest(record, search)
        assert record["chosen"]["value"] <= search.mia_target + search.mia_tolerance
    else:  # even the full updates leave the attack above 0.52: the floor, flagged
        assert record["chosen"]["prune_last"] == record["floor"]
    assert len(record["probes"]) <= 5


def test_partial_recording_never_prunes_below_what_was_recorded(tmp_path) -> None:
    run = _train(tmp_path, record="partial", prune=(0.9, 0.3))
    done = _auto(run, ForgetSpec(classes=(FORGET_CLASS,)), PruneSearch(max_probes=4))
    record = done.outcome.details["prune_auto"]
    assert record["floor"] == pytest.approx(0.3)
    assert all(p["prune_last"] >= 0.3 - 1e-12 for p in record["probes"])
    assert all(p["prune_first"] == pytest.approx(0.9) for p in record["probes"])
    with pytest.raises(RunError, match="lighter than the run's recorded"):
        _auto(run, ForgetSpec(classes=(FORGET_CLASS,)), PruneSearch(), prune_first=0.5)


def test_bad_requests_are_clear_errors(full_run: RecordedRun) -> None:
    with pytest.raises(MethodError, match="partial-amnesiac"):
        apply_method(
            full_run.store, run_id=full_run.run_id, method="amnesiac", forget=ForgetSpec(classes=(1,)),
            method_options={"prune_search": PruneSearch()}, device=CPU, publish=False,
        )
    with pytest.raises(MethodError, match="drop --prune-last"):
        _auto(full_run, ForgetSpec(classes=(1,)), PruneSearch(), prune_last=0.6)
    with pytest.raises(MethodError, match="at least 2 probes"):
        PruneSearch(max_probes=1)
    with pytest.raises(MethodError, match="criterion"):
        PruneSearch(criterion="accuracy")  # type: ignore[arg-type]


def test_criterion_resolution_and_pruned_share() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    assert resolve_criterion(PruneSearch(), labels, np.array([2, 3])) == "forget_acc"
    assert resolve_criterion(PruneSearch(), labels, np.array([2])) == "mia_auc"
    assert resolve_criterion(PruneSearch(criterion="mia_auc"), labels, np.array([2, 3])) == "mia_auc"
    shapes = {"a.weight": [10], "b.weight": [30]}
    assert pruned_share(PruneSchedule(0.9, 0.5), shapes) == pytest.approx((0.9 * 10 + 0.5 * 30) / 40)


def test_cli_prune_auto(tmp_path, full_run: RecordedRun) -> None:
    runner = CliRunner()
    store = str(full_run.store.url)
    result = runner.invoke(app, [
        "unlearn", "--store", store, "--run-id", full_run.run_id, "--method", "partial-amnesiac",
        "--forget-class", str(FORGET_CLASS), "--prune", "auto", "--auto-probes", "3", "--dry-run",
        "--no-evaluate", "--device", "cpu", "--json",
    ])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["prune_auto"]["criterion"] == "forget_acc"
    assert len(out["prune_auto"]["probes"]) <= 3
    assert out["prune_last"] == out["prune_auto"]["chosen"]["prune_last"]
    bad = runner.invoke(app, [
        "unlearn", "--store", store, "--run-id", full_run.run_id, "--method", "partial-amnesiac",
        "--forget-class", "1", "--prune", "0.5", "--device", "cpu",
    ])
    assert bad.exit_code != 0
    assert "only 'auto'" in bad.output
