"""The PyTorch Lightning callback records a real ``Trainer.fit`` on CPU.

The LightningModule wraps a network (``net``) the factory rebuilds; batches are dicts with
the sample ids under ``"sample_id"``; two micro-batches per optimizer step
(``accumulate_grad_batches=2``). The recorded updates must add up to the fit's change, each
recorded step must hold the ids of its two micro-batches, and unlearning must subtract
exactly the steps that held the forget ids.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import lightning as L  # the test extra installs it: a missing one fails, never skips
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import RunError
from unlearning_core.integrations.lightning import LetheRecording
from unlearning_core.methods.amnesiac import subtract_steps
from unlearning_core.store import LocalBlobStore

CPU = torch.device("cpu")
FACTORY = "tests.test_lightning:net"


def net() -> nn.Module:
    """The user's network (what the factory rebuilds; BatchNorm: buffers change in forward)."""
    return nn.Sequential(OrderedDict([("fc1", nn.Linear(6, 16)), ("bn", nn.BatchNorm1d(16)), ("relu", nn.ReLU()), ("head", nn.Linear(16, 3))]))


class Samples(Dataset):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "sample_id": f"user-{i:03d}"}


class Module(L.LightningModule):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = net()
        self.fail_at = fail_at

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.fail_at is not None and self.global_step >= self.fail_at:
            raise RuntimeError("the user's training step failed")
        return F.cross_entropy(self.net(batch["x"]), batch["y"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def fit(store: LocalBlobStore, run_id: str, module: Module) -> LetheRecording:
    recording = LetheRecording(store=store, run_id=run_id, model_factory=FACTORY, submodule="net", mode="full")
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accumulate_grad_batches=2,
        callbacks=[recording], num_sanity_val_steps=0,
    )
    loader = DataLoader(Samples(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1))
    trainer.fit(module, loader)
    return recording


def test_a_trainer_fit_is_recorded_and_unlearned_exactly(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "runs")
    module = Module()
    start = {k: v.clone() for k, v in module.net.state_dict().items()}
    recording = fit(store, "lit", module)
    assert recording.run is not None
    run = open_artifact(store, "lit")
    # 64 samples in batches of 8, two per optimizer step: 4 steps an epoch, 2 epochs
    assert run.index.n_steps == 8 and run.spec.loop.optimizer_steps == 8
    for step in range(8):
        assert len(run.index.step_positions(step)) == 16
    final = run.load_weights(run.spec.trained_weights)
    for name, tensor in module.net.state_dict().items():
        assert torch.equal(final[name], tensor), name
    # every recorded update together is the whole fit's change
    back, _ = subtract_steps(run, final, list(range(8)), prune=None, device=CPU)
    for name in run.spec.tensors:
        assert torch.allclose(back[name].float(), start[name].float(), atol=1e-5), name
    # forgetting one id subtracts exactly the two steps (one per epoch) that held it
    ids = run.sample_table["sample_ids"]
    steps = sorted(int(s) for s in run.index.steps_holding([ids.index("user-005")]))
    assert len(steps) == 2 and steps[0] < 4 <= steps[1]


def test_an_exception_in_fit_leaves_the_run_incomplete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "runs")
    with pytest.raises(RuntimeError, match="training step failed"):
        fit(store, "broken", Module(fail_at=3))
    with pytest.raises(RunError, match="incomplete"):
        open_artifact(store, "broken")


def test_a_batch_without_ids_is_a_clear_error(tmp_path: Path) -> None:
    recording = LetheRecording(store=tmp_path, run_id="x", model_factory=FACTORY)
    with pytest.raises(RunError, match="no sample ids under 'sample_id'"):
        recording.ids_of({"x": 1})
    assert LetheRecording(store=tmp_path, run_id="x", model_factory=FACTORY, sample_id_key=2).ids_of((0, 1, ["a"])) == ["a"]
