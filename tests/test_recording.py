"""Masks, update codec and batch plans: the pieces recorded training is built from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearning_core.errors import RunError
from unlearning_core.recording import PruneSchedule, UpdateFormat, decode_update, encode_update
from unlearning_core.recording.codec import serialize
from unlearning_core.recording.masks import layer_order, random_keep, random_scores
from unlearning_core.training.batching import (
    Concentration,
    concentration_of,
    parse_concentrate,
    plan_batches,
)

SHAPES = {
    "conv1.weight": (8, 1, 3, 3),
    "conv1.bias": (8,),
    "bn.weight": (8,),
    "bn.running_mean": (8,),
    "fc.weight": (10, 32),
    "fc.bias": (10,),
}


def _delta(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}


def _fmt(mode: str, mask: str, first: float, last: float, dtype: str = "float32") -> UpdateFormat:
    schedule = PruneSchedule(first, last)
    shares = schedule.tensor_shares(SHAPES) if mode == "partial" else dict.fromkeys(SHAPES, 0.0)
    return UpdateFormat(mode=mode, mask=mask, mask_seed=7, dtype=dtype, shares=shares, shapes=SHAPES)


def _roundtrip(delta, fmt, prune=None, epoch=1, batch=2):
    blob = serialize(encode_update(delta, fmt, epoch=epoch, batch=batch), epoch=epoch, batch=batch)
    return blob, decode_update(blob, fmt, epoch=epoch, batch=batch, prune=prune)


def test_schedule_interpolates_by_layer_in_depth_order() -> None:
    schedule = PruneSchedule(0.9, 0.5)
    assert layer_order(SHAPES) == ["conv1", "bn", "fc"]
    shares = schedule.tensor_shares(SHAPES)
    assert shares["conv1.weight"] == shares["conv1.bias"] == pytest.approx(0.9)
    assert shares["bn.weight"] == pytest.approx(0.7)
    assert shares["fc.bias"] == pytest.approx(0.5)
    with pytest.raises(RunError, match="prune-first"):
        PruneSchedule(1.0, 0.5)


def test_stored_random_partial_update_is_mask_times_delta() -> None:
    delta = _delta()
    fmt = _fmt("partial", "random", 0.9, 0.5)
    blob, dense = _roundtrip(delta, fmt)
    for name, d in delta.items():
        keep = random_keep(d.shape, fmt.shares[name], seed=7, epoch=1, batch=2, tensor_name=name)
        assert torch.equal(dense[name], d * keep)
    # Only the kept values are stored: about (1 - share) of each tensor.
    _, full = _roundtrip(delta, _fmt("full", "random", 0, 0))
    assert len(blob) < len(serialize(full, epoch=1, batch=2))
    assert int((dense["conv1.weight"] != 0).sum()) < 0.3 * delta["conv1.weight"].numel()


def test_stored_magnitude_partial_update_keeps_largest_entries() -> None:
    delta = _delta(1)
    fmt = _fmt("partial", "magnitude", 0.75, 0.5)
    _, dense = _roundtrip(delta, fmt)
    w = delta["fc.weight"].reshape(-1)
    kept = dense["fc.weight"].reshape(-1) != 0
    assert int(kept.sum()) == round(0.5 * w.numel())
    assert w.abs()[kept].min() >= w.abs()[~kept].max()
    assert torch.equal(dense["fc.weight"].reshape(-1)[kept], w[kept])


@pytest.mark.parametrize("mask", ["random", "magnitude"])
def test_partial_with_pruning_zero_equals_full(mask: str) -> None:
    delta = _delta(2)
    _, partial = _roundtrip(delta, _fmt("partial", mask, 0.0, 0.0))
    _, full = _roundtrip(delta, _fmt("full", mask, 0.0, 0.0))
    for name in delta:
        assert torch.equal(partial[name], full[name])
        assert torch.equal(full[name], delta[name])


@pytest.mark.parametrize("mode", ["full", "partial"])
def test_harder_pruning_at_unlearning_time_is_nested(mode: str) -> None:
    delta = _delta(3)
    fmt = _fmt(mode, "random", 0.5, 0.2)
    harder = PruneSchedule(0.8, 0.6).tensor_shares(SHAPES)
    _, recorded = _roundtrip(delta, fmt)
    _, pruned = _roundtrip(delta, fmt, prune=harder)
    for name, d in delta.items():
        scores = random_scores(d.shape, seed=7, epoch=1, batch=2, tensor_name=name)
        assert torch.equal(pruned[name], d * (scores >= harder[name]))
        assert bool(((pruned[name] != 0) <= (recorded[name] != 0) | (d == 0)).all())


def test_lighter_pruning_than_recorded_is_refused() -> None:
    fmt = _fmt("partial", "random", 0.9, 0.5)
    blob = serialize(encode_update(_delta(), fmt, epoch=0, batch=0), epoch=0, batch=0)
    with pytest.raises(RunError, match="pruned entries are gone"):
        decode_update(blob, fmt, epoch=0, batch=0, prune=dict.fromkeys(SHAPES, 0.1))


def test_float16_storage_halves_bytes_and_stays_close() -> None:
    delta = _delta(4)
    b32, d32 = _roundtrip(delta, _fmt("full", "random", 0, 0, "float32"))
    b16, d16 = _roundtrip(delta, _fmt("full", "random", 0, 0, "float16"))
    numel = sum(d.numel() for d in delta.values())
    assert len(b32) - len(b16) == pytest.approx(2 * numel, abs=32)  # 2 bytes saved per entry
    for name in delta:
        assert torch.allclose(d16[name], d32[name], atol=1e-2, rtol=1e-2)


def test_random_masks_differ_between_steps_but_regenerate_identically() -> None:
    a = random_keep((100,), 0.5, seed=1, epoch=0, batch=0, tensor_name="w")
    b = random_keep((100,), 0.5, seed=1, epoch=0, batch=1, tensor_name="w")
    assert not torch.equal(a, b)
    assert torch.equal(a, random_keep((100,), 0.5, seed=1, epoch=0, batch=0, tensor_name="w"))


def test_each_sample_sits_in_exactly_epochs_batches() -> None:
    plan = plan_batches(101, epochs=3, batch_size=16, seed=0)
    counts = np.bincount(np.concatenate([b for epoch in plan for b in epoch]), minlength=101)
    assert (counts == 3).all()


def test_concentration_puts_the_class_into_the_requested_share_of_batches() -> None:
    special = np.arange(0, 600, 6)  # 100 of 600 samples
    plan = plan_batches(600, epochs=2, batch_size=20, seed=3, concentrate=Concentration(special, 0.2))
    for epoch in plan:
        holding = [b for b in epoch if np.isin(b, special).any()]
        assert len(holding) == 6  # 20% of 30 batches
        assert sorted(np.concatenate(epoch).tolist()) == list(range(600))
    with pytest.raises(RunError, match="do not fit"):
        plan_batches(600, epochs=1, batch_size=20, seed=0, concentrate=Concentration(np.arange(300), 0.2))
    assert parse_concentrate("3:0.2") == (3, None, 0.2)
    assert parse_concentrate("subjects=subject-0001, subject-0007:0.1") == (None, ["subject-0001", "subject-0007"], 0.1)
    for bad in ("three", "3", "subjects=:0.1", "3:many"):
        with pytest.raises(RunError, match="CLASS:SHARE"):
            parse_concentrate(bad)


def test_concentrating_subjects_places_their_samples_and_retraining_keeps_what_is_left() -> None:
    labels = np.arange(60) % 10
    subjects = [f"s{i // 6}" for i in range(60)]  # ten subjects of six samples
    conc = concentration_of(labels, subjects, klass=None, subjects=["s1", "s4"], share=0.5)
    assert conc is not None and conc.share == 0.5
    assert conc.positions.tolist() == list(range(6, 12)) + list(range(24, 30))
    with pytest.raises(RunError, match="no samples: s9x"):
        concentration_of(labels, subjects, klass=None, subjects=["s1", "s9x"], share=0.5)
    with pytest.raises(RunError, match="which has no samples"):
        concentration_of(labels, subjects, klass=None, subjects=["gone"], share=0.5)
    with pytest.raises(RunError, match="not both"):
        concentration_of(labels, subjects, klass=1, subjects=["s1"], share=0.5)
    # Retraining after s4 was forgotten: s1 keeps its place; nothing left -> no concentration.
    left = concentration_of(labels, subjects, klass=None, subjects=["s1", "s4x"], share=0.5, allow_missing=True)
    assert left is not None and left.positions.tolist() == list(range(6, 12))
    assert concentration_of(labels, subjects, klass=None, subjects=["x"], share=0.5, allow_missing=True) is None
    assert concentration_of(labels, subjects, klass=None, subjects=None, share=None) is None
