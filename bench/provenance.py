"""What made a result file, and whether the code that made it has changed since.

DESIGN.md's contract for every ``bench/results/*.json``: a figure without its provenance
cannot be compared or reproduced. :func:`stamped` adds

- ``commit`` (``-dirty`` when tracked files differed from it), ``time``, ``command`` (the
  exact argv);
- ``host``, ``cpu`` (the CPU's model name), ``gpu`` (the CUDA devices torch saw, or
  ``none``) and ``torch`` (its version, when the bench imported it);
- ``load_average_start`` (when this module was imported: the bench's start) and
  ``load_average_end`` (when the result is written), plus ``load_average`` (= the end);
- ``code``: the sha256 of every source file of this checkout the process had imported when
  it wrote the result (the bench script, ``bench/common.py``, each ``unlearning_core``
  module it used), so that a later change to any of them is seen;
- ``code_ran``, for a bench whose figures come from other processes (a pytest run that
  starts the service and its workers: ``faults``, ``soak``): the folders and files those
  processes ran. Every ``.py`` file under them goes into ``code`` too, and a file added
  there later also makes the result stale.

``python bench/provenance.py --check`` (run by ``make test``, which never reruns a bench)
lists each result whose recorded code differs from the checkout's, naming the files, and
each result that has no code record; the docs site marks the same tables stale
(``docs/hooks/bench_tables.py``). Standard library only, so the benches that drive pytest
(faults, soak) use it without importing torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
#: The bench's start, as near as a module import gets.
STARTED_LOAD = [round(x, 2) for x in os.getloadavg()]
#: Folders of this checkout whose modules count as the code of a result.
CODE_DIRS = ("bench", "unlearning_core", "api", "worker", "lethe_client")
#: Code that only stamps a result (this file): it computes no figure, so a change to it
#: neither goes into the record nor makes a result stale.
STAMPING_ONLY = frozenset({"bench/provenance.py"})


def commit() -> str:
    """``git rev-parse HEAD``, with ``-dirty`` when tracked files other than the results
    themselves (``bench/results/``, which one bench run after another rewrites) differ from it:
    the figure then comes from code that no commit holds; ``unknown`` outside a checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    """The CUDA devices, if the bench imported torch and torch sees one; else ``none``."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - a broken driver is "none" here, not a lost result
        pass
    return "none"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_files(root: Path = ROOT) -> dict[str, str]:
    """``{path relative to the checkout: sha256}`` of every imported module's source file
    under :data:`CODE_DIRS` (and the script that runs, whatever its folder)."""
    root = root.resolve()
    files: set[Path] = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f:
            files.add(Path(f).resolve())
    if sys.argv and sys.argv[0].endswith(".py"):
        files.add(Path(sys.argv[0]).resolve())
    out = {}
    for path in sorted(files):
        try:
            rel = path.relative_to(root)
        except ValueError:
            continue
        if (rel.parts and rel.parts[0] in CODE_DIRS and path.suffix == ".py" and path.is_file()
                and rel.as_posix() not in STAMPING_ONLY):
            out[rel.as_posix()] = _sha256(path)
    return out


def provenance() -> dict[str, Any]:
    """The fields, ready to merge into a result (see the module doc)."""
    torch = sys.modules.get("torch")
    end = [round(x, 2) for x in os.getloadavg()]
    return {
        "commit": commit(),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "cpu": cpu_name(),
        "gpu": gpu_name(),
        **({"torch": str(torch.__version__)} if torch is not None else {}),
        "load_average": end,
        "load_average_start": STARTED_LOAD,
        "load_average_end": end,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "code": code_files(),
    }


def _ran_paths(ran: Sequence[str], root: Path) -> dict[str, Path]:
    """``{path relative to root: path}`` of every ``.py`` file under the folders (or the
    files) ``ran``."""
    out = {}
    for entry in ran:
        base = root / entry
        for path in [base] if base.is_file() else sorted(base.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" not in path.parts and path.is_file() and rel not in STAMPING_ONLY:
                out[rel] = path
    return out


def ran_files(ran: Sequence[str], root: Path = ROOT) -> dict[str, str]:
    """``{path: sha256}`` of every ``.py`` file under the folders (or the files) ``ran``,
    relative to ``root``: the code of processes this one started, which its own imports do
    not show."""
    return {rel: _sha256(path) for rel, path in _ran_paths(ran, root).items()}


def stamped(result: dict[str, Any], *, ran: Sequence[str] = ()) -> dict[str, Any]:
    """``result`` with its provenance first. A result's own keys win, except ``code`` and
    ``load_average_end``, which only this module can know at the moment of writing.

    ``ran``: folders or files of this checkout that processes the bench started ran (see
    ``code_ran`` in the module doc); their files join ``code``. A result that names them in
    its own ``code_ran`` (a bench writing through ``common.emit``) gets the same."""
    ran = tuple(ran) or tuple(result.get("code_ran") or ())
    prov = provenance()
    code = {**prov["code"], **ran_files(ran)}
    extra = {"code_ran": list(ran)} if ran else {}
    return {**prov, **result, **extra, "code": dict(sorted(code.items())), "load_average_end": prov["load_average_end"]}


# ---------------------------------------------------------------- staleness


def staleness(data: dict[str, Any], root: Path = ROOT) -> dict[str, Any]:
    """Whether one result still describes the checkout's code: ``{"state": "current" |
    "stale" | "unknown", "changed": [...], "missing": [...], "added": [...]}``. ``unknown``:
    the result has no code record (it predates it); ``stale``: a file it ran has changed or
    is gone, or a file was added under a folder of its ``code_ran``."""
    code = data.get("code")
    if not isinstance(code, dict) or not code:
        return {"state": "unknown", "changed": [], "missing": [], "added": []}
    ran = data.get("code_ran")
    added = sorted(set(_ran_paths(ran, root)) - set(code)) if isinstance(ran, list) else []
    changed, missing = [], []
    for rel, digest in sorted(code.items()):
        if rel in STAMPING_ONLY:
            continue
        path = root / rel
        if not path.is_file():
            missing.append(rel)
        elif _sha256(path) != digest:
            changed.append(rel)
    stale = changed or missing or added
    return {"state": "stale" if stale else "current", "changed": changed, "missing": missing, "added": added}


def check(results: Path = RESULTS, root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """:func:`staleness` of every result file under ``results`` (by file stem)."""
    out = {}
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            out[path.stem] = {"state": "unreadable", "changed": [], "missing": [], "added": [], "error": str(exc)}
            continue
        out[path.stem] = staleness(data if isinstance(data, dict) else {}, root)
    return out


def stale_files(state: dict[str, Any]) -> list[str]:
    """What made a result stale, for people: changed files, then ``(gone)`` and ``(new)``
    ones (``--check`` and the docs' stale marks)."""
    return [*state["changed"], *(f"{m} (gone)" for m in state["missing"]), *(f"{a} (new)" for a in state["added"])]


def _report(states: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, s in states.items():
        if s["state"] == "current":
            continue
        if s["state"] == "stale":
            what = ", ".join(stale_files(s))
            lines.append(f"stale    {name}.json: its code changed since: {what}")
        elif s["state"] == "unknown":
            lines.append(f"unknown  {name}.json: no code record (written before results kept one); rerun it")
        else:
            lines.append(f"error    {name}.json: {s.get('error')}")
    current = sum(s["state"] == "current" for s in states.values())
    lines.append(f"{current} of {len(states)} result files match the code that made them")
    return "\n".join(lines)


def stamp_stdin(out: Path, command: str) -> None:
    """For a bench driven from the shell (``bench/compare_fashion.sh``): the JSON object on
    the last line of stdin (what ``lethe ... --json`` prints), stamped and written to ``out``.
    The code record is the CLI's import closure (this process imports it): the code that
    ``lethe`` ran."""
    import unlearning_core.cli.main  # noqa: F401 - the CLI's code, for the record
    import unlearning_core.methods  # noqa: F401

    lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not lines:
        sys.exit("--stamp: nothing on stdin (expected a JSON object on the last line)")
    try:
        result = json.loads(lines[-1])
    except ValueError as exc:
        sys.exit(f"--stamp: the last line of stdin is not JSON: {exc}")
    if not isinstance(result, dict):
        sys.exit("--stamp: the last line of stdin is not a JSON object")
    stamped_result = {**stamped(result), "command": command}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stamped_result, indent=2) + "\n")
    print(json.dumps(stamped_result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description="Benchmark results whose code changed since they were written.")
    ap.add_argument("--check", action="store_true", help="list stale results (the default action)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--strict", action="store_true", help="exit 1 if any result is stale or unknown")
    ap.add_argument("--stamp", type=Path, metavar="OUT", help="stamp the JSON on stdin's last line, write OUT")
    ap.add_argument("--command", default="", help="with --stamp: the command that made the result")
    args = ap.parse_args()
    if args.stamp is not None:
        stamp_stdin(args.stamp, args.command or "unknown")
        return
    if not args.results.is_dir():
        sys.exit(f"no results folder at {args.results}")
    states = check(args.results)
    print(_report(states))
    if args.strict and any(s["state"] != "current" for s in states.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
