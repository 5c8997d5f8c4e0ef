"""`lethe bench`: lists the checkout's benchmarks, runs one with its own arguments, and
refuses an unknown name naming the known ones."""

from __future__ import annotations

import json
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
    listed = out.stdout.split("benchmarks:")[1]
    assert "common" not in listed and "provenance" not in listed


def test_bench_passes_arguments_to_the_script() -> None:
    out = subprocess.run([*LETHE, "bench", "speedup", "--help"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    assert "--n-train" in out.stdout and "--device" in out.stdout


def test_bench_refuses_an_unknown_name() -> None:
    out = subprocess.run([*LETHE, "bench", "nope"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 2
    assert "unknown benchmark 'nope'" in out.stderr and "speedup" in out.stderr


def test_result_files_record_what_made_them(tmp_path: Path) -> None:
    """Every result a bench writes carries its commit, time, host, load and command."""
    bench = str(Path(__file__).resolve().parents[1] / "bench")
    code = (
        f"import sys; sys.path.insert(0, {bench!r}); from pathlib import Path; "
        "from common import emit; "
        f"emit({{'figure': 1.5}}, Path({str(tmp_path / 'r.json')!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    written = json.loads((tmp_path / "r.json").read_text())
    assert printed == written and written["figure"] == 1.5
    assert len(written["commit"].removesuffix("-dirty")) == 40
    assert written["time"].endswith("+00:00") and "CPUs" in written["host"]
    assert len(written["load_average"]) == 3 and written["command"].startswith("python")
