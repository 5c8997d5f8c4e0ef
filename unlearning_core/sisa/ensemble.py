"""The aggregated SISA model: shard models behind one ``nn.Module``.

Its output is a log-probability per class, so every metric (accuracy, losses for MIA)
works on it as on a single model.

- ``softmax``: the mean of the shard models' softmax outputs.
- ``vote``: each shard votes its argmax; the share of votes is the probability, with ties
  broken by the mean softmax (added at a weight too small to overturn a vote).
"""

from __future__ import annotations

import torch
from torch import nn

AGGREGATIONS = ("vote", "softmax")


class SisaEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module], aggregation: str = "softmax") -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.shards = nn.ModuleList(members)
        self.aggregation = aggregation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(dim=1) for m in self.shards])  # S x B x C
        mean = probs.mean(dim=0)
        if self.aggregation == "softmax":
            return mean.clamp_min(1e-12).log()
        votes = nn.functional.one_hot(probs.argmax(dim=2), probs.shape[2]).float().sum(dim=0)
        share = votes / len(self.shards)
        scores = share + mean * (0.5 / len(self.shards))  # tie-break only: < one vote's weight
        return (scores / scores.sum(dim=1, keepdim=True)).clamp_min(1e-12).log()
