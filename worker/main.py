"""``lethe worker``: one Celery worker on one device.

One worker per GPU (``--device cuda:0``, ``--device cuda:1``, ...), each its own process
with the ``solo`` pool: the task runs in the worker process itself, so CUDA is initialised
in the process that uses it and never in a parent that forks afterwards (a forked child
cannot use the CUDA context of its parent). ``--pool prefork --concurrency N`` is for
CPU-only machines; nothing here touches CUDA before the children fork, and each child
resolves its device on its first task. Scaling out is starting more workers, on this
machine or others, pointed at the same PostgreSQL, Redis and blob store.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from api.config import get_settings
from api.database.core import reset_caches

POOLS = ("solo", "prefork", "threads")


def default_queues(device: str, pool: str) -> list[str]:
    """A GPU worker consumes ``gpu`` and ``cpu``; a CPU worker ``cpu`` only."""
    from api.wake import CPU_QUEUE, GPU_QUEUE

    cuda = device.startswith("cuda")
    if device in ("", "auto") and pool == "solo":  # the worker process is the one using it
        import torch

        cuda = torch.cuda.is_available()
    return [GPU_QUEUE, CPU_QUEUE] if cuda else [CPU_QUEUE]


def check_device(device: str) -> str:
    """Parse ``device`` (cpu, cuda, cuda:N, auto) without initialising CUDA."""
    import torch

    if device in ("", "auto"):
        return "auto"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"invalid device {device!r}: use cpu, cuda, cuda:N or auto") from exc
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or auto")
    return str(dev)


def worker_argv(
    *,
    device: str,
    queues: Sequence[str],
    concurrency: int,
    pool: str,
    loglevel: str,
    hostname: str | None,
) -> list[str]:
    name = hostname or f"lethe-{device.replace(':', '')}-{os.getpid()}@{socket.gethostname()}"
    return [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={','.join(queues)}",
        f"--loglevel={loglevel}",
        f"--hostname={name}",
        "--without-mingle",  # no start-up sync with other workers: nothing here uses it
        "--without-gossip",
    ]


def run_worker(
    *,
    device: str | None = None,
    queues: Sequence[str] | None = None,
    concurrency: int = 1,
    pool: str = "solo",
    loglevel: str | None = None,
    hostname: str | None = None,
    dispatch: bool = True,
) -> None:
    """Start a Celery worker in this process (blocks until it stops)."""
    settings = get_settings()
    if not settings.broker_url:
        raise ValueError(
            "LETHE_BROKER_URL is not set: a Celery worker needs a broker (e.g. "
            "redis://127.0.0.1:6379/0); without one, `lethe serve` runs the embedded worker"
        )
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}: use one of {', '.join(POOLS)}")
    if pool == "solo" and concurrency != 1:
        raise ValueError(
            "the solo pool runs one task at a time: use --pool prefork for --concurrency > 1 "
            "on a CPU machine, or one worker per GPU"
        )
    device = check_device(device or settings.device)
    # The tasks read the device (and the dispatcher its interval) from the settings.
    os.environ["LETHE_DEVICE"] = device
    if not dispatch:
        os.environ["LETHE_DISPATCH_INTERVAL_SECONDS"] = "0"
    reset_caches()
    queues = list(queues) if queues else default_queues(device, pool)
    from worker.celery_app import app

    app.worker_main(
        worker_argv(
            device=device,
            queues=queues,
            concurrency=concurrency,
            pool=pool,
            loglevel=(loglevel or settings.log_level).upper(),
            hostname=hostname,
        )
    )
