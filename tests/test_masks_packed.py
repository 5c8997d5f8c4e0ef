"""Fixed per-layer masks with packed storage, and unlearning at the store's speed.

The formula's P_l: one 0/1 mask per tensor for the whole run, stored once; each step's
blob holds only the kept values, contiguous. Unlearning sums packed vectors and scatters
once; harder pruning at request time selects the nested subset of the packed entries.
Runs recorded before (random masks, format 1) must still unlearn bit for bit as before.
Also: float16 / bfloat16 blobs are summed in float32, and the read-ahead holds at most its
byte bound.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from torch import nn

from unlearning_core import record_training
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import BlobIntegrityError, RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.methods.amnesiac import subtract_steps
from unlearning_core.pipeline import apply_method
from unlearning_core.recording import (
    DEFAULT_MASK,
    FixedMasks,
    PruneSchedule,
    UpdateFormat,
    UpdateSum,
    decode_update,
    encode_update,
    with_fixed_masks,
)
from unlearning_core.recording.codec import read_tensors, serialize
from unlearning_core.recording.masks import (
    fixed_keep,
    fixed_scores,
    magnitude_k,
    magnitude_topk,
    random_scores,
)
from unlearning_core.recording.prefetch import Prefetch
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import RECORDING_FORMAT, RecordingSpec, RunSpec
from unlearning_core.store import BlobRef, BlobStore, LocalBlobStore

FACTORY = "tests.test_masks_packed:tiny_net"
CPU = torch.device("cpu")
FEATURES, CLASSES = 6, 3
SHAPES = {"fc1.weight": (16, 6), "fc1.bias": (16,), "head.weight": (3, 16), "head.bias": (3,)}


def tiny_net(*, width: int = 16) -> nn.Module:
    """The tests' model factory (imported back by its path when a run is unlearned)."""
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(FEATURES, width)), ("relu", nn.ReLU()), ("head", nn.Linear(width, CLASSES)),
    ]))


