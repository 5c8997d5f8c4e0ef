"""The training loop: plain torch, one optimizer step per planned batch.

No framework hides the step, because the recorder has to see the state right before the
forward pass and right after ``optimizer.step()``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unlearning_core.data import SampleSet
from unlearning_core.errors import LetheError
from unlearning_core.recording import UpdateRecorder
from unlearning_core.training.batching import BatchPlan

#: ``observe(step, model)`` of :func:`train_plan`: called before the first step and after
#: each step (``step`` = steps done); its own time is left out of the returned seconds.
StepObserver = Callable[[int, torch.nn.Module], None]


@dataclass(frozen=True)
class OptimConfig:
    """SGD settings; kept with the run so recovery and relearning use the same ones."""

    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0

    def build(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )


def resolve_device(name: str | None) -> torch.device:
    """``None``/``auto`` picks CUDA when present; anything else is passed to torch."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:  # torch lists every backend it knows: not a useful message here
        raise LetheError(f"invalid device {name!r}: use auto, cpu, cuda or cuda:N") from None


def train_plan(
    model: torch.nn.Module,
    samples: SampleSet,
    plan: BatchPlan,
    *,
    optim: OptimConfig,
    device: torch.device,
    recorder: UpdateRecorder | None = None,
    progress: bool = False,
    desc: str = "train",
    observe: StepObserver | None = None,
) -> float:
    """Run every planned batch once; returns wall seconds (recording included, the
    ``observe`` calls, e.g. timeline evaluations, left out)."""
    model.to(device).train()
    optimizer = optim.build(model)
    images = samples.images.to(device)
    labels = samples.labels.to(device)
    total = sum(len(epoch) for epoch in plan)
    started = time.perf_counter()
    observed = 0.0

    def _observe(done: int) -> float:
        if observe is None:
            return 0.0
        t0 = time.perf_counter()
        observe(done, model)
        return time.perf_counter() - t0

    observed += _observe(0)
    step = 0
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for epoch, batches in enumerate(plan):
            for b, positions in enumerate(batches):
                idx = torch.as_tensor(positions, dtype=torch.long, device=device)
                if recorder is not None:
                    recorder.before_step()
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(images[idx]), labels[idx])
                loss.backward()
                optimizer.step()
                if recorder is not None:
                    recorder.after_step(step=step, epoch=epoch, batch=b)
                step += 1
                observed += _observe(step)
                bar.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started - observed


def sgd_steps(
    model: torch.nn.Module,
    samples: SampleSet,
    *,
    steps: int,
    batch_size: int,
    optim: OptimConfig,
    device: torch.device,
    seed: int,
    labels: torch.Tensor | None = None,
    ascent: bool = False,
) -> float:
    """``steps`` SGD steps on random batches of ``samples`` (recovery, relearning, ...).

    ``labels`` overrides the samples' labels (label flipping); ``ascent`` climbs the loss
    instead of descending it (negative gradient). Returns wall seconds.
    """
    if steps <= 0 or len(samples) == 0:
        return 0.0
    model.to(device).train()
    optimizer = optim.build(model)
    images = samples.images.to(device)
    targets = (samples.labels if labels is None else labels).to(device)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for _ in range(steps):
        pos = rng.choice(len(samples), size=min(batch_size, len(samples)), replace=False)
        idx = torch.as_tensor(pos, dtype=torch.long, device=device)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[idx]), targets[idx])
        (-loss if ascent else loss).backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
