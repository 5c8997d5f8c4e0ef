"""The bring-your-own-training example (``examples/byo-training``) end to end, small.

The user's package is installed into the venv (its ``lethe.models`` entry point is how the
service rebuilds the user's network), ``lethe serve`` runs as a real process with its
embedded worker, and the example script trains on 2,000 Fashion-MNIST samples with its own
loop, records the run into the tenant's store, imports it, erases one subject through the
client and loads the pulled weights into its own model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_soak import free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "byo-training"
ADMIN = "lethe_example-admin-key-0000000000000000000000"

pytestmark = pytest.mark.timeout(900)


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, text=True, timeout=300)


@pytest.fixture
def served(service_env: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    _pip("install", "--no-deps", "--no-build-isolation", "--no-index", str(EXAMPLE))
    port = free_port()
    env = {**os.environ, "LETHE_PORT": str(port), "LETHE_HOST": "127.0.0.1", "LETHE_EMBEDDED_WORKER": "true",
           "LETHE_WORKER_POLL_SECONDS": "0.3", "LETHE_SEED_DEMO": "false", "LETHE_LOG_LEVEL": "WARNING",
           "LETHE_BOOTSTRAP_ADMIN_KEY": ADMIN, "LETHE_DEVICE": "cpu"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("lethe")), "serve"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120, "lethe serve")
        yield base, Path(os.environ["LETHE_BLOB_STORE"]) / "tenants" / "default"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _pip("uninstall", "-y", "lethe-example-nets")


def test_the_example_trains_imports_erases_and_pulls(served: tuple[str, Path], tmp_path: Path) -> None:
    base, store = served
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "train_and_erase.py"), "--url", base, "--api-key", ADMIN, "--store", str(store),
         "--train-samples", "2000", "--test-samples", "1000", "--epochs", "2", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["request_status"] == "completed" and result["pulled_version"] == 1, result
    assert result["versions"] == [0, 1]
    # 2,000 samples, 2 epochs: well above chance (0.1) before and after subtracting two steps
    assert result["original_test_acc"] > 0.5 and result["unlearned_test_acc"] > 0.3, result
    assert (store / "runs" / result["run_id"] / "dataset.json").is_file()  # attached at import
