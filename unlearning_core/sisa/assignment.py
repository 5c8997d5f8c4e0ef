"""Which shard and slice each training sample belongs to.

Placement is a hash of (seed, sample id) — or of the subject id, with ``by_subject`` — not
a permutation of the dataset. That makes it stable under removal: dropping the forget
samples leaves every other sample where it was, which is exactly what makes SISA's
unlearned ensemble identical to SISA trained from scratch without those samples.
The shards are uniform in expectation (a hash is a seeded uniform draw per sample).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _h(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Assignment:
    shard: np.ndarray  # [N] int32
    slice: np.ndarray  # [N] int32
    order_key: np.ndarray  # [N] uint64, the sample's place inside its stage (position-free)

    def positions(self, shard: int, upto_slice: int, *, exclude: np.ndarray | None = None) -> np.ndarray:
        """Positions of ``shard``'s slices 0..upto_slice, in the stable stage order."""
        keep = (self.shard == shard) & (self.slice <= upto_slice)
        if exclude is not None and len(exclude):
            keep[exclude] = False
        pos = np.flatnonzero(keep)
        return pos[np.argsort(self.order_key[pos], kind="stable")]


def assign(
    sample_ids: Sequence[str],
    subject_ids: Sequence[str | None],
    *,
    shards: int,
    slices: int,
    seed: int,
    by_subject: bool = False,
) -> Assignment:
    """Hash placement; with ``by_subject`` all of a subject's samples share shard and slice,
    so erasing a subject retrains one shard from one slice on."""
    n = len(sample_ids)
    shard = np.empty(n, dtype=np.int32)
    slc = np.empty(n, dtype=np.int32)
    order = np.empty(n, dtype=np.uint64)
    for i, sid in enumerate(sample_ids):
        subject = subject_ids[i]
        place = _h(seed, f"subject:{subject}") if by_subject and subject else _h(seed, f"sample:{sid}")
        shard[i] = place % shards
        slc[i] = (place // shards) % slices
        order[i] = _h(seed, f"order:{sid}")
    return Assignment(shard=shard, slice=slc, order_key=order)
