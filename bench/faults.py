"""Fault injection, the long run: tests/test_faults.py with more requests per fault.

The same code as the bounded test in ``make test`` (private PostgreSQL, Redis, moto and
Celery workers; nothing shared is touched), with ``--requests`` erasure requests per fault
(default 10) and three worker kills instead of one. Writes the figures per fault (sent,
completed, failed with a readable error, lost, duplicated versions, whether the served
weights equal the trained ones minus each affected step exactly once, job attempts, seconds) to ``--out`` and prints them as one JSON object on the last line.

    python bench/faults.py                 # about 5 minutes on 2 CPU cores
    python bench/faults.py --requests 25 --out bench/results/faults-25.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from provenance import stamped  # noqa: E402

#: What the processes this bench starts run (recorded for the staleness check).
RAN = ("tests/test_faults.py", "tests/conftest.py", "api", "worker", "unlearning_core")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10, help="erasure requests per fault")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/faults.json")
    args = parser.parse_args()
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    out = args.out.resolve()
    env = {**os.environ, "LETHE_FAULT_REQUESTS": str(args.requests), "LETHE_FAULT_REPORT": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_faults.py", "-q", "-s", "-p", "no:cacheprovider",
         "-o", "timeout=1800"],
        cwd=ROOT, env=env,
    )
    if not out.exists():
        print(json.dumps({"error": "the fault run wrote no figures", "pytest_status": proc.returncode}))
        return 1
    # the figures come from pytest's processes: the test, the service, its workers
    figures = stamped(json.loads(out.read_text()), ran=RAN)
    figures["pytest_status"] = proc.returncode
    out.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
