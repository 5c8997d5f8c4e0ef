"""The soak, the long run: tests/test_soak.py for ``--seconds`` (default 600).

``lethe serve`` (uvicorn + embedded worker) on loopback against the test PostgreSQL, four
client threads of mixed traffic, RSS / open descriptors / TCP connections / threads of the
server sampled each second and required flat after warm-up (the tolerances are in the test).
Needs the servers of ``make test`` (PostgreSQL on 127.0.0.1:5432). Writes the figures and
every sample to ``--out`` and prints the figures as one JSON object on the last line.

    python bench/soak.py                   # 10 minutes
    python bench/soak.py --seconds 3600 --out bench/results/soak-1h.json
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
RAN = ("tests/test_soak.py", "tests/conftest.py", "api", "worker", "unlearning_core")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the traffic phase")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/soak.json")
    args = parser.parse_args()
    if args.seconds < 30:
        parser.error("--seconds must be at least 30 (the warm-up alone is 10 s)")
    out = args.out.resolve()
    env = {**os.environ, "LETHE_SOAK_SECONDS": str(args.seconds), "LETHE_SOAK_REPORT": str(out)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_soak.py", "-q", "-s", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env,
    )
    if not out.exists():
        print(json.dumps({"error": "the soak wrote no figures", "pytest_status": proc.returncode}))
        return 1
    # the figures come from pytest's processes: the test, the service, its workers
    figures = stamped(json.loads(out.read_text()), ran=RAN)
    figures["pytest_status"] = proc.returncode
    out.write_text(json.dumps(figures, indent=2))
    figures.pop("samples", None)
    print(json.dumps(figures))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
