"""API load: requests/s and latency of filing and following erasure requests.

Starts ``lethe serve`` (uvicorn, one process) on loopback against a fresh PostgreSQL
database, with the embedded worker OFF so the load measures the API and its database
writes, not unlearning. A load generator in a separate process (asyncio + httpx, a fixed
number of concurrent clients, each sending its next request as soon as the previous one
answers) then drives, one after the other for the same duration:

- ``GET /healthz``: the trivial endpoint of the same app (the floor: routing, middleware,
  uvicorn, the client itself);
- ``POST /erasure-requests``: validation against the datasets and models, the request row,
  one job per target model and the hash-chained audit events, in one transaction;
- ``GET /requests/{id}/status`` over the requests just filed.

Generator and server share the machine's CPUs, so the figures are a floor for the server;
the load average at start and end says how busy the machine was.

    python bench/api_load.py [--concurrency 16] [--duration 10]

Prints one JSON object on the last line of stdout and writes it under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: What ``lethe serve`` runs (recorded for the staleness check, bench/provenance.py).
SERVER_CODE = ("api", "worker", "unlearning_core")
PG_ADMIN_URL = os.environ.get("LETHE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- the load generator


async def _phase(
    client: httpx.AsyncClient, name: str, make, *, concurrency: int, duration: float, warmup: float  # noqa: ANN001
) -> dict[str, Any]:
    """``concurrency`` closed-loop clients for ``warmup + duration`` s; only the last
    ``duration`` seconds count. ``make(i)`` returns (method, url, json body)."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    bodies: list[Any] = []
    started = time.perf_counter()
    count_from, stop_at = started + warmup, started + warmup + duration

    async def one_client(c: int) -> None:
        i = c
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            method, url, body = make(i)
            i += concurrency
            try:
                r = await client.request(method, url, json=body)
                code = str(r.status_code)
                if name == "post" and r.status_code == 202:
                    bodies.append(r.json()["status_url"])
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            t1 = time.perf_counter()
            if t0 >= count_from:
                latencies.append(t1 - t0)
                statuses[code] = statuses.get(code, 0) + 1

    await asyncio.gather(*(one_client(c) for c in range(concurrency)))
    lat = np.asarray(latencies) * 1000
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    return {
        "requests": int(len(lat)),
        "ok": ok,
        "statuses": statuses,
        "rps": len(lat) / duration,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p90_ms": float(np.percentile(lat, 90)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "max_ms": float(lat.max()) if len(lat) else None,
        "_status_urls": bodies,
    }


async def generate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the three phases against ``cfg['url']``; returns per-endpoint figures."""
    headers = {"Authorization": f"Bearer {cfg['key']}"}
    limits = httpx.Limits(max_connections=cfg["concurrency"], max_keepalive_connections=cfg["concurrency"])
    subjects = cfg["subjects"]
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=cfg["url"], headers=headers, limits=limits, timeout=30.0) as client:
        kw = dict(concurrency=cfg["concurrency"], duration=cfg["duration"], warmup=cfg["warmup"])
        out["healthz"] = await _phase(client, "healthz", lambda i: ("GET", "/healthz", None), **kw)
        out["post_erasure_requests"] = await _phase(
            client, "post", lambda i: ("POST", "/erasure-requests", {"subject_id": subjects[i % len(subjects)]}), **kw
        )
        urls = out["post_erasure_requests"]["_status_urls"] or ["/requests/unknown/status"]
        out["get_request_status"] = await _phase(client, "status", lambda i: ("GET", urls[i % len(urls)], None), **kw)
    for v in out.values():
        v.pop("_status_urls")
    return out


# ---------------------------------------------------------------- server and database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"lethe serve exited with status {proc.returncode} before answering")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"lethe serve did not answer {url}/readyz within {timeout:.0f}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per endpoint")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each")
    ap.add_argument("--out", type=Path, default=RESULTS / "api_load.json")
    ap.add_argument("--generate", help=argparse.SUPPRESS)  # the load-generator process
    args = ap.parse_args()
    if args.generate:
        print(json.dumps(asyncio.run(generate(json.loads(args.generate)))))
        return
    if args.concurrency < 1 or args.duration <= 0:
        sys.exit("--concurrency must be at least 1 and --duration positive")

    import psycopg

    started, load_start = time.perf_counter(), load_average()
    db_name = f"lethe_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
    except psycopg.OperationalError as exc:
        sys.exit(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (LETHE_TEST_PG): {exc}")
    port, key = free_port(), secrets.token_urlsafe(24)
    url = f"http://127.0.0.1:{port}"
    tmp = tempfile.TemporaryDirectory(prefix="lethe-api-load-")
    env = {
        **os.environ,
        "LETHE_DATABASE_URL": PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        + f"/{db_name}",
        "LETHE_BLOB_STORE": str(Path(tmp.name) / "blobs"),
        "LETHE_EMBEDDED_WORKER": "false",
        "LETHE_BROKER_URL": "",
        "LETHE_BOOTSTRAP_ADMIN_KEY": key,
        "LETHE_SEED_DEMO": "true",
        "LETHE_DEVICE": "cpu",
        "LETHE_LOG_LEVEL": "WARNING",
        "LETHE_HOST": "127.0.0.1",
        "LETHE_PORT": str(port),
    }
    lethe = Path(sys.executable).with_name("lethe")
    server = subprocess.Popen(  # noqa: S603 - our own console script
        [str(lethe), "serve"], cwd=tmp.name, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = {
        "benchmark": "api_load", "server": "lethe serve (uvicorn, 1 process), embedded worker off",
        "database": "PostgreSQL 127.0.0.1:5432 (fresh database)", "cpu_count": os.cpu_count(),
        "settings": {"concurrency": args.concurrency, "duration_s": args.duration, "warmup_s": args.warmup},
        "load_average_start": load_start,
    }
    try:
        wait_ready(url, server, timeout=300)
        # The demo dataset's subjects (digits, ten samples each) are what requests name.
        cfg = {"url": url, "key": key, "concurrency": args.concurrency, "duration": args.duration,
               "warmup": args.warmup, "subjects": [f"subject-{i:04d}" for i in range(140)]}
        gen = subprocess.run(  # noqa: S603
            [sys.executable, __file__, "--generate", json.dumps(cfg)], capture_output=True, text=True, check=False,
            cwd=REPO,
        )
        if gen.returncode != 0:
            sys.exit(f"load generator failed:\n{gen.stderr[-2000:]}")
        result["endpoints"] = json.loads(gen.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        tmp.cleanup()
    base = result["endpoints"]["healthz"]
    for name, ep in result["endpoints"].items():
        ep["rps_over_healthz"] = ep["rps"] / base["rps"] if base["rps"] else None
        print(f"{name}: {ep['rps']:.0f} req/s, p50 {ep['p50_ms']:.1f} ms, p99 {ep['p99_ms']:.1f} ms, "
              f"statuses {ep['statuses']}", file=sys.stderr)
    result["wall_seconds"] = time.perf_counter() - started
    result["load_average_end"] = load_average()
    result["code_ran"] = list(SERVER_CODE)  # the figures are the server's: its code goes on record
    emit(result, args.out)


if __name__ == "__main__":
    main()
