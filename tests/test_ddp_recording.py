"""``record_training`` under DistributedDataParallel: two ``gloo`` processes on the CPU.

Every rank records its own half of each global batch; rank 0 gathers the ids and writes the
step's update, rank 1 writes nothing. With the mean loss over equal halves, DDP's averaged
gradient is the gradient of the mean loss over the whole global batch, so a single process
trained on the same global batches with the same learning rate makes the same steps (up to
float summation order), and unlearning either run must give the same weights.
"""

from __future__ import annotations

import gc
import socket
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unlearning_core import record_training
from unlearning_core.artifacts import open_artifact
from unlearning_core.errors import RunError
from unlearning_core.forget import ForgetSpec
from unlearning_core.pipeline import apply_method
from unlearning_core.store import LocalBlobStore

FACTORY = "tests.test_ddp_recording:mlp"
WORLD = 2
N, FEATURES, CLASSES, GLOBAL_BATCH, STEPS = 48, 6, 3, 16, 5


def mlp() -> nn.Module:
    return nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(FEATURES, 16)), ("relu", nn.ReLU()), ("head", nn.Linear(16, CLASSES)),
    ]))


def _data() -> tuple[torch.Tensor, torch.Tensor, list[str], list[list[int]]]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, FEATURES, generator=g), torch.randint(0, CLASSES, (N,), generator=g)
    ids = [f"u{i}" for i in range(N)]
    batches = [torch.randperm(N, generator=g)[:GLOBAL_BATCH].tolist() for _ in range(STEPS)]
    return x, y, ids, batches


def _shard(batch: list[int], rank: int) -> list[int]:
    half = len(batch) // WORLD
    return batch[rank * half : (rank + 1) * half]


def _worker(rank: int, port: int, root: str, crash_at: int | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        _train(rank, root, crash_at)
    finally:
        # DDP's reducer keeps the gloo group alive through reference cycles. Left to the
        # interpreter's last collection, the group was torn down during finalisation, which
        # aborted a rank now and then ("terminate called without an active exception", with
        # no Python frame: 3 of 80 runs here, and once in CI). Collected here, while the group
        # still exists, and destroyed after: 0 of 95 runs.
        gc.collect()
        dist.destroy_process_group()


def _train(rank: int, root: str, crash_at: int | None) -> None:
    x, y, ids, batches = _data()
    model = mlp()
    model.load_state_dict(load_file(f"{root}/initial.safetensors"))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    store = LocalBlobStore(Path(root) / f"rank{rank}")  # only rank 0's may get anything
    with record_training(ddp, opt, store=store, run_id="ddp", model_factory=FACTORY, mode="full") as rec:
        for k, batch in enumerate(batches):
            mine = _shard(batch, rank)
            with rec.step([ids[p] for p in mine], epoch=0):
                if k == crash_at and rank == 0:
                    raise RuntimeError("rank 0 lost its data loader")
                F.cross_entropy(ddp(x[mine]), y[mine]).backward()
                opt.step()
                opt.zero_grad()
    if rank == 0:
        assert rec.run is not None and rec.steps == STEPS
    else:
        assert rec.run is None and rec.steps == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _initial(root: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(11)
    state = {k: v.clone() for k, v in mlp().state_dict().items()}
    save_file(state, str(root / "initial.safetensors"))
    return state


@pytest.mark.timeout(180)
def test_ddp_run_unlearns_like_a_single_process_run_on_the_same_global_batches(tmp_path: Path) -> None:
    initial = _initial(tmp_path)
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path), None), nprocs=WORLD, start_method="spawn")

    assert not any(p.is_file() for p in (tmp_path / "rank1").rglob("*")), "rank 1 wrote blobs"
    store = LocalBlobStore(tmp_path / "rank0")
    run = open_artifact(store, "ddp")
    x, y, ids, batches = _data()
    assert run.spec.loop.world_size == WORLD and run.index.n_steps == STEPS
    assert run.spec.loop.optimizer_steps == STEPS and next(iter(run.spec.tensors)) == "fc1.weight"
    table = run.sample_table["sample_ids"]
    for k, batch in enumerate(batches):  # a step's ids: every rank's, rank 0's first
        want = [ids[p] for r in range(WORLD) for p in _shard(batch, r)]
        assert [table[i] for i in run.index.step_positions(k)] == list(dict.fromkeys(want))
    assert all(torch.equal(v, initial[k]) for k, v in run.load_weights(run.spec.initial_weights).items())

    # the same global batches in one process: mean loss over the union, same lr
    model = mlp()
    model.load_state_dict(initial)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    single_store = LocalBlobStore(tmp_path / "single")
    with record_training(model, opt, store=single_store, run_id="single", model_factory=FACTORY, mode="full") as rec:
        for batch in batches:
            union = [p for r in range(WORLD) for p in _shard(batch, r)]
            with rec.step([ids[p] for p in union], epoch=0):
                F.cross_entropy(model(x[union]), y[union]).backward()
                opt.step()
                opt.zero_grad()

    ddp_final = run.load_weights(run.spec.trained_weights)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp_final[k], v, rtol=0, atol=1e-5)
    forget = ForgetSpec(sample_ids=(ids[_shard(batches[1], 1)[0]], ids[_shard(batches[3], 0)[2]]))
    outcomes = {
        name: apply_method(s, run_id=name, method="amnesiac", forget=forget, device=torch.device("cpu"))
        for name, s in (("ddp", store), ("single", single_store))
    }
    assert outcomes["ddp"].outcome.subtracted_steps == outcomes["single"].outcome.subtracted_steps
    assert {1, 3} <= outcomes["ddp"].outcome.subtracted_steps
    got, want = outcomes["ddp"].outcome.model.state_dict(), outcomes["single"].outcome.model.state_dict()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5)
        assert not torch.equal(got[k], ddp_final[k]), k  # the forget steps were subtracted


@pytest.mark.timeout(180)
def test_a_ddp_run_whose_rank_0_crashes_is_incomplete(tmp_path: Path) -> None:
    _initial(tmp_path)
    with pytest.raises(mp.ProcessRaisedException, match="lost its data loader"):
        mp.start_processes(_worker, args=(_free_port(), str(tmp_path), 2), nprocs=WORLD, start_method="spawn")
    store = LocalBlobStore(tmp_path / "rank0")
    assert not store.exists("runs/ddp/run.json")
    with pytest.raises(RunError, match="incomplete: its training loop stopped with RuntimeError: rank 0 lost"):
        open_artifact(store, "ddp")
