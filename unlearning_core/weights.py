"""Model weights as safetensors bytes (never pickle), stored and read through the blob store."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unlearning_core.store import BlobRef, BlobStore


def state_to_bytes(state: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    # clone() breaks shared storage, which safetensors refuses to serialise.
    cpu = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    return st_save(cpu, metadata=metadata)


def state_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)


def save_state(store: BlobStore, key: str, state: Mapping[str, torch.Tensor]) -> BlobRef:
    return store.put(key, state_to_bytes(state))


def load_state(store: BlobStore, ref: BlobRef) -> dict[str, torch.Tensor]:
    """Read and verify against the sha256 recorded in the run, not only the blob's own."""
    return state_from_bytes(store.get(ref.key, expected_sha256=ref.sha256))
