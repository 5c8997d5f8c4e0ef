"""A bounded soak: ``lethe serve`` (uvicorn + the embedded worker) on loopback against the test
PostgreSQL, mixed traffic from four client threads, the server's memory, open file
descriptors and TCP connections sampled every second.

After a warm-up (a fifth of the run, at least 10 s) they must stay flat: RSS grows by at
most max(10 %, 48 MiB), descriptors and connections by at most 10. No answer may be a 5xx,
and every erasure request filed must be completed when the run ends (none lost).

60 s in ``make test`` (``LETHE_SOAK_SECONDS`` to extend); ``bench/soak.py`` runs 10 minutes
and writes the figures to bench/results/soak.json (``LETHE_SOAK_REPORT``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import bearer
from tests.private_stack import free_port, wait_until
from tests.reliability_world import MODEL, World, build_world, train_world_runs

SECONDS = float(os.environ.get("LETHE_SOAK_SECONDS", "60"))
REPORT = os.environ.get("LETHE_SOAK_REPORT")
CLIENTS = 4
RSS_TOLERANCE = (0.10, 48 * 2**20)  # relative, absolute: the larger one applies
COUNT_TOLERANCE = 10

pytestmark = pytest.mark.timeout(int(SECONDS) + 240)


@pytest.fixture(scope="session")
def world_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_world_runs(tmp_path_factory.mktemp("soak-runs"))


@pytest.fixture
def server(service_env: str, db_session, world_runs: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The world in the test database, and ``lethe serve`` on it (a free loopback port)."""
    world = build_world(db_session, world_runs)
    port = free_port()
    env = {
        **os.environ,
        "LETHE_PORT": str(port),
        "LETHE_HOST": "127.0.0.1",
        "LETHE_EMBEDDED_WORKER": "true",
        "LETHE_WORKER_POLL_SECONDS": "0.5",
        "LETHE_SEED_DEMO": "false",
        "LETHE_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("lethe")), "serve"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120, "lethe serve")
        yield world, base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Traffic:
    """Client threads sending a weighted mix of the API's calls, good and bad."""

    def __init__(self, world: World, base: str, seed: int) -> None:
        self.world, self.base = world, base
        self.rng = random.Random(seed)
        self.codes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.filed: list[str] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def call(self, client: httpx.Client, method: str, path: str, key: str | None, **kw: Any) -> httpx.Response | None:
        started = time.perf_counter()
        try:
            resp = client.request(method, path, headers=bearer(key) if key else {}, **kw)
        except httpx.HTTPError as exc:
            with self.lock:
                self.errors.append(f"{method} {path}: {type(exc).__name__}: {exc}")
            return None
        with self.lock:
            self.latencies.append(time.perf_counter() - started)
            self.codes[f"{resp.status_code // 100}xx"] += 1
            if resp.status_code >= 500:
                self.errors.append(f"{method} {path}: {resp.status_code} {resp.text[:200]}")
        return resp

    def one(self, client: httpx.Client, last_post: list[float]) -> None:
        w, rng = self.world, self.rng
        k = w.keys
        roll = rng.random()
        if roll < 0.08 and time.monotonic() - last_post[0] > 3.0:  # a few erasures, not a flood
            last_post[0] = time.monotonic()
            subject = f"subject-{rng.randrange(20, 143):04d}"
            resp = self.call(client, "POST", "/erasure-requests", k["requester"], json={"subject_id": subject})
            if resp is not None and resp.status_code == 202:
                with self.lock:
                    self.filed.append(resp.json()["id"])
        elif roll < 0.30:
            rid = rng.choice(self.filed or [w.request_id])
            self.call(client, "GET", f"/requests/{rid}/status", k["requester"])
        elif roll < 0.45:
            self.call(client, "GET", rng.choice(["/models", f"/models/{MODEL}/versions", f"/models/{MODEL}"]), k["registry"])
        elif roll < 0.55:
            self.call(client, "GET", f"/models/{MODEL}/versions/latest/weights", k["registry"])
        elif roll < 0.65:
            self.call(client, "GET", rng.choice(["/admin/requests?limit=20", "/admin/requests/stats"]), k["admin"])
        elif roll < 0.80:  # refused ones: bad key, bad body, unknown model, another tenant
            choice = rng.randrange(4)
            if choice == 0:
                self.call(client, "GET", "/models", "lethe_not-a-key-000000000000000000000")
            elif choice == 1:
                self.call(client, "POST", "/erasure-requests", k["requester"], json={"subject_id": 5})
            elif choice == 2:
                self.call(client, "GET", "/models/no-such-model", k["registry"])
            else:
                self.call(client, "GET", f"/requests/{w.request_id}/status", k["other_tenant"])
        elif roll < 0.90:
            self.call(client, "GET", rng.choice(["/healthz", "/readyz"]), None)
        else:
            self.call(client, "GET", f"/datasets/{w.dataset}", k["admin"])

    def run(self, until: float) -> None:
        last_post = [0.0]
        while time.monotonic() < until:
            # a fresh connection pool every 50 calls: leaked server-side sockets would pile up
            with httpx.Client(base_url=self.base, timeout=30) as client:
                for _ in range(50):
                    if time.monotonic() >= until:
                        break
                    self.one(client, last_post)


def sample(proc: psutil.Process) -> dict[str, float]:
    return {
        "rss": proc.memory_info().rss,
        "fds": proc.num_fds(),
        "tcp": len(proc.net_connections(kind="tcp")),
        "threads": proc.num_threads(),
    }


def flat(samples: list[dict[str, float]], warmup: int) -> dict[str, Any]:
    """Baseline (median of 5 samples after warm-up) against the end (median of the last 5)."""
    base = {k: statistics.median(s[k] for s in samples[warmup : warmup + 5]) for k in samples[0]}
    end = {k: statistics.median(s[k] for s in samples[-5:]) for k in samples[0]}
    peak = {k: max(s[k] for s in samples[warmup:]) for k in samples[0]}
    return {"baseline": base, "end": end, "peak": peak}


def test_soak_mixed_traffic_keeps_memory_and_connections_flat(server) -> None:  # type: ignore[no-untyped-def]
    world, base, proc = server
    ps = psutil.Process(proc.pid)
    traffics = [Traffic(world, base, seed=i) for i in range(CLIENTS)]
    started = time.monotonic()
    until = started + SECONDS
    threads = [threading.Thread(target=t.run, args=(until,), daemon=True) for t in traffics]
    for t in threads:
        t.start()
    samples: list[dict[str, float]] = []
    while time.monotonic() < until:
        samples.append(sample(ps))
        time.sleep(1.0)
    for t in threads:
        t.join(60)
    samples.append(sample(ps))

    # drain: every filed request must complete (the embedded worker keeps going)
    filed = [rid for t in traffics for rid in t.filed]
    admin = bearer(world.keys["admin"])
    deadline = time.monotonic() + 120
    statuses: dict[str, str] = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        while time.monotonic() < deadline:
            statuses = {rid: client.get(f"/requests/{rid}/status", headers=admin).json()["status"] for rid in filed}
            if all(s in ("completed", "failed") for s in statuses.values()):
                break
            time.sleep(1.0)

    warmup = max(10, len(samples) // 5)
    shape = flat(samples, warmup)
    codes = sum((t.codes for t in traffics), Counter())
    latencies = sorted(x for t in traffics for x in t.latencies)
    errors = [e for t in traffics for e in t.errors]
    figures = {
        "seconds": round(time.monotonic() - started, 1),
        "soak_seconds": SECONDS,
        "clients": CLIENTS,
        "calls": len(latencies),
        "calls_per_s": round(len(latencies) / SECONDS, 1),
        "codes": dict(codes),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1),
        "erasure_requests": len(filed),
        "completed": sum(1 for s in statuses.values() if s == "completed"),
        "lost": sum(1 for s in statuses.values() if s != "completed"),
        "rss_mib": {k: round(v["rss"] / 2**20, 1) for k, v in shape.items()},
        "fds": {k: v["fds"] for k, v in shape.items()},
        "tcp_connections": {k: v["tcp"] for k, v in shape.items()},
        "threads": {k: v["threads"] for k, v in shape.items()},
        "errors": errors[:10],
    }
    print("\nSOAK " + json.dumps(figures), flush=True)
    if REPORT:
        Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
        Path(REPORT).write_text(json.dumps({**figures, "samples": samples}, indent=2))

    assert not errors, errors[:10]
    assert codes["5xx"] == 0 and codes["2xx"] > 100 and codes["4xx"] > 10, codes
    assert filed and figures["lost"] == 0, statuses
    b, e = shape["baseline"], shape["end"]
    allowed = max(b["rss"] * RSS_TOLERANCE[0], RSS_TOLERANCE[1])
    assert e["rss"] - b["rss"] <= allowed, f"RSS grew {(e['rss'] - b['rss']) / 2**20:.1f} MiB (allowed {allowed / 2**20:.1f})"
    assert e["fds"] - b["fds"] <= COUNT_TOLERANCE, shape
    assert e["tcp"] - b["tcp"] <= COUNT_TOLERANCE, shape
    assert e["threads"] - b["threads"] <= COUNT_TOLERANCE, shape
