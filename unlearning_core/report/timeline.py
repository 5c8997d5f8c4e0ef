"""The accuracy timeline: per-class test accuracy over training, each erasure, and recovery.

Training evaluates the model every few optimizer steps on a fixed, seeded subset of the
test set (small, so the overhead stays a few percent) and stores the points with the run
(``runs/<id>/timeline/train.json``). Every published unlearning stores its own points
(right after the erasure, and after the recovery fine-tune when there was one) in its
erasure record (:mod:`unlearning_core.report.records`). :func:`assemble` lays all of them
on one step axis for the plot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from unlearning_core.data import SampleSet
from unlearning_core.metrics import accuracy, collect_outputs
from unlearning_core.metrics.classification import per_class_accuracy

Phase = Literal["train", "unlearn", "recovery"]
#: Test samples a timeline point is measured on (seeded subset when the test set is larger).
TIMELINE_SAMPLES = 1000
#: Points a training timeline aims for when the run does not say how often to evaluate.
TIMELINE_POINTS = 20


class TimelinePoint(BaseModel):
    step: int  # training: optimizer steps so far; unlearning: steps since the erasure
    phase: Phase
    test_acc: float
    per_class_acc: dict[str, float | None]


class TrainingTimeline(BaseModel):
    """Contents of ``runs/<id>/timeline/train.json``."""

    every: int
    eval_samples: int
    steps: int
    points: list[TimelinePoint] = Field(default_factory=list)


def auto_every(total_steps: int, points: int = TIMELINE_POINTS) -> int:
    """Evaluate about ``points`` times over a run (at least every step)."""
    return max(1, -(-total_steps // points))


class TimelineProbe:
    """Measures one timeline point of a model on a fixed subset of the test set."""

    def __init__(
        self,
        test: SampleSet,
        num_classes: int,
        *,
        device: torch.device,
        max_samples: int = TIMELINE_SAMPLES,
        seed: int = 0,
    ) -> None:
        if len(test) > max_samples:
            pos = np.sort(np.random.default_rng(seed).choice(len(test), size=max_samples, replace=False))
            test = test.subset(pos)
        self.test = test
        self.num_classes = num_classes
        self.device = device

    def __call__(self, model: torch.nn.Module, step: int, phase: Phase) -> TimelinePoint:
        out = collect_outputs(model, self.test, device=self.device)
        return TimelinePoint(
            step=step, phase=phase, test_acc=accuracy(out),
            per_class_acc=per_class_accuracy(out, self.num_classes),
        )


def training_observer(
    probe: TimelineProbe, every: int, total_steps: int
) -> tuple[Callable[[int, torch.nn.Module], None], TrainingTimeline]:
    """An observer for :func:`unlearning_core.training.loop.train_plan` and the timeline it
    fills: a point before the first step, every ``every`` steps and after the last."""
    timeline = TrainingTimeline(every=every, eval_samples=len(probe.test), steps=total_steps)

    def observe(step: int, model: torch.nn.Module) -> None:
        if step == 0 or step % every == 0 or step == total_steps:
            timeline.points.append(probe(model, step, "train"))

    return observe, timeline


class AxisPoint(BaseModel):
    x: float
    phase: Phase
    version: int
    test_acc: float
    per_class_acc: dict[str, float | None]


class Erasure(BaseModel):
    x: float
    version: int
    method: str
    recovery_steps: int


class Axis(BaseModel):
    """Every point on one step axis, with the erasure markers."""

    points: list[AxisPoint]
    erasures: list[Erasure]
    training_steps: int


def assemble(
    training: TrainingTimeline | None,
    versions: Sequence[tuple[int, str, int, Sequence[TimelinePoint]]],
) -> Axis:
    """Training points, then each version's ``(number, method, recovery_steps, points)``.

    Erasures did not happen at a step of training, so they are placed one after another
    after it, a gap of 5% of training apart (for legibility); a recovery segment spans its
    real number of steps.
    """
    steps = training.steps if training else 0
    points = [
        AxisPoint(x=p.step, phase=p.phase, version=0, test_acc=p.test_acc, per_class_acc=p.per_class_acc)
        for p in (training.points if training else [])
    ]
    gap = max(1.0, 0.05 * steps)
    x = float(steps)
    erasures: list[Erasure] = []
    for number, method, recovery, version_points in versions:
        x += gap
        if points:  # the model is unchanged until the erasure: the drop shows at its marker
            last = points[-1]
            points.append(last.model_copy(update={"x": x}))
        erasures.append(Erasure(x=x, version=number, method=method, recovery_steps=recovery))
        for p in version_points:
            points.append(
                AxisPoint(x=x + p.step, phase=p.phase, version=number, test_acc=p.test_acc,
                          per_class_acc=p.per_class_acc)
            )
        x += recovery
    return Axis(points=points, erasures=erasures, training_steps=steps)
