"""Private PostgreSQL, Redis, S3 (moto) servers and ``lethe worker`` processes for fault tests.

Fault injection kills and restarts servers; doing that to the shared test servers would break
every other test running beside it. Each class here starts its own instance on a free
loopback port, in its own temporary directory, and knows how to crash, restart, freeze and
stop it. Only processes started here are ever signalled, by their own pid.

PostgreSQL refuses to run as root: as root, its cluster lives in a directory owned by the
``postgres`` user and its commands run through ``runuser -u postgres``; as anyone else, as
that user.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LETHE = str(Path(sys.executable).with_name("lethe"))
MOTO = str(Path(sys.executable).with_name("moto_server"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not up after {timeout:.0f}s")


def _stop_process(proc: subprocess.Popen[bytes] | None, *, kill: bool = False, timeout: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot handle SIGTERM
    except ProcessLookupError:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class PrivatePostgres:
    """A throw-away cluster: ``initdb`` + ``pg_ctl`` as the postgres user, trust auth, no fsync."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = Path(bins[-1]).parent
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="lethe-private-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )

    def _as_postgres(self, *argv: str, timeout: float = 60) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # root may not run it
        out = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {out.stderr[-2000:]}{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def start(self) -> None:
        opts = (
            # fsync off is safe against process crashes (the page cache survives them), which
            # is what these tests inject; synchronous_commit must stay on, or a crash loses
            # commits the server already acknowledged
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash (no shutdown checkpoint; recovery on the next start)."""
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, *, down_for: float = 0.0, mode: str = "immediate") -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.base, ignore_errors=True)


class PrivateRedis:
    """``redis-server`` without persistence: a restart loses every queued message, the worst case."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(lambda: answers(self.port), 20, "redis-server")

    def crash(self) -> None:
        _stop_process(self.proc, kill=True)

    def restart(self, *, down_for: float = 0.0) -> None:
        self.crash()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        _stop_process(self.proc, kill=True)


class PrivateS3:
    """A moto S3 server. It keeps its objects in memory, so "stopped for a while" is a
    frozen process (SIGSTOP, SIGCONT): clients connect and then hear nothing, as with a
    hung server, and the data is still there afterwards."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log = log_dir / "moto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOTO, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: answers(self.port), 60, "moto_server")

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        _stop_process(self.proc, kill=True)


class WorkerProcess:
    """A ``lethe worker`` (Celery, solo pool, CPU) with its own log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *, wait: bool = True) -> WorkerProcess:
        self.starts += 1
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [LETHE, "worker", "--device", "cpu", "--hostname", f"{self.name}-{self.starts}@%h", "--loglevel", "INFO"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        if wait:
            self.wait_ready()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if text.count(" ready.") >= self.starts:  # the log file is kept across restarts
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{text[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready in {timeout}s:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """Ask for a warm shutdown without waiting (stop several workers at once)."""
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10) -> None:
        _stop_process(self.proc, timeout=timeout)
