"""``record_training``: a user's own training loop recorded as a run that every loader and
the amnesiac methods use unchanged, and ``lethe unlearn`` on such a run.

Each test trains a tiny model on a few random tensors for a handful of steps, tracks the
true state after every step itself, and checks the stored run against it bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from unlearning_core import record_training
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import ModelError, RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.amnesiac import subtract_steps
from unlearning_core.pipeline import apply_method
from unlearning_core.recording import decode_update
from unlearning_core.recording.loop import normalise_sample_ids
from unlearning_core.recording.masks import fixed_keep, random_keep
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.store import LocalBlobStore

FACTORY = "tests.test_record_training:tiny_net"
CPU = torch.device("cpu")
FEATURES, CLASSES = 6, 3


def tiny_net(*, width: int = 8, bn: bool = False) -> nn.Module:
    """The tests' model factory (imported back by its path when a run is unlearned)."""
    layers: list[tuple[str, nn.Module]] = [("fc1", nn.Linear(FEATURES, width))]
    if bn:
        layers.append(("bn", nn.BatchNorm1d(width)))
    layers += [("relu", nn.ReLU()), ("head", nn.Linear(width, CLASSES))]
    return nn.Sequential(OrderedDict(layers))


def data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


X, Y = data()
#: Two epochs of six batches of eight samples, shuffled per epoch; ids are the user's own.
IDS = [f"s{i:02d}" for i in range(len(X))]