def _data(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FEATURES, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


X, Y = _data()
IDS = [f"s{i:02d}" for i in range(len(X))]


def _plan(epochs: int = 2, batch: int = 8) -> list[tuple[int, list[int]]]:
    rng = np.random.default_rng(0)
    out = []
    for e in range(epochs):
        order = rng.permutation(len(X))
        out += [(e, order[i : i + batch].tolist()) for i in range(0, len(order), batch)]
    return out


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def record(store: BlobStore, run_id: str, *, mode: str = "partial", mask: str = DEFAULT_MASK,
           prune: tuple[float, float] = (0.7, 0.3), dtype: str = "float32",
           ) -> tuple[RecordedRun, list[dict[str, torch.Tensor]], list[tuple[int, list[int]]]]:
    """A user's loop recorded with ``record_training``; the true state before and after
    every step (``states[0]`` is the initial state)."""
    torch.manual_seed(3)
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    steps = _plan()
    states = [_state(model)]
    with record_training(model, opt, store=store, run_id=run_id, model_factory=FACTORY, mode=mode,
                         prune_first=prune[0], prune_last=prune[1], mask=mask, mask_seed=11,
                         dtype=dtype) as rec:
        for epoch, pos in steps:
            with rec.step([IDS[p] for p in pos], epoch=epoch):
                F.cross_entropy(model(X[pos]), Y[pos]).backward()
                opt.step()
                opt.zero_grad()
            states.append(_state(model))
    return open_artifact(store, run_id), states, steps


def affected(steps: list[tuple[int, list[int]]], forget: set[str]) -> list[int]:
    return [k for k, (_, pos) in enumerate(steps) if forget & {IDS[p] for p in pos}]


def by_hand(final: Mapping[str, torch.Tensor], states: list[dict[str, torch.Tensor]], ks: list[int],
            keep: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """final - sum_k (delta_k * P), summed in step order in float32."""
    out = dict(final)
    for name, p in keep.items():
        total = torch.zeros(p.shape, dtype=torch.float32)
        for k in ks:
            total += (states[k + 1][name] - states[k][name]) * p
        out[name] = (final[name].float() - total).to(final[name].dtype)
    return out


def _fmt(mode: str, mask: str, first: float, last: float, dtype: str = "float32") -> UpdateFormat:
    shares = PruneSchedule(first, last).tensor_shares(SHAPES) if mode == "partial" else dict.fromkeys(SHAPES, 0.0)
    return with_fixed_masks(UpdateFormat(mode=mode, mask=mask, mask_seed=7, dtype=dtype, shares=shares, shapes=SHAPES))


def _delta(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


# --- the masks ----------------------------------------------------------------------------------


def test_fixed_masks_are_the_same_every_step_and_reproducible_from_the_seed() -> None:
    fmt = _fmt("partial", "fixed", 0.8, 0.3)
    masks = fmt.fixed
    assert masks is not None
    again = FixedMasks.generate(SHAPES, fmt.shares, seed=7)
    other = FixedMasks.generate(SHAPES, fmt.shares, seed=8)
    for name, shape in SHAPES.items():
        keep = fixed_keep(shape, fmt.shares[name], seed=7, tensor_name=name).reshape(-1)
        assert torch.equal(masks.index[name], torch.nonzero(keep, as_tuple=True)[0])
        assert torch.equal(again.index[name], masks.index[name])
        assert torch.equal(masks.scores(name), fixed_scores(shape, seed=7, tensor_name=name).reshape(-1)[keep])
    assert any(not torch.equal(other.index[n], masks.index[n]) for n in SHAPES)
    # every step keeps exactly the same entries: the formula's P_l, not a mask per (epoch, batch)
    for epoch, batch in ((0, 0), (0, 5), (3, 1)):
        dense = decode_update(serialize(encode_update(_delta(epoch * 10 + batch), fmt, epoch=epoch, batch=batch),
                                        epoch=epoch, batch=batch), fmt, epoch=epoch, batch=batch)
        for name, shape in SHAPES.items():
            keep = fixed_keep(shape, fmt.shares[name], seed=7, tensor_name=name)
            assert torch.equal(dense[name] != 0, keep), (epoch, batch, name)
    # the share of entries kept follows the layer's share
    n = masks.kept("fc1.weight") / 96
    assert 0.05 < n < 0.4


def test_packed_storage_round_trips_exactly() -> None:
    delta = _delta(1)
    fmt = _fmt("partial", "fixed", 0.6, 0.2)
    masks = fmt.fixed
    assert masks is not None
    blob = serialize(encode_update(delta, fmt, epoch=1, batch=2), epoch=1, batch=2)
    stored = st_load(blob)
    views = read_tensors(blob)
    assert stored.keys() == views.keys() == set(SHAPES)  # no per-step index: values only
    for name, d in delta.items():
        packed = d.reshape(-1)[masks.index[name]]
        assert torch.equal(stored[name], packed) and torch.equal(views[name], packed)
        assert stored[name].is_contiguous() and stored[name].dim() == 1
    dense = decode_update(blob, fmt, epoch=1, batch=2)
    for name, d in delta.items():
        assert torch.equal(dense[name], d * fixed_keep(d.shape, fmt.shares[name], seed=7, tensor_name=name))
    # bytes: the kept values only (plus the safetensors header)
    kept = sum(masks.kept(n) for n in SHAPES)
    assert 4 * kept < len(blob) < 4 * kept + 1024
    # the stored index round-trips and is checked against the run's recording
    back = FixedMasks.from_bytes(masks.to_bytes(), seed=7, shares=fmt.shares, shapes=SHAPES)
    for name in SHAPES:
        assert torch.equal(back.index[name], masks.index[name]) and torch.equal(back.scores(name), masks.scores(name))
    with pytest.raises(RunError, match="does not belong"):
        FixedMasks.from_bytes(masks.to_bytes(), seed=8, shares=fmt.shares, shapes=SHAPES)
    # float16 and bfloat16 packed values round-trip as those dtypes
    for dtype, tdtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        f = _fmt("partial", "fixed", 0.6, 0.2, dtype)
        b = serialize(encode_update(delta, f, epoch=0, batch=0), epoch=0, batch=0)
        for name, d in delta.items():
            assert torch.equal(read_tensors(b)[name], d.reshape(-1)[masks.index[name]].to(tdtype))


# --- unlearning a fixed-mask run ----------------------------------------------------------------


def test_unlearning_a_fixed_mask_run_is_final_minus_the_masked_updates(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    run, states, steps = record(store, "fixed")
    rec = run.spec.recording
    assert rec.mask == "fixed" and rec.format == RECORDING_FORMAT and rec.mask_index is not None
    assert store.exists(rec.mask_index.key)
    fmt = run.update_format()
    keep = {n: fixed_keep(s, fmt.shares[n], seed=11, tensor_name=n) for n, s in fmt.shapes.items()}
    forget = {IDS[steps[2][1][0]], IDS[steps[9][1][3]]}
    ks = affected(steps, forget)
    assert len(ks) >= 2
    done = apply_method(store, run_id="fixed", method="partial-amnesiac",
                        forget=ForgetSpec(sample_ids=tuple(forget)), method_options={"bn_repair": "never"},
                        device=CPU, publish=False)
    assert sorted(done.outcome.subtracted_steps) == ks
    got = done.outcome.model.state_dict()
    want = by_hand(states[-1], states, ks, keep)
    for name in keep:
        assert torch.equal(got[name], want[name]), name
    # bytes read: the affected steps' packed blobs only
    assert done.outcome.details["bytes_read"] == sum(run.update_blobs[k].size for k in ks)
    # all steps subtracted: the initial state on the kept entries, the final one elsewhere
    back, _ = subtract_steps(run, states[-1], list(range(len(steps))), prune=None, device=CPU)
    for name, p in keep.items():
        torch.testing.assert_close(back[name][p], states[0][name][p], rtol=0, atol=1e-5)
        assert torch.equal(back[name][~p], states[-1][name][~p])


def test_harder_pruning_on_a_fixed_mask_run_is_the_nested_subset(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    run, states, steps = record(store, "fixed", prune=(0.5, 0.2))
    full, full_states, _ = record(store, "full", mode="full", mask="fixed")
    assert all(torch.equal(a[n], b[n]) for a, b in zip(states, full_states, strict=True) for n in a)
    fmt = run.update_format()
    harder = PruneSchedule(0.8, 0.6).tensor_shares(fmt.shapes)
    ks = affected(steps, {IDS[steps[4][1][0]]})
    keep = {n: fixed_keep(s, harder[n], seed=11, tensor_name=n) for n, s in fmt.shapes.items()}
    kept_recorded = kept_harder = 0
    for n, p in keep.items():  # nested: the harder mask keeps a subset of the recorded one
        recorded = fixed_keep(fmt.shapes[n], fmt.shares[n], seed=11, tensor_name=n)
        assert bool((p <= recorded).all())
        kept_recorded, kept_harder = kept_recorded + int(recorded.sum()), kept_harder + int(p.sum())
        sel = fmt.fixed.select(n, harder[n])  # selected on the packed vector
        assert sel is not None and torch.equal(fmt.fixed.index[n][sel], torch.nonzero(p.reshape(-1))[:, 0])
    assert kept_harder < kept_recorded
    want = by_hand(states[-1], states, ks, keep)
    got, _ = subtract_steps(run, states[-1], ks, prune=harder, device=CPU)
    # the same pruning applied at request time to a full recording (same seed): same weights
    from_full, _ = subtract_steps(full, states[-1], ks, prune=harder, device=CPU)
    for name in keep:
        assert torch.equal(got[name], want[name]), name
        assert torch.equal(from_full[name], want[name]), name
    # and through the method's options (a full run may be pruned with any mask kind)
    done = apply_method(store, run_id="full", method="partial-amnesiac",
                        forget=ForgetSpec(sample_ids=(IDS[steps[4][1][0]],)),
                        method_options={"prune_first": 0.8, "prune_last": 0.6, "mask": "fixed",
                                        "bn_repair": "never"}, device=CPU, publish=False)
    assert all(torch.equal(done.outcome.model.state_dict()[n], want[n]) for n in keep)
    with pytest.raises(RunError, match="pruned entries are gone"):
        subtract_steps(run, states[-1], ks, prune=dict.fromkeys(fmt.shapes, 0.1), device=CPU)
    with pytest.raises(RunError, match="only a run that recorded full updates"):
        subtract_steps(run, states[-1], ks, prune=None, device=CPU, mask="random")


# --- precision ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "big"), [("float16", 2048.0), ("bfloat16", 256.0)])
@pytest.mark.parametrize(("mode", "mask"), [("full", "fixed"), ("partial", "fixed"), ("partial", "random"),
                                            ("partial", "magnitude")])
def test_half_precision_blobs_are_summed_in_float32(dtype: str, big: float, mode: str, mask: str) -> None:
    """big + 1 + 1 is not representable step by step in the stored dtype (spacing 2 at
    ``big``): a half-precision accumulator would give ``big``; float32 gives big + 2."""
    shapes = {"w": (64,)}
    shares = {"w": 0.0}
    fmt = with_fixed_masks(UpdateFormat(mode=mode, mask=mask, mask_seed=1, dtype=dtype, shares=shares, shapes=shapes))
    total = UpdateSum(fmt, device=CPU)
    for k, value in enumerate((big, 1.0, 1.0)):
        total.add(serialize(encode_update({"w": torch.full((64,), value)}, fmt, epoch=0, batch=k),
                            epoch=0, batch=k), epoch=0, batch=k)
    out = total.result()["w"]
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.full((64,), big + 2.0))
    half = torch.tensor(big, dtype=getattr(torch, dtype)) + 1 + 1
    assert float(half) == big  # what summing in the stored dtype would have given


# --- the previous format --------------------------------------------------------------------------


def _old_decode_update(blob: bytes, fmt: UpdateFormat, *, epoch: int, batch: int,
                       prune: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The decoder as it was before fixed masks (verbatim but for the device argument)."""
    stored = st_load(blob)
    dense: dict[str, torch.Tensor] = {}
    for name, shape in fmt.shapes.items():
        target = prune[name] if prune is not None else fmt.shares[name]
        harder = target > fmt.shares[name] + 1e-12
        numel = int(np.prod(shape))
        if fmt.mode == "partial" and fmt.mask == "magnitude":
            idx = stored[f"idx/{name}"].to(dtype=torch.int64)
            val = stored[f"val/{name}"].to(dtype=torch.float32)
            if harder:
                k = magnitude_k(numel, target)
                pick = torch.topk(val.abs(), k, sorted=False).indices
                idx, val = idx[pick], val[pick]
            flat = torch.zeros(numel, dtype=torch.float32)
            flat[idx] = val
            dense[name] = flat.reshape(shape)
            continue
        if fmt.mode == "full" and not harder:
            dense[name] = stored[name].to(dtype=torch.float32)
            continue
        if fmt.mode == "full" and fmt.mask == "magnitude":
            idx, val = magnitude_topk(stored[name].to(dtype=torch.float32), target)
            flat = torch.zeros(numel, dtype=torch.float32)
            flat[idx] = val
            dense[name] = flat.reshape(shape)
            continue
        scores = random_scores(shape, seed=fmt.mask_seed, epoch=epoch, batch=batch, tensor_name=name)
        if fmt.mode == "full":
            out = stored[name].to(dtype=torch.float32)
        else:
            out = torch.zeros(shape, dtype=torch.float32)
            out[scores >= fmt.shares[name]] = stored[name].to(dtype=torch.float32)
        dense[name] = out * (scores >= target) if harder else out
    return dense


def _old_subtract(run: RecordedRun, state: dict[str, torch.Tensor], steps: list[int],
                  prune: Mapping[str, float] | None) -> dict[str, torch.Tensor]:
    """The previous subtract_steps: decode each blob densely, add, subtract."""
    fmt = run.update_format()
    total = {n: torch.zeros(s, dtype=torch.float32) for n, s in fmt.shapes.items()}
    for s in steps:
        b = run.update_blobs[s]
        update = _old_decode_update(run.store.get(b.key, expected_sha256=b.sha256), fmt,
                                    epoch=int(run.index.epochs[s]), batch=int(run.index.batches[s]), prune=prune)
        for name, delta in update.items():
            total[name] += delta
    return {n: (v.float() - total[n]).to(v.dtype) if n in total else v for n, v in state.items()}


def _as_previous_format(store: LocalBlobStore, run_id: str, *, drop_mask: bool = False) -> RecordedRun:
    """Rewrite run.json as the previous code wrote it: no format, no mask index (and, for
    the oldest files, no mask either: it defaulted to random)."""
    key = f"runs/{run_id}/run.json"
    raw = store.get_json(key)
    raw["recording"].pop("format")
    raw["recording"].pop("mask_index")
    if drop_mask:
        raw["recording"].pop("mask")
    store.put_json(key, raw)
    return RecordedRun.open(store, run_id)


@pytest.mark.parametrize(("mode", "mask", "drop_mask"), [
    ("partial", "random", False), ("partial", "random", True), ("partial", "magnitude", False),
    ("full", "random", False), ("full", "magnitude", False),
])
def test_an_old_run_still_unlearns_identically(tmp_path: Path, mode: str, mask: str, drop_mask: bool) -> None:
    store = LocalBlobStore(tmp_path)
    run, states, steps = record(store, "old", mode=mode, mask=mask, prune=(0.6, 0.3), dtype="float16")
    run = _as_previous_format(store, "old", drop_mask=drop_mask)
    assert run.spec.recording.format == 1 and run.spec.recording.mask == mask
    assert run.spec.recording.mask_index is None
    ks = affected(steps, {IDS[steps[1][1][0]], IDS[steps[8][1][2]]})
    final = states[-1]
    for prune in (None, PruneSchedule(0.8, 0.5).tensor_shares(run.spec.tensors)):
        got, _ = subtract_steps(run, final, ks, prune=prune, device=CPU, max_bytes=1)
        want = _old_subtract(run, final, ks, prune)
        for name in run.spec.tensors:
            assert torch.equal(got[name], want[name]), (prune is not None, name)
            assert not torch.equal(got[name], final[name])


def test_recording_format_is_versioned() -> None:
    spec = RecordingSpec(mode="partial")
    assert spec.format == RECORDING_FORMAT == 3 and spec.mask == DEFAULT_MASK == "fixed"
    with pytest.raises(ValueError, match="newer than this Lethe reads"):
        RecordingSpec(mode="full", format=RECORDING_FORMAT + 1)
    with pytest.raises(ValueError, match="fixed masks need recording format 2"):
        RecordingSpec(mode="partial", mask="fixed", format=1)


def test_a_tampered_mask_index_is_refused(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    run, _, _ = record(store, "fixed")
    pointer = run.spec.recording.mask_index
    assert pointer is not None
    data = bytearray(store.get(pointer.key))
    data[-1] ^= 0xFF
    store.put(pointer.key, bytes(data))  # a new sidecar: only run.json's sha256 can tell
    with pytest.raises(BlobIntegrityError):
        open_artifact(store, "fixed").update_format()


# --- reading ahead ---------------------------------------------------------------------------------


class CountingStore(BlobStore):
    """Counts the bytes of reads started but not yet released by the consumer."""

    def __init__(self, inner: BlobStore, delay: float = 0.002) -> None:
        self.inner, self.delay = inner, delay
        self.lock = threading.Lock()
        self.started = 0
        self.released = 0
        self.most_in_flight = 0
        self.url = inner.url

    def get(self, key: str, *, expected_sha256: str | None = None) -> bytes:
        size = self.inner.stat(key).size
        with self.lock:
            self.started += size
            self.most_in_flight = max(self.most_in_flight, self.started - self.released)
        time.sleep(self.delay)
        return self.inner.get(key, expected_sha256=expected_sha256)

    def put(self, key: str, data: bytes) -> BlobRef:
        return self.inner.put(key, data)

    def stat(self, key: str) -> BlobRef:
        return self.inner.stat(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def iter_chunks(self, key, chunk_size=1 << 20, *, expected_sha256=None):
        return self.inner.iter_chunks(key, chunk_size, expected_sha256=expected_sha256)


@pytest.mark.parametrize("max_bytes", [1, 3000, 10_000, 10**9])
def test_read_ahead_holds_at_most_its_byte_bound(tmp_path: Path, max_bytes: int) -> None:
    inner = LocalBlobStore(tmp_path)
    sizes = [1000, 2500, 800, 4000, 1200, 900, 3000, 700, 1500, 2000, 600, 5000]
    refs = [inner.put(f"b/{i:02d}", bytes([i]) * n) for i, n in enumerate(sizes)]
    store = CountingStore(inner)
    fetch = Prefetch(store, refs, max_bytes=max_bytes, workers=3)
    got = []
    for i, data in fetch:
        assert data == bytes([i]) * sizes[i]
        time.sleep(0.003)  # the consumer's summation: reads go ahead meanwhile
        with store.lock:
            store.released += sizes[i]
        got.append(i)
    assert got == list(range(len(sizes)))
    bound = max(max_bytes, max(sizes))  # a blob larger than the bound is read alone
    assert store.most_in_flight <= bound and fetch.peak_bytes <= bound
    assert fetch.held_bytes == 0
    if max_bytes >= 10_000:
        assert store.most_in_flight > max(sizes)  # it did read ahead
    if max_bytes == 1:
        assert store.most_in_flight == max(sizes)  # one blob at a time


def test_a_read_error_stops_the_read_ahead_and_reaches_the_caller(tmp_path: Path) -> None:
    inner = LocalBlobStore(tmp_path)
    refs = [inner.put(f"b/{i}", bytes(100)) for i in range(6)]
    refs[3] = BlobRef(key=refs[3].key, sha256="0" * 64, size=100)
    with pytest.raises(BlobIntegrityError):
        for _ in Prefetch(inner, refs, max_bytes=250):
            pass


def test_subtraction_is_the_same_whatever_the_read_ahead(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    run, states, steps = record(store, "full", mode="full", dtype="bfloat16")
    ks = list(range(len(steps)))
    a, n = subtract_steps(run, states[-1], ks, prune=None, device=CPU, max_bytes=1)
    b, m = subtract_steps(run, states[-1], ks, prune=None, device=CPU)
    assert n == m == sum(p.size for p in run.update_blobs)
    for name in run.spec.tensors:
        assert torch.equal(a[name], b[name])
        torch.testing.assert_close(a[name], states[0][name], rtol=0, atol=2e-2)
    spec = RunSpec.model_validate(store.get_json("runs/full/run.json"))
    assert spec.recording.dtype == "bfloat16" and spec.recording.mask_index is None


def test_harder_pruning_refuses_a_mask_the_seed_no_longer_reproduces(tmp_path: Path, monkeypatch) -> None:
    """The stored bits are the mask; the draws for a harder share come from the seed and must
    reproduce them (a torch that draws other numbers would select a wrong subset)."""
    store = LocalBlobStore(tmp_path)
    _, states, _ = record(store, "fixed")
    import unlearning_core.recording.masks as masks_module

    monkeypatch.setattr(masks_module, "fixed_scores",
                        lambda shape, *, seed, tensor_name: torch.rand(tuple(shape), generator=torch.Generator().manual_seed(99)))
    fresh = open_artifact(store, "fixed")
    got, _ = subtract_steps(fresh, states[-1], [0, 1], prune=None, device=CPU)  # recorded pruning: fine
    assert any(not torch.equal(got[n], states[-1][n]) for n in got)
    harder = PruneSchedule(0.8, 0.6).tensor_shares(fresh.spec.tensors)
    with pytest.raises(RunError, match="differs from the stored one"):
        subtract_steps(fresh, states[-1], [0, 1], prune=harder, device=CPU)


def test_local_reads_run_inline_and_remote_ones_ahead(tmp_path: Path) -> None:
    from unlearning_core.recording.prefetch import READ_AHEAD, auto_workers

    local = LocalBlobStore(tmp_path)
    refs = [local.put(f"b/{i}", bytes(1000)) for i in range(5)]
    assert auto_workers(local, refs) == 0  # small local reads: no thread handoffs
    assert auto_workers(CountingStore(local), refs) == READ_AHEAD  # any other store: read ahead
    seen = [i for i, _ in Prefetch(local, refs)]
    assert seen == list(range(5))
