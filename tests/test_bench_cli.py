"""`lethe bench`: lists the checkout's benchmarks, runs one with its own arguments, and
refuses an unknown name naming the known ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LETHE = [sys.executable, "-c", "from api.cli import main; main()"]
ROOT = Path(__file__).resolve().parents[1]


def test_bench_lists_the_benchmarks() -> None:
    out = subprocess.run([*LETHE, "bench"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0
    for name in ("sample_forgetting", "speedup", "sisa_sweep", "recording_overhead", "api_load"):
        assert name in out.stdout
    assert "common" not in out.stdout.split("benchmarks:")[1]


def test_bench_passes_arguments_to_the_script() -> None:
    out = subprocess.run([*LETHE, "bench", "speedup", "--help"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    assert "--n-train" in out.stdout and "--device" in out.stdout


def test_bench_refuses_an_unknown_name() -> None:
    out = subprocess.run([*LETHE, "bench", "nope"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 2
    assert "unknown benchmark 'nope'" in out.stderr and "speedup" in out.stderr