def plan(epochs: int = 2, batch: int = 8, seed: int = 0) -> list[tuple[int, list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for e in range(epochs):
        order = rng.permutation(len(X))
        out += [(e, order[i : i + batch].tolist()) for i in range(0, len(order), batch)]
    return out


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def stored_updates(run: RecordedRun) -> list[dict[str, torch.Tensor]]:
    fmt = run.update_format()
    return [
        decode_update(run.store.get(b.key, expected_sha256=b.sha256), fmt,
                      epoch=int(run.index.epochs[s]), batch=int(run.index.batches[s]))
        for s, b in enumerate(run.update_blobs)
    ]


def minus(state: dict[str, torch.Tensor], updates: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``state`` minus the sum of ``updates``, summed in order as the amnesiac method does."""
    out = dict(state)
    names = updates[0].keys() if updates else ()
    for name in names:
        total = torch.zeros_like(updates[0][name], dtype=torch.float32)
        for u in updates:
            total += u[name]
        out[name] = (state[name].float() - total).to(state[name].dtype)
    return out


def assert_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        if exact:
            assert torch.equal(value, b[k]), k
        else:
            torch.testing.assert_close(value, b[k], rtol=0, atol=1e-6, msg=k)


def sgd_loop(
    model: nn.Module, opt: torch.optim.Optimizer, rec, *, steps: list[tuple[int, list[int]]],
    after_step: Callable[[], None] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The user's loop: one window per optimizer step; returns the state after each step."""
    states = []
    for epoch, pos in steps:
        with rec.step([IDS[p] for p in pos], epoch=epoch):
            F.cross_entropy(model(X[pos]), Y[pos]).backward()
            opt.step()
            opt.zero_grad()
        if after_step is not None:
            after_step()
        states.append(float_state(model))
    return states


def forget_steps(steps: list[tuple[int, list[int]]], forget: set[str]) -> list[int]:
    return [k for k, (_, pos) in enumerate(steps) if forget & {IDS[p] for p in pos}]


# --- what is recorded ---------------------------------------------------------------------


def test_full_recording_is_what_lethe_train_records_and_unlearns_exactly(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "store")
    torch.manual_seed(0)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = plan()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with record_training(model, opt, store=store, run_id="own-full", model_factory=FACTORY, mode="full",
                         seed=7, metadata={"owner": "tests"}) as rec:
        states = sgd_loop(model, opt, rec, steps=steps)
    assert rec.run is not None and rec.steps == len(steps)

    run = open_artifact(store, "own-full")
    spec = run.spec
    assert spec.method == "amnesiac" and spec.recording.mode == "full"
    assert spec.model == FACTORY and spec.loop is not None and spec.loop.model_factory == FACTORY
    assert spec.dataset is None and spec.loop.metadata == {"owner": "tests"}
    assert spec.loop.optimizers == ["torch.optim.sgd.SGD"] and spec.loop.optimizer_steps == len(steps)
    assert spec.loop.optimizer_settings["lr"] == 0.1 and spec.training.momentum == 0.9
    assert spec.training.seed == 7 and spec.training.epochs == 2 and spec.training.batch_size == 8
    assert spec.results.steps == run.index.n_steps == len(steps) == len(run.update_blobs)
    assert list(spec.tensors) == ["fc1.weight", "fc1.bias", "head.weight", "head.bias"]
    # the user's own ids, in the order first seen; each step's batch under them
    first_seen = list(dict.fromkeys(IDS[p] for _, pos in steps for p in pos))
    assert run.sample_table["sample_ids"] == first_seen
    for k, (epoch, pos) in enumerate(steps):
        held = [first_seen[i] for i in run.index.step_positions(k)]
        assert held == [IDS[p] for p in pos] and run.index.epochs[k] == epoch
    # every blob is stored with its sha256 and verified against run.json
    pointers = [spec.initial_weights, spec.trained_weights, spec.samples, spec.index, spec.updates,
                *run.update_blobs]
    for p in pointers:
        assert hashlib.sha256(store.get(p.key)).hexdigest() == p.sha256
    assert_states_equal(run.load_weights(spec.initial_weights), initial)
    assert_states_equal(run.load_weights(spec.trained_weights), model.state_dict())
    # each stored update is that step's change of the state, bit for bit
    updates = stored_updates(run)
    for k, (update, after) in enumerate(zip(updates, states, strict=True)):
        prev = initial if k == 0 else states[k - 1]
        assert_states_equal(update, {n: after[n] - prev[n] for n in update})
    # all of them together give back the initial weights
    all_back, _ = subtract_steps(run, run.load_weights(spec.trained_weights), list(range(len(steps))),
                                 prune=None, device=CPU)
    assert_states_equal(all_back, initial, exact=False)

    forget = {"s05", "s17"}
    done = apply_method(store, run_id="own-full", method="amnesiac",
                        forget=ForgetSpec(sample_ids=tuple(sorted(forget))), device=CPU)
    affected = forget_steps(steps, forget)
    assert sorted(done.outcome.subtracted_steps) == affected and len(affected) == 4
    expected = minus(dict(model.state_dict()), [updates[k] for k in affected])
    assert_states_equal(done.outcome.model.state_dict(), expected)
    assert done.version is not None and done.version.version == 1
    published = run.load_weights(done.version.weights)
    assert_states_equal(published, expected)
    assert run.ledger().subtracted_steps == affected


@pytest.mark.parametrize("mask", ["fixed", "random"])
def test_partial_recording_subtracts_exactly_the_stored_pruned_updates(tmp_path: Path, mask: str) -> None:
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(1)
    model = tiny_net(width=16, bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = plan(epochs=1)
    before = float_state(model)
    with record_training(model, opt, store=store, run_id="own-partial", model_factory=FACTORY,
                         model_kwargs={"width": 16, "bn": True}, mode="partial", prune_first=0.9,
                         prune_last=0.3, mask_seed=5, mask=mask) as rec:
        states = sgd_loop(model, opt, rec, steps=steps)
    run = open_artifact(store, "own-partial")
    assert run.spec.recording.mask == mask
    assert run.spec.method == "partial-amnesiac" and run.spec.loop.model_kwargs == {"width": 16, "bn": True}
    # layers in depth order (fc1, bn, head), not in the name order run.json's sorted keys have
    assert list(run.spec.tensors)[:2] == ["fc1.weight", "fc1.bias"]
    fmt = run.update_format()
    assert fmt.shares["fc1.weight"] == pytest.approx(0.9) and fmt.shares["bn.running_var"] == pytest.approx(0.6)
    assert fmt.shares["head.bias"] == pytest.approx(0.3)
    updates = stored_updates(run)
    for k, update in enumerate(updates):  # stored = mask x true update (fixed: one mask for every step)
        prev = before if k == 0 else states[k - 1]
        for name, u in update.items():
            keep = (fixed_keep(u.shape, fmt.shares[name], seed=5, tensor_name=name) if mask == "fixed" else
                    random_keep(u.shape, fmt.shares[name], seed=5, epoch=0, batch=k, tensor_name=name))
            assert torch.equal(u, (states[k][name] - prev[name]) * keep), (k, name)
        assert int((update["fc1.weight"] != 0).sum()) < 0.25 * update["fc1.weight"].numel()
    forget = {IDS[steps[2][1][0]]}
    done = apply_method(store, run_id="own-partial", method="partial-amnesiac",
                        forget=ForgetSpec(sample_ids=tuple(forget)), method_options={"bn_repair": "never"},
                        device=CPU)
    affected = forget_steps(steps, forget)
    assert sorted(done.outcome.subtracted_steps) == affected == [2]
    assert_states_equal(done.outcome.model.state_dict(),
                        minus(dict(model.state_dict()), [updates[k] for k in affected]))


def test_grouped_and_compressed_steps_hold_their_summed_update_and_the_union_of_their_ids(
    tmp_path: Path,
) -> None:
    """``group_steps=4`` over two epochs of six steps: groups of 4 + 2 per epoch (a group never
    spans two epochs), each blob the sum of its steps' updates (zlib-compressed), and an
    erasure subtracts every group that held a forget sample."""
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(2)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = plan()
    initial = float_state(model)
    with record_training(model, opt, store=store, run_id="grouped", model_factory=FACTORY, mode="full",
                         group_steps=4, compression="zlib") as rec:
        states = sgd_loop(model, opt, rec, steps=steps)
    run = open_artifact(store, "grouped")
    spec = run.spec
    assert spec.recording.group_steps == 4 and spec.recording.compression == "zlib" and spec.recording.format == 3
    groups = [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11]]  # step numbers of each recorded group
    assert rec.steps == run.index.n_steps == len(run.update_blobs) == len(groups)
    assert spec.loop.optimizer_steps == len(steps) == 12 and spec.results.samples_processed == 12 * 8
    assert spec.training.batch_size == 8 and spec.training.epochs == 2
    assert [int(e) for e in run.index.epochs] == [0, 0, 1, 1] and [int(b) for b in run.index.batches] == [0, 1, 0, 1]
    table = run.sample_table["sample_ids"]
    updates = stored_updates(run)
    for g, members in enumerate(groups):
        want = list(dict.fromkeys(IDS[p] for k in members for p in steps[k][1]))
        assert [table[i] for i in run.index.step_positions(g)] == want
        start = initial if members[0] == 0 else states[members[0] - 1]
        assert_states_equal(updates[g], {n: states[members[-1]][n] - start[n] for n in updates[g]})
    zlib.decompress(store.get(run.update_blobs[0].key))  # stored as a zlib stream

    forget = {IDS[steps[5][1][0]]}  # in step 5, so in the second group
    done = apply_method(store, run_id="grouped", method="amnesiac",
                        forget=ForgetSpec(sample_ids=tuple(forget)), device=CPU)
    held = sorted({g for g, members in enumerate(groups) for k in members if forget & {IDS[p] for p in steps[k][1]}})
    assert 1 in held and sorted(done.outcome.subtracted_steps) == held
    assert_states_equal(done.outcome.model.state_dict(), minus(dict(model.state_dict()), [updates[g] for g in held]))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_group_steps_must_be_a_positive_integer(tmp_path: Path, bad: object) -> None:
    with pytest.raises(RunError, match="group_steps must be an integer"):
        record_training(tiny_net(), store=LocalBlobStore(tmp_path), run_id="r", model_factory=FACTORY,
                        group_steps=bad)  # type: ignore[arg-type]
    with pytest.raises(RunError, match="compression must be 'none' or 'zlib'"):
        record_training(tiny_net(), store=LocalBlobStore(tmp_path), run_id="r", model_factory=FACTORY,
                        compression="lz4")  # type: ignore[arg-type]
    assert not any(tmp_path.rglob("*.json"))


# --- accumulation, mixed precision, schedulers, frozen parameters, buffers ----------------------


def _accumulated_run(tmp_path: Path, form: str) -> tuple[RecordedRun, list[list[str]], list[dict]]:
    store = LocalBlobStore(tmp_path / form)
    torch.manual_seed(2)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    micro = [pos for _, pos in plan(epochs=1, batch=4)][:6]  # 3 optimizer steps of 2 micro-batches
    groups = [micro[i : i + 2] for i in range(0, 6, 2)]
    states = []
    with record_training(model, opt, store=store, run_id=form, model_factory=FACTORY, mode="full") as rec:
        if form == "one-window":  # every micro-batch of a step inside one window
            for group in groups:
                with rec.step(epoch=0) as step:
                    for pos in group:
                        step.add([IDS[p] for p in pos])
                        (F.cross_entropy(model(X[pos]), Y[pos]) / 2).backward()
                    opt.step()
                    opt.zero_grad()
                states.append(float_state(model))
        else:  # one window per micro-batch: merged until the optimizer step applies them
            for i, pos in enumerate(p for group in groups for p in group):
                with rec.step([IDS[p] for p in pos], epoch=0):
                    (F.cross_entropy(model(X[pos]), Y[pos]) / 2).backward()
                    if i % 2 == 1:
                        opt.step()
                        opt.zero_grad()
                if i % 2 == 1:
                    states.append(float_state(model))
    union = [[IDS[p] for pos in group for p in pos] for group in groups]
    return open_artifact(store, form), union, states


def test_gradient_accumulation_records_one_step_per_optimizer_step(tmp_path: Path) -> None:
    runs = {form: _accumulated_run(tmp_path, form) for form in ("one-window", "window-per-micro-batch")}
    reference = None
    for form, (run, union, states) in runs.items():
        loop = run.spec.loop
        assert run.index.n_steps == 3 and loop.optimizer_steps == 3 and loop.skipped_steps == []
        assert loop.merged_windows == (0 if form == "one-window" else 3)
        table = run.sample_table["sample_ids"]
        for k, ids in enumerate(union):  # a step's samples: the union of its micro-batches
            assert [table[i] for i in run.index.step_positions(k)] == list(dict.fromkeys(ids))
        updates = stored_updates(run)
        for k in range(1, 3):
            assert_states_equal(updates[k], {n: states[k][n] - states[k - 1][n] for n in updates[k]})
        if reference is None:
            reference = updates
        for a, b in zip(reference, updates, strict=True):  # both forms record the same updates
            assert_states_equal(a, b)
        forget = union[1][0]
        done = apply_method(run.store, run_id=run.run_id, method="amnesiac",
                            forget=ForgetSpec(sample_ids=(forget,)), device=CPU, publish=False)
        assert done.outcome.subtracted_steps == {1}


@pytest.mark.parametrize("zero_grad_at", ["end", "start"])
def test_a_step_the_grad_scaler_skips_records_a_zero_update_and_is_listed(tmp_path: Path, zero_grad_at: str) -> None:
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(3)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    steps = plan(epochs=1)[:4]
    initial = float_state(model)
    with record_training(model, opt, store=store, run_id="amp", model_factory=FACTORY, mode="full") as rec:
        for k, (_, pos) in enumerate(steps):
            with rec.step([IDS[p] for p in pos]):
                if zero_grad_at == "start":
                    opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(X[pos])
                scaler.scale(F.cross_entropy(out.float(), Y[pos])).backward()
                if k == 2:
                    model.fc1.weight.grad[0, 0] = float("inf")  # an overflow: the scaler skips
                scaler.step(opt)
                scaler.update()
                if zero_grad_at == "end":
                    opt.zero_grad()
    run = open_artifact(store, "amp")
    assert run.spec.loop.skipped_steps == [2] and run.spec.loop.optimizer_steps == 3
    assert run.index.n_steps == 4 and run.spec.loop.merged_windows == 0
    updates = stored_updates(run)
    assert all(not u.any() for u in updates[2].values())  # nothing changed in that step
    assert all(updates[1][n].any() for n in updates[1])
    all_back, _ = subtract_steps(run, run.load_weights(run.spec.trained_weights), [0, 1, 2, 3],
                                 prune=None, device=CPU)
    assert_states_equal(all_back, initial, exact=False)


def test_lr_scheduler_and_a_discovered_optimizer(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(4)
    model = tiny_net()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    steps = plan(epochs=1)
    initial = float_state(model)
    # no optimizer passed: the recorder finds the one that steps the model's parameters
    with record_training(model, store=store, run_id="adam", model_factory=FACTORY, mode="full") as rec:
        states = sgd_loop(model, opt, rec, steps=steps, after_step=sched.step)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    run = open_artifact(store, "adam")
    loop = run.spec.loop
    assert loop.optimizers == ["torch.optim.adam.Adam"] and loop.optimizer_steps == len(steps)
    assert loop.optimizer_settings["lr"] == pytest.approx(0.05) and run.spec.training.momentum == 0.9
    updates = stored_updates(run)
    for k in range(1, len(steps)):
        assert_states_equal(updates[k], {n: states[k][n] - states[k - 1][n] for n in updates[k]})
    assert_states_equal(updates[0], {n: states[0][n] - initial[n] for n in updates[0]})
    done = apply_method(store, run_id="adam", method="amnesiac",
                        forget=ForgetSpec(sample_ids=(IDS[steps[4][1][3]],)), device=CPU)
    assert done.outcome.subtracted_steps == {4}
    assert_states_equal(done.outcome.model.state_dict(), minus(dict(model.state_dict()), [updates[4]]))


def test_frozen_parameters_are_not_recorded_and_keep_their_weights(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(5)
    model = tiny_net()
    model.fc1.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    frozen = {k: v.clone() for k, v in model.fc1.state_dict().items()}
    steps = plan(epochs=1)
    with record_training(model, opt, store=store, run_id="frozen", model_factory=FACTORY, mode="full") as rec:
        sgd_loop(model, opt, rec, steps=steps)
    run = open_artifact(store, "frozen")
    assert list(run.spec.tensors) == ["head.weight", "head.bias"]
    assert run.spec.loop.frozen_tensors == ["fc1.weight", "fc1.bias"]
    trained = run.load_weights(run.spec.trained_weights)
    assert torch.equal(trained["fc1.weight"], frozen["weight"]) and torch.equal(trained["fc1.bias"], frozen["bias"])
    assert_states_equal(trained, model.state_dict())
    done = apply_method(store, run_id="frozen", method="amnesiac",
                        forget=ForgetSpec(sample_ids=(IDS[steps[0][1][0]],)), device=CPU, publish=False)
    out = done.outcome.model.state_dict()
    assert torch.equal(out["fc1.weight"], frozen["weight"]) and not torch.equal(out["head.weight"], trained["head.weight"])

    # a frozen parameter that starts training mid-run would go unrecorded: refused
    torch.manual_seed(5)
    model = tiny_net()
    model.fc1.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(RunError, match="fc1.weight was frozen"),
        record_training(model, opt, store=store, run_id="unfrozen", model_factory=FACTORY, mode="full") as rec,
    ):
        model.fc1.requires_grad_(True)
        sgd_loop(model, opt, rec, steps=steps[:2])
    with pytest.raises(RunError, match="incomplete"):
        open_artifact(store, "unfrozen")


def test_batchnorm_statistics_changed_by_the_forward_pass_are_part_of_the_update(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(6)
    model = tiny_net(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    steps = plan(epochs=1)
    initial = float_state(model)
    with record_training(model, opt, store=store, run_id="bn", model_factory=FACTORY,
                         model_kwargs={"bn": True}, mode="full") as rec:
        states = sgd_loop(model, opt, rec, steps=steps[:3])
        with torch.no_grad():  # a forward outside any window (train mode): counts toward the next step
            model(X[:8])
        states += sgd_loop(model, opt, rec, steps=steps[3:])
        with torch.no_grad():  # after the last window: a last step that holds no sample
            model(X[8:16])
    run = open_artifact(store, "bn")
    assert {"bn.running_mean", "bn.running_var"} <= set(run.spec.tensors)
    assert run.index.n_steps == len(steps) + 1 and run.spec.loop.unattributed_steps == [len(steps)]
    assert len(run.index.step_positions(len(steps))) == 0
    updates = stored_updates(run)
    assert_states_equal(updates[1], {n: states[1][n] - states[0][n] for n in updates[1]})
    assert updates[1]["bn.running_mean"].any()
    assert_states_equal(updates[3], {n: states[3][n] - states[2][n] for n in updates[3]})  # incl. that forward
    all_back, _ = subtract_steps(run, run.load_weights(run.spec.trained_weights),
                                 list(range(run.index.n_steps)), prune=None, device=CPU)
    assert_states_equal({k: all_back[k] for k in initial}, initial, exact=False)
    assert_states_equal(run.load_weights(run.spec.trained_weights), model.state_dict())
    forget = (IDS[steps[4][1][0]],)
    done = apply_method(store, run_id="bn", method="amnesiac", forget=ForgetSpec(sample_ids=forget),
                        method_options={"bn_repair": "never"}, device=CPU, publish=False)
    assert done.outcome.subtracted_steps == {4}
    assert_states_equal({k: v for k, v in done.outcome.model.state_dict().items() if k in initial},
                        {k: v for k, v in minus(dict(model.state_dict()), [updates[4]]).items() if k in initial})


# --- sample ids ----------------------------------------------------------------------------


def test_integer_and_string_ids_are_normalised_and_duplicates_allowed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(7)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [torch.tensor([3, 3, 5]), np.array([5, 7]), ["a", 7, np.int64(9), "a"]]
    with record_training(model, opt, store=store, run_id="ids", model_factory=FACTORY, mode="full") as rec:
        for ids in batches:
            pos = [i % len(X) for i in range(len(ids))]
            with rec.step(ids):
                F.cross_entropy(model(X[pos]), Y[pos]).backward()
                opt.step()
                opt.zero_grad()
    run = open_artifact(store, "ids")
    table = run.sample_table["sample_ids"]
    assert table == ["3", "5", "7", "a", "9"]
    assert [[table[i] for i in run.index.step_positions(k)] for k in range(3)] == [["3", "5"], ["5", "7"], ["a", "7", "9"]]
    done = apply_method(store, run_id="ids", method="amnesiac", forget=ForgetSpec(sample_ids=("7",)),
                        device=CPU, publish=False)
    assert done.outcome.subtracted_steps == {1, 2}
    for bad, message in [("abc", "single value"), (torch.tensor([1.0]), "float"), ([1.5], "not a string"),
                         ([" x"], "whitespace"), ([""], "empty"), ([True], "boolean"), (["a\nb"], "line break")]:
        with pytest.raises(RunError, match=message):
            normalise_sample_ids(bad)


# --- crashes and misuse --------------------------------------------------------------------------


def test_a_crash_inside_the_loop_leaves_an_incomplete_run_that_every_loader_refuses(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    torch.manual_seed(8)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(ValueError, match="boom"),  # the user's own exception, unchanged
        record_training(model, opt, store=store, run_id="crash", model_factory=FACTORY, mode="full") as rec,
    ):
        sgd_loop(model, opt, rec, steps=plan(epochs=1)[:3])
        with rec.step(["s00"]):
            raise ValueError("boom")
    assert not store.exists("runs/crash/run.json") and not store.exists("runs/crash/ledger.json")
    assert json.loads(store.get("runs/crash/recording.json"))["status"] == "incomplete"
    for load in (RecordedRun.open, open_artifact):
        with pytest.raises(RunError, match=r"incomplete: its training loop stopped with ValueError: boom after 3"):
            load(store, "crash")
    with pytest.raises(RunError, match="incomplete"):
        apply_method(store, run_id="crash", method="amnesiac", forget=ForgetSpec(sample_ids=("s00",)), device=CPU)
    with pytest.raises(RunError, match="already recorded"):  # its id is never reused
        record_training(tiny_net(), store=store, run_id="crash", model_factory=FACTORY).start()

    # a process that died mid-run (no exit at all) reads as incomplete too
    rec = record_training(tiny_net(), store=store, run_id="died", model_factory=FACTORY)
    rec.start()
    with pytest.raises(RunError, match="still being recorded, or its process died"):
        open_artifact(store, "died")
    rec.abort()


def test_an_optimizer_step_outside_a_window_stops_the_recording(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with (
        pytest.raises(RunError, match="outside a rec.step"),
        record_training(model, opt, store=store, run_id="outside", model_factory=FACTORY) as rec,
    ):
        with rec.step(["s00"]):
            F.cross_entropy(model(X[:1]), Y[:1]).backward()
        opt.step()
    with pytest.raises(RunError, match="SGD.step\\(\\) ran outside"):
        open_artifact(store, "outside")
    opt.step()  # the hook is gone with the recording


def test_factory_and_argument_errors_are_raised_before_anything_is_written(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    model = tiny_net()
    with pytest.raises(ModelError, match="differs from the trained one"):
        record_training(model, store=store, run_id="w", model_factory=FACTORY, model_kwargs={"width": 4}).start()
    with pytest.raises(ModelError, match="cannot import"):
        record_training(model, store=store, run_id="w", model_factory="no_such_pkg.nets:build").start()
    with pytest.raises(ModelError, match="lambda"):
        record_training(model, store=store, run_id="w", model_factory=lambda: tiny_net()).start()
    with pytest.raises(RunError, match="holds none"):
        record_training(model, torch.optim.SGD(tiny_net().parameters(), lr=0.1), store=store,
                        run_id="w", model_factory=FACTORY).start()
    with pytest.raises(RunError, match="mode"):
        record_training(model, store=store, run_id="w", model_factory=FACTORY, mode="none")
    with pytest.raises(RunError, match="run id"):
        record_training(model, store=store, run_id="../x", model_factory=FACTORY)
    assert store.list("runs/") == []
    # a callable that imports back by its name is stored as that name
    with record_training(model, store=store, run_id="by-callable", model_factory=tiny_net) as rec:
        pass
    assert rec.run is not None and rec.run.spec.loop.model_factory == FACTORY and rec.run.spec.results.steps == 0


def test_what_needs_the_data_says_so_on_a_run_without_a_dataset(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with record_training(model, opt, store=store, run_id="nodata", model_factory=FACTORY, mode="full") as rec:
        sgd_loop(model, opt, rec, steps=plan(epochs=1)[:2])
    run = open_artifact(store, "nodata")
    dataset = run.dataset()
    assert dataset.train.sample_ids == tuple(run.sample_table["sample_ids"]) and len(dataset.test) == 0
    with pytest.raises(RunError, match="names no dataset"):
        dataset.train.images.to("cpu")
    with pytest.raises(RunError, match="names no dataset"):  # a recovery fine-tune needs retained data
        apply_method(store, run_id="nodata", method="amnesiac", forget=ForgetSpec(sample_ids=dataset.train.sample_ids[:1]),
                     method_options={"recovery_steps": 2}, device=CPU)
    assert run.ledger().head.version == 0  # nothing was published


# --- lethe unlearn --------------------------------------------------------------------------


def _lethe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("lethe")), *args],
                          check=False, capture_output=True, text=True, timeout=300)


def test_lethe_unlearn_on_a_recorded_run(tmp_path: Path) -> None:
    from unlearning_core.models import create_model

    store = LocalBlobStore(tmp_path / "store")
    kwargs = {"in_channels": 1, "image_size": [2, 3], "num_classes": CLASSES}
    torch.manual_seed(9)
    model = create_model("mlp", **kwargs)  # a built-in name as the factory: no import path
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = plan(epochs=1)
    with record_training(model, opt, store=store, run_id="cli-own", model_factory="mlp", model_kwargs=kwargs,
                         mode="full") as rec:
        sgd_loop(model, opt, rec, steps=steps)
    run = open_artifact(store, "cli-own")
    updates = stored_updates(run)
    forget = {IDS[steps[1][1][2]], IDS[steps[4][1][0]]}
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("\n".join(sorted(forget)) + "\n")
    common = ["unlearn", "--store", str(store.root), "--run-id", "cli-own", "--method", "amnesiac",
              "--forget-ids", str(ids_file), "--device", "cpu", "--json"]

    refused = _lethe(*common)  # no data to evaluate on: says what to pass, publishes nothing
    assert refused.returncode == 2 and "--no-evaluate" in refused.stderr, refused.stderr
    assert run.ledger().head.version == 0

    done = _lethe(*common, "--no-evaluate")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["version"] == 1 and out["forget_samples"] == 2 and out["batches_subtracted"] == 2
    weights = load_file(out["weights"])
    assert_states_equal(weights, minus(dict(model.state_dict()), [updates[k] for k in forget_steps(steps, forget)]))

    with (
        pytest.raises(ValueError, match="killed"),
        record_training(tiny_net(), store=store, run_id="cli-crash", model_factory=FACTORY),
    ):
        raise ValueError("killed")
    crashed = _lethe("unlearn", "--store", str(store.root), "--run-id", "cli-crash", "--method", "amnesiac",
                     "--forget-ids", str(ids_file), "--no-evaluate", "--device", "cpu")
    assert crashed.returncode == 2 and "incomplete" in crashed.stderr and "ValueError: killed" in crashed.stderr
