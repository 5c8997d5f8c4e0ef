"""Training one SISA shard incrementally over its slices, checkpointing after each.

Stage r trains the shard model on the union of slices 0..r for ``epochs`` epochs, with a
fresh optimizer per stage (so a checkpoint is just the model state: restarting from it is
exactly what the original training did). Everything random is a function of the run seed,
the shard, the stage and the epoch — never of dataset positions — so retraining a stage
without the forget samples matches training from scratch without them, bit for bit on CPU.
A shard is an independent job: the worker can train shards in parallel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unlearning_core.data import SampleSet
from unlearning_core.sisa.assignment import Assignment
from unlearning_core.training.loop import OptimConfig

State = dict[str, torch.Tensor]


def shard_seed(seed: int, shard: int) -> int:
    return seed * 100_003 + shard


def initial_state(new_model: Callable[[], torch.nn.Module], seed: int, shard: int) -> State:
    torch.manual_seed(shard_seed(seed, shard))
    return {k: v.detach().clone() for k, v in new_model().state_dict().items()}


@dataclass
class ShardTraining:
    checkpoints: list[State]  # after slices start..R-1
    samples_processed: int
    steps: int


def train_shard(
    new_model: Callable[[], torch.nn.Module],
    samples: SampleSet,
    assignment: Assignment,
    *,
    shard: int,
    slices: int,
    start_slice: int,
    start_state: State,
    exclude: np.ndarray,
    epochs: int,
    batch_size: int,
    optim: OptimConfig,
    seed: int,
    device: torch.device,
) -> ShardTraining:
    """Train stages ``start_slice..slices-1`` of ``shard`` from ``start_state``."""
    model = new_model()
    model.load_state_dict(start_state)
    model.to(device).train()
    images, labels = samples.images.to(device), samples.labels.to(device)
    checkpoints: list[State] = []
    processed = steps = 0
    for stage in range(start_slice, slices):
        positions = assignment.positions(shard, stage, exclude=exclude)
        optimizer = optim.build(model)
        for epoch in range(epochs):
            if len(positions) == 0:
                break
            rng = np.random.default_rng([seed, shard, stage, epoch])
            order = positions[rng.permutation(len(positions))]
            for start in range(0, len(order), batch_size):
                idx = torch.as_tensor(order[start : start + batch_size], dtype=torch.long, device=device)
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(images[idx]), labels[idx]).backward()
                optimizer.step()
                processed += len(idx)
                steps += 1
        checkpoints.append({k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()})
    return ShardTraining(checkpoints=checkpoints, samples_processed=processed, steps=steps)


def full_training_cost(assignment: Assignment, *, shards: int, slices: int, epochs: int, exclude: np.ndarray) -> int:
    """Samples a from-scratch SISA training would process (the unlearning cost's yardstick)."""
    return sum(
        epochs * len(assignment.positions(s, r, exclude=exclude)) for s in range(shards) for r in range(slices)
    )
