"""What made a result file: the commit, the time, the host, its load and the command.

DESIGN.md's contract for every ``bench/results/*.json``: a figure without these cannot be
compared or reproduced. The docs site prints them under each generated table
(``docs/hooks/bench_tables.py``). Standard library only, so the benches that drive pytest
(faults, soak) use it without importing torch.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """``git rev-parse HEAD``, with ``-dirty`` when tracked files differ from it (the figure
    then comes from code that no commit holds); ``unknown`` outside a checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def provenance() -> dict[str, Any]:
    """The five fields, ready to merge into a result."""
    return {
        "commit": commit(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
    }


def stamped(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with its provenance first (a result's own keys win)."""
    return {**provenance(), **result}
