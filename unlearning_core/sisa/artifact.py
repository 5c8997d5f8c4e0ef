"""A stored SISA run: per-shard slice checkpoints, the placement, the ensemble."""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import SisaSpec
from unlearning_core.sisa.assignment import Assignment
from unlearning_core.sisa.ensemble import SisaEnsemble

State = dict[str, torch.Tensor]


def assignment_to_bytes(a: Assignment) -> bytes:
    return st_save(
        {
            "shard": torch.from_numpy(a.shard),
            "slice": torch.from_numpy(a.slice),
            "order_key": torch.from_numpy(a.order_key.view(np.int64)),
        }
    )


def assignment_from_bytes(data: bytes) -> Assignment:
    t = st_load(data)
    return Assignment(
        shard=t["shard"].numpy(), slice=t["slice"].numpy(), order_key=t["order_key"].numpy().view(np.uint64)
    )


def ensemble_state(members: list[State]) -> State:
    return {f"shards.{s}.{k}": v for s, m in enumerate(members) for k, v in m.items()}


def member_states(state: State, shards: int) -> list[State]:
    out: list[State] = [{} for _ in range(shards)]
    for key, value in state.items():
        _, s, rest = key.split(".", 2)
        out[int(s)][rest] = value
    return out


def checkpoint_key(prefix: str, shard: int, version: int, slice_: int) -> str:
    return f"{prefix}/shards/s{shard:03d}/v{version:04d}-slice{slice_:03d}.safetensors"


class SisaRun(RecordedRun):
    @property
    def sisa(self) -> SisaSpec:
        assert self.spec.sisa is not None
        return self.spec.sisa

    @cached_property
    def assignment(self) -> Assignment:
        return assignment_from_bytes(self._get(self.spec.index))

    def model_with(self, state: State, aggregation: str | None = None) -> torch.nn.Module:
        members = []
        for member_state in member_states(state, self.sisa.shards):
            model = self.new_model()
            model.load_state_dict(member_state)
            members.append(model)
        return SisaEnsemble(members, aggregation or self.sisa.aggregation)
