"""One forward pass over a sample set, kept on the host for every metric to share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from unlearning_core.data import SampleSet


@dataclass(frozen=True)
class Outputs:
    """Per-sample logits, losses and labels (CPU tensors)."""

    logits: torch.Tensor
    losses: torch.Tensor
    labels: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@torch.no_grad()
def collect_outputs(
    model: torch.nn.Module, samples: SampleSet, *, device: torch.device, batch_size: int = 1024
) -> Outputs:
    was_training = model.training
    model.to(device).eval()
    logits, losses = [], []
    for start in range(0, len(samples), batch_size):
        x = samples.images[start : start + batch_size].to(device)
        y = samples.labels[start : start + batch_size].to(device)
        out = model(x).float()
        logits.append(out.cpu())
        losses.append(F.cross_entropy(out, y, reduction="none").cpu())
    model.train(was_training)
    n_classes = logits[0].shape[1] if logits else 0
    return Outputs(
        logits=torch.cat(logits) if logits else torch.empty(0, n_classes),
        losses=torch.cat(losses) if losses else torch.empty(0),
        labels=samples.labels.clone(),
    )
