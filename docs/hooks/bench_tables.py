"""Benchmark tables for the documentation, rendered from ``bench/results/*.json`` at build time.

A page asks for a table with a placeholder on a line of its own::

    <!-- bench-table: speedup -->          bench/results/speedup.json
    <!-- bench-table: gpu/speedup -->      bench/results/gpu/speedup.json
    <!-- bench-table: headlines -->        one line per benchmark, from several result files

The name is the result file's path under ``bench/results/`` without ``.json``; its last part
picks the renderer, so a GPU run of a benchmark renders like the CPU one. Every table is
followed by the file's provenance (``commit``, ``time``, ``host``, ``load_average``,
``command``, and the recorded settings); a field the file lacks is said to be missing, never
filled in. No figure about a benchmark is typed into a page: it comes from here.

An unknown placeholder or a missing result file raises :class:`BenchTableError`, which stops
``mkdocs build`` (and so ``make docs`` and ``tests/test_docs.py``).

MkDocs loads this file as a hook (``hooks:`` in ``mkdocs.yml``): :func:`on_page_markdown`
fills the placeholders, :func:`on_files` publishes the benchmark plots (``bench/results/**.png``)
under ``bench-results/`` in the site, :func:`on_serve` rebuilds when a result changes.
The rendering itself (:func:`render`) is a pure function of a name and the parsed JSON.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

try:  # a readable build error inside MkDocs; a plain exception when imported on its own
    from mkdocs.exceptions import PluginError as _Base
except ImportError:  # pragma: no cover - mkdocs is installed with the docs and test extras
    _Base = Exception

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "bench" / "results"
#: where the plots of bench/results/ appear in the built site
SITE_PLOTS = "bench-results"

#: a placeholder is an HTML comment on a line of its own (a mention inside a sentence is prose)
PLACEHOLDER = re.compile(
    r"^[ \t]*<!--[ \t]*bench-table:[ \t]*(?P<name>[^\s>]*)[ \t]*-->[ \t]*$", re.M
)

#: provenance fields every result file should record (DESIGN.md, "Bench result JSON")
PROVENANCE = ("commit", "time", "host", "load_average", "command")
#: the fields bench/provenance.py adds since results record their machine and code
PROVENANCE_MACHINE = ("cpu", "gpu", "torch", "load_average_start", "load_average_end")


@functools.cache
def _bench_provenance() -> Any:
    """bench/provenance.py (standard library only), for its staleness check; loaded once per
    build, not once per table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lethe_bench_provenance", ROOT / "bench" / "provenance.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def staleness_line(data: Mapping[str, Any]) -> str | None:
    """A warning when the code that made a result has changed since (or was not recorded)."""
    provenance = _bench_provenance()
    state = provenance.staleness(dict(data), ROOT)
    if state["state"] == "stale":
        files = provenance.stale_files(state)
        shown = ", ".join(f"`{f}`" for f in files[:6]) + (f" and {len(files) - 6} more" if len(files) > 6 else "")
        return f"**stale**: code this result ran has changed since it was written ({shown}); rerun the benchmark"
    if state["state"] == "unknown":
        return "code not recorded (written before results kept the sha256 of the code they ran): it may be stale"
    return None

FASHION_CLASSES = {
    0: "T-shirt/top",
    1: "trouser",
    2: "pullover",
    3: "dress",
    4: "coat",
    5: "sandal",
    6: "shirt",
    7: "sneaker",
    8: "bag",
    9: "ankle boot",
}


class BenchTableError(_Base):
    """A placeholder names no known table, or its result file is missing or unreadable."""


# --------------------------------------------------------------------------------------
# formatting


def _num(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def acc(x: Any) -> str:
    """An accuracy or AUC (fraction) to two decimals; a non-zero value below 0.005 is ``<0.01``."""
    if isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 0.005:
        return "<0.01"
    return _num(None if x is None else float(x), 2)


def secs(x: Any) -> str:
    """Seconds: three significant figures for small values, two decimals otherwise."""
    if x is None:
        return "-"
    x = float(x)
    if x < 0.1:
        return f"{x:.3f}"
    if x < 100:
        return f"{x:.2f}"
    return f"{x:,.1f}"


def ratio(x: Any) -> str:
    """A speed-up: ``94x``, ``4.3x``, ``0.32x``."""
    if x is None:
        return "-"
    x = float(x)
    if x >= 20:
        return f"{x:,.0f}x"
    if x >= 1:
        return f"{x:.1f}x"
    return f"{x:.2f}x"


def unchanged(m: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> bool:
    """Whether a method row left the weights as they were, so that its seconds time a method
    that did nothing: the bench's own ``weights_changed`` when it recorded one, else (files
    from before it did) forget and test accuracy equal to the original's bit for bit."""
    if "weights_changed" in m:
        return m["weights_changed"] is False
    if m.get("method") in ("retrain", "sisa") or data is None:
        return False
    pairs = (("forget_acc", "original_forget_acc"), ("test_acc", "original_test_acc"))
    known = [(m.get(a), data.get(b)) for a, b in pairs if m.get(a) is not None and data.get(b) is not None]
    return len(known) == 2 and all(float(x) == float(y) for x, y in known)


def speedup_cell(m: Mapping[str, Any], data: Mapping[str, Any] | None = None) -> str:
    """A method's speed-up vs retraining, or ``no change`` when it did not change the
    weights: a speed-up is only a speed-up if the method did its work."""
    return "no change" if unchanged(m, data) else ratio(m.get("speedup_vs_retrain"))


def share(x: Any, digits: int = 0, signed: bool = False) -> str:
    """A fraction as a percentage."""
    if x is None:
        return "-"
    return f"{float(x) * 100:{'+' if signed else ''}.{digits}f}%"


def size(n: Any) -> str:
    """Bytes in decimal units (MB = 10^6 bytes)."""
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:.0f} B"


def rate(n: Any) -> str:
    """Bytes per second in decimal units."""
    if n is None:
        return "-"
    n = float(n)
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB/s"
    return f"{n / 1e6:,.0f} MB/s"


def ci(value: Any, interval: Sequence[float] | None) -> str:
    if value is None:
        return "-"
    if not interval:
        return acc(value)
    return f"{acc(value)} [{acc(interval[0])}, {acc(interval[1])}]"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        cells = ["" if c is None else str(c).replace("|", "\\|").replace("\n", " ") for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device_of(data: Mapping[str, Any]) -> str:
    """The device a result was measured on, as the file records it."""
    dev = data.get("device")
    name = data.get("device_name")
    if dev and name:
        return f"{dev} ({name})"
    return str(dev or name or "device not recorded")


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_scalar(x) for x in v)
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_scalar(x)}" for k, x in v.items())
    return str(v)


#: top-level fields that describe how a benchmark was run (shown as its settings)
SETTING_KEYS = (
    "benchmark",
    "device",
    "device_name",
    "torch",
    "python",
    "cpu_count",
    "torch_threads",
    "server",
    "database",
    "dataset",
    "model",
    "train_limit",
    "test_limit",
    "epochs",
    "batch_size",
    "lr",
    "forget_class",
    "other_classes",
    "class_batch_share",
    "prune_first",
    "prune_last",
    "recovery_steps",
    "recording",
    "forget",
    "run_id",
    "sisa_run_id",
    "requests_per_fault",
    "soak_seconds",
    "clients",
    "wall_seconds",
    "pytest_status",
)


def provenance(name: str, data: Mapping[str, Any]) -> str:
    """The lines under a table: which file, its provenance fields, and its recorded settings."""
    missing = [k for k in PROVENANCE if k not in data]
    items = [f"result file: `bench/results/{name}.json`"]
    stale = staleness_line(data)
    if stale:
        items.append(stale)
    for key in PROVENANCE:
        if key in data:
            value = data[key]
            items.append(f"{key}: `{_scalar(value)}`" if value is not None else f"{key}: not recorded")
    machine = [f"{k} `{_scalar(data[k])}`" for k in PROVENANCE_MACHINE[:3] if data.get(k) is not None]
    if machine:
        items.append("machine: " + "; ".join(machine))
    if data.get("provenance_backfilled"):
        items.append(f"provenance {data['provenance_backfilled']}")
    if "load_average_start" in data or "load_average_end" in data:
        start = data.get("load_average_start")
        end = data.get("load_average_end")
        items.append(
            "load average (1, 5, 15 min): "
            + (f"`{_scalar(start)}` at the start" if start is not None else "start not recorded")
            + (f", `{_scalar(end)}` at the end" if end is not None else "")
        )
    settings = {k: data[k] for k in SETTING_KEYS if k in data and data[k] not in (None, "")}
    if isinstance(data.get("settings"), Mapping):
        settings.update(
            {k: v for k, v in data["settings"].items() if v not in (None, "") and k != "out"}
        )
    if settings:
        items.append("settings: " + "; ".join(f"{k} `{_scalar(v)}`" for k, v in settings.items()))
    if missing:
        items.append(
            "not recorded in this result file: "
            + ", ".join(f"`{k}`" for k in missing)
            + " (it predates the provenance fields; rerun the benchmark to record them)"
        )
    return "\n".join(f"- {i}" for i in items)


def _block(name: str, data: Mapping[str, Any], *parts: str) -> str:
    body = "\n\n".join(p for p in parts if p)
    return (
        f'{body}\n\n<div class="bench-provenance" markdown>\n\n{provenance(name, data)}\n\n</div>\n'
    )


def _class_name(data: Mapping[str, Any], k: Any) -> str:
    if data.get("dataset") == "fashion-mnist" and str(k).isdigit():
        return FASHION_CLASSES.get(int(k), f"class {k}")
    return f"class {k}"


# --------------------------------------------------------------------------------------
# one renderer per benchmark (keyed by the result file's base name)


def _partial_rows(r: Mapping[str, Any], data: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """Partial amnesiac's results of one model: one per mask kind when the file has them."""
    by_mask = r.get("partial_by_mask") or {}
    if not by_mask:
        return [("partial-amnesiac", r["partial-amnesiac"])] if r.get("partial-amnesiac") else []
    default = data.get("default_mask")
    return [
        (f"partial-amnesiac, {mask} mask" + (" (default)" if mask == default else ""), m)
        for mask, m in by_mask.items()
    ]


def render_class_forgetting(name: str, data: Mapping[str, Any]) -> str:
    others = [str(c) for c in data.get("other_classes", [])]
    forget = _class_name(data, data.get("forget_class"))
    header = [
        "model",
        "method",
        f"forget-class acc (train, {forget})",
        "retain acc",
        "test acc",
        *(f"{_class_name(data, c)} (test)" for c in others),
        "unlearn s",
        "batches subtracted",
    ]
    rows = []
    for r in data.get("rows", []):
        entries = [("original", r.get("original")), ("amnesiac", r.get("amnesiac")), *_partial_rows(r, data)]
        for i, (method, m) in enumerate(e for e in entries if e[1] is not None):
            other = m.get("other_class_acc", {})
            rows.append(
                [
                    f"`{r['model']}`" if i == 0 else "",
                    method,
                    acc(m.get("forget_acc")),
                    acc(m.get("retain_acc")),
                    acc(m.get("test_acc")),
                    *(acc(other.get(c)) for c in others),
                    secs(m["unlearn_seconds"]) if "unlearn_seconds" in m else "",
                    _num(m.get("batches_subtracted")) if "batches_subtracted" in m else "",
                ]
            )
    runs = table(
        [
            "model",
            "parameters",
            "lr",
            "steps",
            "train s",
            "recorder stall s",
            "updates stored",
            "share of batches holding the class",
        ],
        [
            [
                f"`{r['model']}`",
                _num(r.get("parameters")),
                _scalar(r.get("lr")),
                _num(r.get("steps")),
                secs(r.get("train_seconds")),
                secs(r.get("record_stall_seconds")),
                size(r.get("storage_bytes")),
                share(r.get("affected_batch_share")),
            ]
            for r in data.get("rows", [])
        ],
    )
    seed = data.get("seed_table_percent") or {}
    measured = {r["model"]: r for r in data.get("rows", [])}
    seed_rows = []
    for model, s in seed.items():
        here = measured.get(model)
        seed_rows.append(
            [
                f"`{model}`",
                _num(s.get("partial-amnesiac")),
                _num(s.get("amnesiac")),
                acc(here["partial-amnesiac"]["retain_acc"]) if here else "not measured in this run",
                acc(here["amnesiac"]["retain_acc"]) if here else "",
                s.get("note", ""),
            ]
        )
    seed_table = (
        table(
            [
                "model",
                "seed: partial retain %",
                "seed: amnesiac retain %",
                "here: partial retain",
                "here: amnesiac retain",
                "note",
            ],
            seed_rows,
        )
        if seed_rows
        else ""
    )
    masks_note = (
        f"Partial amnesiac pruned the recorded full updates at request time with each mask kind "
        f"({', '.join(data['masks'])}; pruning {_scalar(data.get('prune_first'))} at the first layer "
        f"to {_scalar(data.get('prune_last'))} at the last): each row is exactly what a "
        f"`--record partial --mask KIND` run would subtract. Its `unlearn s` is that request-time "
        f"pruning of full updates, not the speed of a recorded partial run "
        f"([Recording cost](../benchmarks/recording-cost.md) measures those)"
        + (f"; {data['timing']}." if data.get("timing") else ".")
        if data.get("masks")
        else ""
    )
    return _block(
        name,
        data,
        table(header, rows),
        masks_note,
        "Training runs behind the table:\n\n" + runs,
        "The seed paper's table next to this run:\n\n" + seed_table if seed_table else "",
    )


def _fr(p: Mapping[str, Any] | None) -> str:
    """forget / retain / test accuracy of one point."""
    if not p:
        return "-"
    return f"{acc(p.get('forget_acc'))} / {acc(p.get('retain_acc'))} / {acc(p.get('test_acc'))}"


def render_sparsity_sweep(name: str, data: Mapping[str, Any]) -> str:
    sweeps = data.get("masks") or {}
    if sweeps:
        return _render_sparsity_by_mask(name, data, sweeps)
    rows = []
    amn = data.get("amnesiac")
    if amn:
        rows.append(
            [
                "amnesiac",
                share(amn.get("pruned_share"), 1),
                acc(amn["forget_acc"]),
                acc(amn["retain_acc"]),
                acc(amn["test_acc"]),
                secs(amn.get("unlearn_seconds")),
            ]
        )
    for p in data.get("points", []):
        rows.append(
            [
                _scalar(p.get("prune_last")),
                share(p.get("pruned_share"), 1),
                acc(p["forget_acc"]),
                acc(p["retain_acc"]),
                acc(p["test_acc"]),
                secs(p.get("unlearn_seconds")),
            ]
        )
    auto = data.get("auto")
    if auto:
        rows.append(
            [
                f"**auto** {auto['prune_last']:.3f}",
                share(auto.get("pruned_share"), 1),
                acc(auto["forget_acc"]),
                acc(auto["retain_acc"]),
                acc(auto["test_acc"]),
                secs(auto.get("unlearn_seconds")),
            ]
        )
    header = [
        "last-layer share",
        "pruned share (parameter-weighted)",
        "forget acc",
        "retain acc",
        "test acc",
        "unlearn s",
    ]
    notes = []
    o = data.get("original")
    if o:
        notes.append(
            f"Original: forget acc {acc(o['forget_acc'])}, retain {acc(o['retain_acc'])}, "
            f"test {acc(o['test_acc'])}."
        )
    z = data.get("largest_zero_forget")
    if z:
        notes.append(
            f"Largest swept pruning with forget accuracy 0: last layer "
            f"{_scalar(z['prune_last'])} (pruned share {share(z['pruned_share'], 1)}, "
            f"retain {acc(z['retain_acc'])})."
        )
    if auto and "search" in auto:
        s = auto["search"]
        notes.append(
            f"`--prune auto` chose last layer {auto['prune_last']:.3f} after "
            f"{len(s.get('probes', []))} probes in {secs(auto.get('unlearn_seconds'))} s "
            f"(criterion `{s.get('criterion')}`, met: {_num(s.get('met'))})."
        )
    return _block(name, data, table(header, rows), " ".join(notes))


def _render_sparsity_by_mask(name: str, data: Mapping[str, Any], sweeps: Mapping[str, Any]) -> str:
    """One row per last-layer share, one column of forget / retain / test per mask kind."""
    masks = list(sweeps)
    default = data.get("default_mask")
    label = {m: f"{m}{' (default)' if m == default else ''}" for m in masks}
    by_last: dict[Any, dict[str, Mapping[str, Any]]] = {}
    shares: dict[Any, Any] = {}
    for m in masks:
        for p in sweeps[m].get("points", []):
            by_last.setdefault(p.get("prune_last"), {})[m] = p
            shares[p.get("prune_last")] = p.get("pruned_share")
    rows = []
    amn = data.get("amnesiac")
    if amn:
        rows.append(["amnesiac", share(amn.get("pruned_share"), 1), *([_fr(amn)] * len(masks)),
                     *([secs(amn.get("unlearn_seconds"))] * len(masks))])
    for last, pts in by_last.items():
        rows.append(
            [
                _scalar(last),
                share(shares[last], 1),
                *(_fr(pts.get(m)) for m in masks),
                *(secs(pts[m].get("unlearn_seconds")) if m in pts else "-" for m in masks),
            ]
        )
    autos = {m: sweeps[m].get("auto") for m in masks}
    rows.append(
        [
            "**auto**",
            ", ".join(f"{m}: {share(a.get('pruned_share'), 1)}" for m, a in autos.items() if a),
            *(f"{_fr(autos[m])} (last layer {autos[m]['prune_last']:.3f})" if autos[m] else "-" for m in masks),
            *(secs(autos[m].get("unlearn_seconds")) if autos[m] else "-" for m in masks),
        ]
    )
    header = [
        "last-layer share",
        "pruned share (parameter-weighted)",
        *(f"{label[m]}: forget / retain / test acc" for m in masks),
        *(f"{m}: unlearn s" for m in masks),
    ]
    notes = []
    o = data.get("original")
    if o:
        notes.append(f"Original: forget / retain / test acc {_fr(o)}.")
    for m in masks:
        z = sweeps[m].get("largest_zero_forget")
        a = autos[m]
        bits = []
        if z:
            bits.append(
                f"forget accuracy 0 up to last layer {_scalar(z['prune_last'])} (pruned "
                f"{share(z['pruned_share'], 1)}, retain {acc(z['retain_acc'])})"
            )
        else:
            bits.append("forget accuracy 0 at no swept pruning")
        if a and "search" in a:
            srch = a["search"]
            bits.append(
                f"`--prune auto` chose {a['prune_last']:.3f} after {len(srch.get('probes', []))} probes "
                f"in {secs(a.get('unlearn_seconds'))} s (met: {_num(srch.get('met'))})"
            )
        notes.append(f"**{label[m]}**: " + "; ".join(bits) + ".")
    notes.append(
        "`unlearn s` prunes the recorded full updates at request time (float32 here); recorded "
        "partial runs are timed on [Recording cost](../benchmarks/recording-cost.md)."
    )
    return _block(name, data, table(header, rows), " ".join(notes))


def render_affected_batches(name: str, data: Mapping[str, Any]) -> str:
    rows = []
    for p in data.get("points", []):
        o, a, q = p["original"], p["amnesiac"], p["partial-amnesiac"]
        rows.append(
            [
                _scalar(p["share_percent"]),
                share(p.get("affected_batch_share"), 1),
                f"{acc(o['forget_acc'])} / {acc(o['retain_acc'])}",
                acc(a["forget_acc"]),
                acc(a["retain_acc"]),
                f"**{acc(q['forget_acc'])}**" if q["forget_acc"] > 0.5 else acc(q["forget_acc"]),
                acc(q["retain_acc"]),
                _num(a.get("batches_subtracted")),
            ]
        )
    header = [
        "% batches with the class (asked)",
        "batches subtracted / all (measured)",
        "original forget / retain",
        "amnesiac forget",
        "amnesiac retain",
        "partial forget",
        "partial retain",
        "batches subtracted",
    ]
    return _block(name, data, table(header, rows))


def render_amnesiac_fashion(name: str, data: Mapping[str, Any]) -> str:
    t = data.get("training", {})
    modes = [m for m in ("none", "full", "partial") if m in t]
    full_bytes = t.get("full", {}).get("storage_bytes")

    def train_cell(m: str) -> str:  # medians over interleaved rounds when the file has them
        s = secs(t[m]["train_seconds"])
        return s + (
            f" ({share(t[m]['overhead_vs_none'], 0, True)})" if "overhead_vs_none" in t[m] else ""
        )

    def store_cell(m: str) -> str:
        b = t[m].get("storage_bytes", 0)
        s = size(b) if b else "0"
        if m == "partial" and full_bytes:
            s += f" ({share(b / full_bytes)} of full)"
        return s

    training = table(
        ["", *modes],
        [
            ["training seconds", *(train_cell(m) for m in modes)],
            [
                "training thread stalled by the recorder, s",
                *(secs(t[m].get("stall_seconds")) for m in modes),
            ],
            [
                "of which the writers' queue was full (back-pressure), s",
                *(secs(t[m].get("backpressure_seconds")) if "backpressure_seconds" in t[m] else "-" for m in modes),
            ],
            ["stored updates", *(store_cell(m) for m in modes)],
            ["steps", *(_num(t[m].get("steps")) for m in modes)],
        ],
    )
    rows = []
    labels = {"class": "class {c}", "random_1pct": "1% random samples"}
    for key in ("class", "random_1pct"):
        group = data.get(key) or {}
        for i, (method, m) in enumerate(group.items()):
            label = labels[key].format(c=data.get("forget_class"))
            rows.append(
                [
                    f"{label} (original forget acc {acc(m.get('original_forget_acc'))})"
                    if i == 0
                    else "",
                    method,
                    acc(m["forget_acc"]),
                    acc(m["retain_acc"]),
                    acc(m["test_acc"]),
                    acc(m.get("mia_auc")),
                    secs(m.get("unlearn_seconds")),
                    _num(m.get("batches_subtracted")),
                    size(m.get("bytes_read")),
                    _num(m.get("relearn_steps")),
                ]
            )
    header = [
        "forget set",
        "method",
        "forget acc",
        "retain acc",
        "test acc",
        "mia_auc",
        "unlearn s",
        "batches subtracted",
        "bytes read",
        "relearn steps",
    ]
    return _block(name, data, training, table(header, rows))


def render_compare_fashion(name: str, data: Mapping[str, Any]) -> str:
    rows = [
        [
            f"`{r['method']}`",
            r.get("guarantee", ""),
            acc(r["forget_acc"]),
            acc(r["retain_acc"]),
            acc(r["test_acc"]),
            acc(r.get("mia_auc")),
            secs(r.get("unlearn_seconds")),
            speedup_cell(r, data),
            _num(r.get("relearn_steps")),
        ]
        for r in data.get("rows", [])
    ]
    header = [
        "method",
        "guarantee",
        "forget acc",
        "retain acc",
        "test acc",
        "mia_auc",
        "unlearn s",
        "speed-up vs retrain",
        "relearn steps",
    ]
    notes = []
    if "single_model_test_acc" in data:
        notes.append(
            f"Single model test accuracy {acc(data['single_model_test_acc'])}, "
            f"SISA ensemble {acc(data.get('sisa_test_acc'))}."
        )
    by = {r["method"]: r for r in data.get("rows", [])}
    if "sisa" in by and "samples_processed" in by["sisa"]:
        s = by["sisa"]
        text = (
            f"SISA retrained {_num(s.get('shards_retrained'))} of {_num(s.get('shards'))} shards: "
            f"{_num(s['samples_processed'])} samples processed against "
            f"{_num(s.get('full_retrain_samples'))} for retraining the whole SISA configuration"
        )
        if "retrain" in by and "samples_processed" in by["retrain"]:
            text += (
                f" and {_num(by['retrain']['samples_processed'])} for retraining the single model"
            )
        notes.append(text + ".")
    return _block(name, data, table(header, rows), " ".join(notes))


def render_sample_forgetting(name: str, data: Mapping[str, Any]) -> str:
    def yn(d: Mapping[str, Any] | None) -> str:
        if not d:
            return ""
        return ", ".join(_num(d.get(k)) for k in ("forget_acc", "mia_auc", "mia_auc_lira"))

    header = [
        "model",
        "recovery steps",
        "forget acc [95% CI]",
        "test acc [95% CI]",
        "`mia_auc` [CI]",
        "`mia_auc_lira` [CI]",
        "retain acc",
        "`mia_efficacy`",
        "seconds",
        "speed-up",
        "in retrain's CI (forget, mia, lira)",
        "test within 1 pt",
        "meets goal",
    ]
    rows = []
    o = data.get("original")
    if o:
        rows.append(
            [
                "original (before erasure)",
                "",
                ci(o["forget_acc"], o.get("forget_acc_ci")),
                ci(o["test_acc"], o.get("test_acc_ci")),
                ci(o.get("mia_auc"), o.get("mia_auc_ci")),
                ci(o.get("mia_auc_lira"), o.get("mia_auc_lira_ci")),
                "",
                "",
                "",
                "",
                "",
                "",
                "",
            ]
        )
    for m in data.get("methods", []):
        seconds = (m.get("unlearn_seconds") or 0) + (m.get("recovery_seconds") or 0)
        gap = m.get("test_acc_gap")
        rows.append(
            [
                f"`{m['method']}`",
                _num(m.get("recovery_steps")) if m.get("recovery_steps") else "",
                ci(m["forget_acc"], m.get("forget_acc_ci")),
                ci(m["test_acc"], m.get("test_acc_ci")),
                ci(m.get("mia_auc"), m.get("mia_auc_ci")),
                ci(m.get("mia_auc_lira"), m.get("mia_auc_lira_ci")),
                acc(m.get("retain_acc")),
                acc(m.get("mia_efficacy")),
                secs(seconds),
                speedup_cell(m, data),
                yn(m.get("within_retrain_ci")),
                _num(abs(gap) <= 0.01) if gap is not None else "-",
                _num(m.get("meets_goal")),
            ]
        )
    sweep_rows = [
        [
            _num(s["subjects"]),
            _num(s.get("samples")),
            acc(s.get("forget_acc")),
            ci(s.get("mia_auc"), s.get("mia_auc_ci")),
            ci(s.get("mia_auc_lira"), s.get("mia_auc_lira_ci")),
            f"loss: {_num(s.get('visible_loss'))}, LiRA: {_num(s.get('visible_lira'))}",
        ]
        for s in data.get("visibility_sweep", [])
    ]
    sweep = ""
    if sweep_rows:
        sweep = (
            "How many subjects one erasure must cover before membership is visible at all "
            "(the original model, forget vs test samples; visible = CI lower bound above 0.5):\n\n"
            + table(
                [
                    "subjects erased together",
                    "samples",
                    "original forget acc",
                    "`mia_auc` [95% CI]",
                    "`mia_auc_lira` [95% CI]",
                    "visible",
                ],
                sweep_rows,
            )
        )
        need = data.get("subjects_needed")
        if need:
            sweep += (
                "\n\nSmallest number of subjects whose membership is visible: "
                + ", ".join(f"{k} {_scalar(v)}" for k, v in need.items())
                + "."
            )
    facts = []
    for key, label in (
        ("forget_samples", "forget samples"),
        ("steps_holding_forget", "steps holding them"),
        ("steps", "training steps"),
        ("train_seconds", "training s"),
        ("shadow_seconds", "shadow models s"),
        ("storage_bytes", "updates stored"),
    ):
        if key in data:
            v = data[key]
            shown = size(v) if key == "storage_bytes" else secs(v) if "seconds" in key else _num(v)
            facts.append(f"{label} {shown}")
    return _block(
        name,
        data,
        table(header, rows),
        "This run: " + "; ".join(facts) + "." if facts else "",
        sweep,
    )


def render_speedup(name: str, data: Mapping[str, Any]) -> str:
    st = data.get("settings", {})
    label = {
        "sisa": f"`sisa` (S:R = {st['sisa']})" if st.get("sisa") else "`sisa`",
        "partial-amnesiac": f"`partial-amnesiac` ({st['prune']})"
        if st.get("prune")
        else "`partial-amnesiac`",
    }
    rows = []
    for m in data.get("methods", []):
        cost = (
            f"{_num(m['samples_processed'])} samples"
            if "samples_processed" in m
            else f"{_num(m['batches_subtracted'])} batches, {size(m.get('bytes_read'))}"
            if "batches_subtracted" in m
            else ""
        )
        rows.append(
            [
                label.get(m["method"], f"`{m['method']}`"),
                secs(m.get("unlearn_seconds")),
                speedup_cell(m, data),
                acc(m.get("forget_acc")),
                acc(m.get("test_acc")),
                cost,
            ]
        )
    header = ["method", "seconds (median)", "speed-up vs retrain", "forget acc", "test acc", "work"]
    notes = (
        f"Device: {device_of(data)}. Original test accuracy {acc(data.get('original_test_acc'))}, "
        f"forget accuracy {acc(data.get('original_forget_acc'))} "
        f"on `{data.get('forget_subject')}`; training {secs(data.get('train_seconds'))} s "
        f"(SISA {secs(data.get('sisa_train_seconds'))} s), "
        f"updates stored {size(data.get('storage_bytes'))}."
    )
    return _block(name, data, table(header, rows), notes)


def render_sisa_sweep(name: str, data: Mapping[str, Any]) -> str:
    single = data.get("single", {})
    rows = [
        [
            "single model",
            "",
            secs(single.get("train_seconds")),
            "1x",
            acc(single.get("test_acc")),
            "",
            f"{secs(single.get('retrain_seconds'))} (retrain)",
            "1x",
            "",
        ]
    ]
    for r in data.get("settings_rows", []):
        rows.append(
            [
                _num(r["shards"]),
                _num(r["slices"]),
                secs(r.get("train_seconds")),
                ratio(r.get("train_cost_vs_single")),
                acc(r.get("test_acc")),
                f"{r['test_acc_vs_single']:+.3f}" if "test_acc_vs_single" in r else "",
                secs(r.get("unlearn_seconds")),
                ratio(r.get("speedup_vs_retrain")),
                ", ".join(_num(s) for s in r.get("samples_processed", [])),
            ]
        )
    header = [
        "S (shards)",
        "R (slices)",
        "training s",
        "vs single",
        "test acc",
        "vs single",
        "unlearn one subject s (median)",
        "speed-up vs retrain",
        "samples retrained (per subject)",
    ]
    return _block(name, data, table(header, rows))


def _erasure_label(key: str) -> str:
    if key == "one_subject":
        return "1 subject"
    return key.replace("_", " ")


def _unlearning_label(key: str, u: Mapping[str, Any]) -> str:
    if u.get("mask"):
        return f"{u.get('method', 'partial-amnesiac')}, {u['mask']} mask"
    return u.get("method") or key


def render_recording_overhead(name: str, data: Mapping[str, Any]) -> str:
    train_rows, unlearn_rows = [], []
    for store_name, s in data.get("stores", {}).items():
        t = s.get("training", {})
        full_bytes = t.get("full", {}).get("storage_bytes")
        for mode, m in t.items():
            stored = size(m["storage_bytes"]) if m.get("storage_bytes") else "0"
            if mode.startswith("partial") and full_bytes:
                stored += f" ({share(m['storage_bytes'] / full_bytes)} of full)"
            label = f"{m['mode']}, {m['mask']} mask" if m.get("mask") else m.get("mode", mode)
            train_rows.append(
                [
                    store_name,
                    label,
                    secs(m.get("train_seconds")),
                    share(m["overhead_vs_none"], 0, True) if "overhead_vs_none" in m else "",
                    stored,
                    size(m["bytes_per_step"]) if m.get("bytes_per_step") else "",
                    secs(m.get("stall_seconds")),
                ]
            )
        for erasure, methods in s.get("unlearning", {}).items():
            for key, u in methods.items():
                r = u.get("store_read", {})
                unlearn_rows.append(
                    [
                        store_name,
                        _erasure_label(erasure),
                        _unlearning_label(key, u),
                        size(u.get("bytes_read")),
                        _num(u.get("batches_subtracted")),
                        secs(u.get("unlearn_seconds")),
                        rate(u.get("throughput_bytes_per_s")),
                        rate(u["subtract_bytes_per_s"]) if "subtract_bytes_per_s" in u else "",
                        rate(r.get("store_get_bytes_per_s")),
                        rate(r["pipelined_read_bytes_per_s"]) if "pipelined_read_bytes_per_s" in r else "",
                        rate(r["raw_read_bytes_per_s"]) if "raw_read_bytes_per_s" in r else "",
                        share(u.get("throughput_over_store_get")),
                        share(u["subtract_over_store_get"]) if "subtract_over_store_get" in u else "",
                    ]
                )
    repeats = (data.get("settings") or {}).get("repeats")
    load = ", ".join(
        f"{k.replace('load_average_', '')} {_scalar(data[k])}" for k in ("load_average_start", "load_average_end")
        if k in data
    )
    note = (
        f"Medians of {_num(repeats)} measurements per erasure, each beside a read of the same "
        f"blobs. `unlearn` is the method's own timing (read, verify, decode, sum, subtract, rebuild "
        f"the model); `subtraction only` is the summation pipeline alone (`subtract_steps`). Load "
        f"average (1, 5, 15 min) during the run: {load}."
        if repeats
        else ""
    )
    return _block(
        name,
        data,
        table(
            [
                "store",
                "recording",
                "training s",
                "overhead vs none",
                "stored",
                "per step",
                "training thread stalled s",
            ],
            train_rows,
        ),
        table(
            [
                "store",
                "erasure",
                "method",
                "bytes read",
                "batches",
                "unlearn s",
                "unlearn throughput",
                "subtraction only",
                "store read (verified)",
                "read-ahead pool",
                "raw file read",
                "unlearn / store read",
                "subtraction / store read",
            ],
            unlearn_rows,
        ),
        note,
        _throughput_target(data),
    )


def _throughput_target(data: Mapping[str, Any], share_needed: float = 0.5) -> str:
    """Issue #17's target, checked on the file: full amnesiac and the default (fixed-mask)
    partial amnesiac each at ``share_needed`` of the store's verified read speed of the same
    blobs, for one subject and for 100, on every store measured."""
    checked, missed = 0, []
    for store_name, s in data.get("stores", {}).items():
        for erasure, methods in s.get("unlearning", {}).items():
            for key, u in methods.items():
                if key not in ("amnesiac", "partial-amnesiac/fixed"):
                    continue
                checked += 1
                got = u.get("throughput_over_store_get")
                if got is None or got < share_needed:
                    missed.append(f"{store_name}, {_erasure_label(erasure)}, {key}: {share(got)}")
    if not checked:
        return ""
    head = (f"Target: full and fixed-mask partial amnesiac unlearning at {share(share_needed)} or more of the "
            "store's verified read speed (method's own timing), for one subject and for 100, on each store: ")
    return head + ("met in all " + _num(checked) + " cases." if not missed else
                   f"missed in {len(missed)} of {checked}: " + "; ".join(missed) + ".")


API_ENDPOINTS = {
    "healthz": "`GET /healthz` (trivial, same app)",
    "post_erasure_requests": "`POST /erasure-requests`",
    "get_request_status": "`GET /requests/{id}/status`",
}


def render_api_load(name: str, data: Mapping[str, Any]) -> str:
    rows = []
    for key, e in data.get("endpoints", {}).items():
        statuses = ", ".join(f"{k}: {_num(v)}" for k, v in e.get("statuses", {}).items())
        rows.append(
            [
                API_ENDPOINTS.get(key, f"`{key}`"),
                _num(e.get("rps"), 1),
                _num(e.get("p50_ms"), 0),
                _num(e.get("p90_ms"), 0),
                _num(e.get("p99_ms"), 0),
                _num(e.get("max_ms"), 0),
                f"{_num(e.get('ok'))} / {_num(e.get('requests'))}",
                statuses,
                ratio(e.get("rps_over_healthz")),
            ]
        )
    header = [
        "endpoint",
        "requests/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "ok / sent",
        "statuses",
        "throughput vs healthz",
    ]
    return _block(name, data, table(header, rows))


FAULT_EXTRAS = {
    "kill_rounds": "{} rounds",
    "redis_down_s": "down {} s",
    "postgres_down_s": "down {} s",
    "s3_frozen_s": "frozen {} s",
}


def _subtracted_once(f: Mapping[str, Any]) -> str:
    """The weights-level check of a fault (tests/test_faults.py ``subtraction_check``). Files
    from before it counted repeats in the ledger, which is a set and so could only say 0:
    that count is not shown as a check."""
    if "each_step_subtracted_once" not in f:
        return "not checked (this file predates the check)"
    err = f.get("max_abs_error")
    return f"{_num(f['each_step_subtracted_once'])} ({err:.1e}, {_num(f.get('steps_affected'))} steps)" if err is not None else _num(f["each_step_subtracted_once"])


def render_faults(name: str, data: Mapping[str, Any]) -> str:
    rows, errors, delays = [], [], []
    for fault, f in data.get("faults", {}).items():
        extras = [fmt.format(_scalar(f[k])) for k, fmt in FAULT_EXTRAS.items() if k in f]
        rows.append(
            [
                fault + (f" ({', '.join(extras)})" if extras else ""),
                _num(f.get("sent")),
                _num(f.get("completed")),
                _num(f.get("failed_readable")),
                _num(f["completed_after_retry"]) if "completed_after_retry" in f else "-",
                _num(f.get("lost")),
                _num(f.get("duplicated_versions")),
                _subtracted_once(f),
                _num(f.get("job_attempts")),
                _num(f.get("api_503")),
                secs(f["seconds"]) if "seconds" in f else "-",
            ]
        )
        errors += [f"- {fault}: `{e}`" for e in f.get("errors", [])]
        if f.get("kill_delays_s"):
            delays.append(
                f"{fault}: the kills came {_scalar(f['kill_delays_s'])} s into a running job."
            )
    header = [
        "fault",
        "sent",
        "completed",
        "failed, readable",
        "after repair + retry",
        "lost",
        "duplicated versions",
        "each step subtracted once (max error)",
        "job attempts",
        "API 503s",
        "seconds",
    ]
    err = (
        "The readable errors, verbatim as recorded (truncated by the benchmark):\n\n"
        + "\n".join(errors)
        if errors
        else ""
    )
    return _block(name, data, table(header, rows), " ".join(delays), err)


def render_soak(name: str, data: Mapping[str, Any]) -> str:
    codes = data.get("codes", {})

    def moved(key: str, digits: int = 0) -> str:
        d = data.get(key) or {}
        base, end, peak = (_num(d.get(k), digits) for k in ("baseline", "end", "peak"))
        return f"{base} -> {end} (peak {peak})"

    row = [
        secs(data.get("soak_seconds")),
        _num(data.get("clients")),
        _num(data.get("calls")),
        _num(data.get("calls_per_s"), 1),
        # the soak counts answers per status class (a Counter): a class never seen is absent
        _num(codes.get("2xx", 0)),
        _num(codes.get("4xx", 0)),
        _num(codes.get("5xx", 0)),
        f"{_num(data.get('p50_ms'), 1)} / {_num(data.get('p99_ms'), 1)}",
        " / ".join(_num(data.get(k)) for k in ("erasure_requests", "completed", "lost")),
        moved("rss_mib", 1),
        moved("fds"),
        moved("tcp_connections"),
        moved("threads"),
    ]
    header = [
        "seconds of traffic",
        "clients",
        "calls",
        "calls/s",
        "2xx",
        "4xx",
        "5xx",
        "p50 / p99 ms",
        "erasures filed / completed / lost",
        "RSS MiB baseline -> end",
        "fds",
        "TCP conns",
        "threads",
    ]
    errs = data.get("errors") or []
    samples = len(data.get("samples", []))
    notes = f"Errors recorded: {_num(len(errs))}; resource samples in the file: {_num(samples)}."
    return _block(name, data, table(header, [row]), notes)


def _stream_label(c: Mapping[str, Any]) -> str:
    return f"{c.get('model')} ({c.get('method')}, record {c.get('record')})"


def _stream_policy(c: Mapping[str, Any]) -> str:
    return "off" if c.get("policy") == "off" else "on (default policy)"


def render_erasure_stream(name: str, data: Mapping[str, Any]) -> str:
    streams = {**data.get("configurations", {}), **data.get("ablations", {})}
    within = (data.get("policy") or {}).get("compact_within_days")
    training_rows = [
        [m, t.get("record"), _num(t.get("steps")), secs(t.get("train_seconds")), secs(t.get("wall_seconds")),
         size(t.get("storage_bytes"))]
        for m, t in data.get("training", {}).items()
    ]
    acc_rows, comp_rows, cost_rows, target_rows, fire_rows = [], [], [], [], []
    for c in streams.values():
        head = [_stream_label(c), _stream_policy(c), _num(c.get("recovery_steps")), _num(c.get("requests"))]
        first, low = c.get("first_test_acc"), c.get("min_test_acc")
        measured = [v for v in c.get("versions_log", []) if v.get("test_acc") is not None]
        below = (
            sum(1 for v in measured if v["test_acc"] < first - 0.02) if first is not None else None
        )
        compacted = [v["test_acc"] for v in measured if v.get("kind") == "compact"]
        acc_rows.append(head[:3] + [
            acc(first),
            f"{acc(low)} ({(low - first) * 100:+.1f} points)" if first is not None and low is not None else "-",
            f"{_num(below)} of {_num(len(measured))}" if below is not None else "-",
            f"{acc(min(compacted))} to {acc(max(compacted))}" if compacted else "-",
            acc(c.get("final_test_acc")),
            acc(c.get("final_retain_acc")),
        ])
        triggers = ", ".join(f"{t} {_num(n)}" for t, n in (c.get("triggers") or {}).items()) or "-"
        comp_rows.append(head + [
            f"{_num(c.get('compactions'))} ({_num(c.get('compactions_per_100_requests'), 1)} per 100)",
            triggers,
            share(c.get("max_subtracted_share")),
            f"{_num(c.get('exact_requests'))} of {_num(c.get('requests'))}",
            _num(c.get("mean_days_to_exact"), 2) if c.get("mean_days_to_exact") is not None else "never",
            _num(c.get("max_days_to_exact"), 2) if c.get("max_days_to_exact") is not None else "never",
        ])
        cost_rows.append(head[:3] + [
            f"{secs(c.get('approx_seconds_total'))} ({secs(c.get('approx_seconds_median'))} median)",
            secs(c.get("compaction_seconds_total")) if c.get("compactions") else "none",
            secs(c.get("retrain_per_request_seconds_estimate")),
            size(c.get("max_lineage_bytes")),
            size(c.get("final_store_bytes")),
        ])
        if "targets" in c:
            t = c["targets"]
            target_rows.append(head[:3] + [
                _num(t.get("test_acc_within_2_points_of_first")),
                _num(t.get("every_request_exact_within_policy_days")),
                _num(t.get("at_most_2_compactions_per_100_requests")),
                _num(c.get("targets_met")),
            ])
        if "default_policy_would_first_fire_at_request" in c:
            fired = c["default_policy_would_first_fire_at_request"]
            fire_rows.append(head[:3] + [
                _num(fired[t] + 1) if t in fired else "never"
                for t in ("requests", "subtracted_share", "accuracy_drop", "deadline")
            ])
    cols = ["model", "compaction", "recovery steps"]
    parts = [
        "Trained runs (each stream starts from a copy of its model's run):\n\n"
        + table(["model", "record", "steps", "training s", "wall s", "recorded"], training_rows),
        "Accuracy over the stream (versions: every published version, compactions included):\n\n"
        + table(
            cols + ["first test acc", "lowest test acc (vs first)", "versions over 2 points below first",
                    "compacted models' test acc", "final test acc", "final retain acc"],
            acc_rows,
        ),
        "Compactions and the exact tier (days of simulated time from a request's arrival to the "
        f"compaction that made it exact; the policy allows {_num(within)}):\n\n"
        + table(
            cols + ["requests", "compactions (full retrainings)", "triggers", "most steps subtracted",
                    "requests exact", "mean days to exact", "most days to exact"],
            comp_rows,
        ),
        "Compute (wall seconds) and storage:\n\n"
        + table(
            cols + ["approximate answers s", "compactions s", "retraining once per request s (estimate)",
                    "largest lineage", "store at the end"],
            cost_rows,
        ),
    ]
    if target_rows:
        parts.append("The issue's targets, with compaction on:\n\n" + table(
            cols + ["test acc never 2 points below first", "every request exact within the policy's days",
                    "at most 2 compactions per 100 (partial only)", "targets met"],
            target_rows,
        ))
    if fire_rows:
        parts.append(
            "With compaction off, the request at which each trigger of the default policy would "
            "first have fired on the never-compacted lineage:\n\n"
            + table(cols + ["requests", "subtracted share", "accuracy drop", "deadline"], fire_rows)
        )
    data_note = data.get("data", {}).get("retain_eval")
    if data_note:
        parts.append(f"Accuracies: {data_note}.")
    return _block(name, data, *parts)


def render_upload_purge(name: str, data: Mapping[str, Any]) -> str:
    """bench/upload_purge.py: blanking erased rows of an upload in place vs dropping them."""
    checks = ("recorded_runs_reload", "registered_digest_kept", "test_split_kept", "subjects_kept", "erased_pixels_gone")
    rows = [
        [c.get("variant"), c.get("format"), _num(c.get("erased")), secs(c.get("seconds")),
         _num(c.get("bytes_before")), _num(c.get("bytes_after")),
         ", ".join(k for k in checks if c.get(k) is False) or "none"]
        for c in data.get("cases", [])
    ]
    return _block(
        name, data,
        table(["variant", "format", "erased", "file work (s)", "bytes before", "bytes after", "breaks"], rows),
    )


def render_record_overhead(name: str, data: Mapping[str, Any]) -> str:
    """bench/record_overhead.py: the user's own loop, plain vs recorded full / partial."""
    labels = {"none": "plain (no recording)", "full": "`full`", "partial": f"`partial` {data.get('settings', {}).get('prune', '')}"}
    rows = []
    for key, v in data.get("variants", {}).items():
        pct = v.get("overhead_pct_paired_median")
        rows.append([
            labels.get(key, key), secs(v.get("seconds_median")), secs(v.get("seconds_min")),
            "-" if key == "none" else f"{pct:+.0f}%" if isinstance(pct, int | float) else "-",
            secs(v.get("cpu_seconds_median")),
            "-" if key == "none" else f"{v.get('cpu_overhead_pct', 0):+.0f}%",
            "-" if "bytes_per_step" not in v else f"{v['bytes_per_step'] / 1e3:.0f} kB",
            "-" if "storage_bytes" not in v else f"{v['storage_bytes'] / 1e6:.1f} MB",
            "-" if "stall_seconds_median" not in v else secs(v["stall_seconds_median"]),
            "-" if "backpressure_seconds_median" not in v else secs(v["backpressure_seconds_median"]),
            "yes" if v.get("same_weights_as_plain") else "no",
        ])
    return _block(name, data, table(
        ["loop", "wall s (median)", "fastest", "overhead (median of per-round ratios)", "CPU s (median)",
         "CPU overhead", "stored per step", "stored per run", "training thread in the recorder",
         "of which queue full (back-pressure)", "same weights as plain"],
        rows,
    ))


def render_storage_options(name: str, data: Mapping[str, Any]) -> str:
    """bench/storage_options.py: each storage option's bytes and what partial amnesiac then
    forgets and keeps; lossless codecs on the stored blobs; the ImageNet-scale table."""
    opts = data.get("options", {})
    base = data.get("baseline")
    orig = data.get("original") or {}
    rows = []
    for label, r in opts.items():
        rec = r.get("recording", {})
        rows.append([
            ("**" + label + "**") if label == base else label,
            f"{rec.get('mask')}, {rec.get('dtype')}, skip {rec.get('skip_layers', 0)}, group {rec.get('group_steps', 1)}"
            + (", zlib" if "zlib" in label else ""),
            acc(r.get("forget_acc")), acc(r.get("retain_acc")),
            f"{r.get('retain_vs_today_points', 0):+.1f}" if r.get("retain_vs_today_points") is not None else "-",
            acc(r.get("test_acc")),
            size(r.get("bytes_per_recorded_step")), size(r.get("storage_bytes")),
            share(r.get("storage_vs_today")),
            f"{_num(r.get('batches_subtracted'))} of {_num(r.get('recorded_steps'))}",
        ])
    head = (
        f"Original model: forget acc {acc(orig.get('forget_acc'))}, retain acc {acc(orig.get('retain_acc'))}, "
        f"test acc {acc(orig.get('test_acc'))}. Each option trains the same seed once and partial amnesiac "
        "(no recovery) erases the class; the bold row is today's partial recording, the reference of the "
        "retain column."
    )
    main = table(["option", "mask, dtype, layers skipped, steps per blob", "forget acc", "retain acc",
                  "retain vs today (points)", "test acc", "per recorded step", "per run", "of today's bytes",
                  "recorded steps subtracted"], rows)
    comp_rows = []
    for label, c in (data.get("compression") or {}).items():
        codecs = c.get("codecs", {})
        comp_rows.append([label, *(
            f"{share(v.get('saved'))} saved, {_num(v.get('compress_mb_s'), 0)} / {_num(v.get('decompress_mb_s'), 0)} MB/s"
            for v in codecs.values())])
    codec_names = list(next(iter((data.get("compression") or {}).values()), {}).get("codecs", {}))
    comp = table(["blobs of option", *codec_names], comp_rows) if comp_rows else ""
    scale = data.get("imagenet_scale") or {}
    scale_rows = []
    models = list((scale.get("rows") or {}).keys())
    options = list(next(iter((scale.get("rows") or {}).values()), {}).keys())
    for o in options:
        cells = []
        for m in models:
            r = scale["rows"][m][o]
            cells.append(f"{size(r['run_bytes'])} ({size(r['bytes_per_step'])}/step)")
        scale_rows.append([o, *cells])
    scale_head = (
        f"ImageNet scale: {_num(scale.get('epochs'))} epochs of {_num(scale.get('images'))} images at batch "
        f"{_num(scale.get('batch_size'))} = {_num(scale.get('steps'))} optimizer steps. Bytes per recorded step "
        "measured by encoding one step of each architecture's real tensor shapes with Lethe's encoder; zlib "
        "rows take the ratio measured on the class-forgetting run's real updates."
    ) if scale else ""
    verdict = ""
    target = data.get("resnet50_target") or {}
    if target:
        ok = [k for k, v in target.items() if v.get("meets_target")]
        under = [k for k, v in target.items() if v.get("under_1tb")]
        verdict = (
            "ResNet-50 target (under 1 TB at ImageNet scale, forget acc 0 and retain acc within 2 points of "
            "today's partial amnesiac on the class-forgetting run): "
            + ("met by " + ", ".join(f"`{k}`" for k in ok) if ok else
               "met by no option" + (f"; under 1 TB: {', '.join(f'`{k}`' for k in under)}" if under else ""))
            + "."
        )
    return _block(name, data, head, main, "Lossless compression of the stored blobs (saved share; compress / "
                  "decompress speed on this machine):" if comp else "", comp, scale_head,
                  table(["option", *models], scale_rows) if scale_rows else "", verdict)


def render_sample_forgetting_search(name: str, data: Mapping[str, Any]) -> str:
    """Experiment 4's hyper-parameter search: every trial on the validation erasure."""
    ref = data.get("validation_retrain") or {}
    keys = ("forget_acc", "test_acc", "mia_auc", "mia_auc_lira")
    rows = []
    for v in data.get("variants", []):
        trials = v.get("trials", [])
        chosen = v.get("chosen")
        cells = []
        for i, t in enumerate(trials):
            opts = _scalar(t.get("options")) or "defaults"
            mark = "**" if i == chosen else ""
            cells.append(f"{mark}{opts}: {_num(t.get('gap'), 3)}{mark}")
        rows.append(
            [
                f"`{v['method']}`",
                _num(v.get("recovery_steps")) if v.get("recovery_steps") else "",
                _num(len(trials)),
                _scalar(v.get("options")) or "defaults",
                _num(v.get("validation_gap"), 3),
                "; ".join(cells),
                secs(v.get("search_seconds")),
            ]
        )
    head = (
        f"Each method tried up to {_num(data.get('trials_per_method'))} configurations (the defaults "
        f"first) on a validation erasure of {_num(data.get('validation_subjects'))} departed subjects, "
        f"not the {_num(data.get('reported_subjects'))} reported ones; the criterion: "
        f"{data.get('criterion', '-')}. Validation retrain: "
        + ", ".join(f"{k} {acc(ref.get(k))}" for k in keys)
        + f". Search time in all: {secs(data.get('seconds'))} s."
    )
    return _block(
        name,
        data,
        head,
        table(
            [
                "method",
                "recovery steps",
                "trials",
                "chosen",
                "validation gap",
                "every trial: gap (chosen in bold)",
                "search s",
            ],
            rows,
        ),
    )


#: the issue's target (#18), in the order the judge page lists it
JUDGE_CRITERIA = (
    ("forget_acc", "forget acc in retrain's CI"),
    ("mia_auc", "`mia_auc` in retrain's CI"),
    ("ulira_auc", "U-LiRA AUC in retrain's CI"),
    ("test_acc", "test acc within 1 pt"),
    ("speedup", "speed-up"),
    ("score", "score vs retrain's"),
)


def _check_text(key: str, c: Mapping[str, Any]) -> str:
    """One criterion of the judge's verdict in words: the value, and by how much it misses."""
    if c.get("ok") is None:
        return "not measured"
    v, miss = float(c["value"]), float(c.get("miss") or 0.0)
    if "interval" in c:
        lo, hi = c["interval"]
        if c["ok"]:
            return f"{acc(v)} in [{acc(lo)}, {acc(hi)}]"
        return f"{acc(v)}, {_num(miss, 3)} {'below' if v < lo else 'above'} [{acc(lo)}, {acc(hi)}]"
    if key == "test_acc":
        return f"{_num(v * 100, 2)} pt" + ("" if c["ok"] else f", {_num(miss * 100, 2)} pt too far")
    if key == "speedup":
        return ratio(v) + ("" if c["ok"] else f", {ratio(c['limit'] / v)} too slow")
    return f"{share(v)} of retrain's" + ("" if c["ok"] else f", {share(miss)} short")


def judge_target(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The judge's own verdict per approximate method (``verdicts`` in the result file,
    computed by bench/judge.py): each criterion of the issue's target, passed or not, in words."""
    out = []
    for v in data.get("verdicts", []):
        checks = {k: (c.get("ok"), _check_text(k, c)) for k, c in v["checks"].items()}
        out.append({**v, "checks": checks})
    return out


def render_judge(name: str, data: Mapping[str, Any]) -> str:
    rows = data.get("methods", [])
    base = next((r for r in rows if r.get("method") == "retrain"), None)
    b_score = (base or {}).get("score", {}).get("score")

    def ci_of(d: Mapping[str, Any], key: str) -> str:
        return ci(d.get(key), d.get(f"{key}_ci"))

    main_rows = []
    for r in rows:
        sc, ul = r["score"], r["ulira"]
        main_rows.append(
            [
                f"`{r['label']}`" + (" (second retrained set)" if r is base else ""),
                f"{_num(r.get('distinct_models'))} of {_num(r.get('models'))}",
                _num(sc.get("score"), 3),
                ci(sc.get("forget_quality"), sc.get("forget_quality_ci")),
                f"{_num(sc.get('retain_ratio'), 3)} / {_num(sc.get('test_ratio'), 3)}",
                share(sc["score"] / b_score) if b_score else "-",
                ci_of(ul, "auc"),
                ci_of(ul, "tpr_at_0.01"),
                ci_of(ul, "tpr_at_0.001"),
                _num(r.get("confidence_spread")),
                acc(r.get("forget_acc_mean")),
                acc(r.get("test_acc_mean")),
                secs(r.get("seconds_median")),
                ratio(r.get("speedup_vs_retrain")),
            ]
        )
    c = data.get("counts", {})
    ref = data.get("reference", {})
    intro = (
        f"{_num(c.get('unlearned_per_method'))} unlearned models per method, all from one original, "
        f"against {_num(c.get('retrained_reference'))} models retrained from scratch with other "
        f"seeds (reference: forget acc {acc(ref.get('forget_acc_mean'))}, test acc "
        f"{acc(ref.get('test_acc_mean'))}); retraining is judged with a second set of "
        f"{_num(c.get('retrained_as_method'))}. \"distinct\" counts models whose forget-set "
        "confidences differ (1 = the method is deterministic given the original); \"spread\" is "
        "the median over forget examples of the confidence's standard deviation across the "
        f"models (the reference's: {_num(ref.get('confidence_spread'))})."
    )
    main = table(
        [
            "method",
            "distinct models",
            "score",
            "forget quality F [95% CI]",
            "retain / test acc ratio",
            "score vs retrain's",
            "U-LiRA AUC [95% CI]",
            "TPR @ 1% FPR [CI]",
            "TPR @ 0.1% FPR [CI]",
            "spread",
            "forget acc (mean)",
            "test acc (mean)",
            "seconds (median)",
            "speed-up (this run)",
        ],
        main_rows,
    )
    checks = judge_target(data)
    target_rows = []
    for t in checks:
        cells = []
        for key, _ in JUDGE_CRITERIA:
            ok, text = t["checks"][key]
            mark = "yes" if ok else ("no" if ok is False else "?")
            cells.append(f"{mark}: {text}")
        target_rows.append([f"`{t['label']}`", *cells, _num(t["meets"])])
    e4 = data.get("experiment4") or {}
    src = (
        f"Forget acc, `mia_auc`, test acc and speed-up come from experiment 4 "
        f"(`{e4.get('file', 'bench/results/sample_forgetting.json')}`, commit "
        f"`{e4.get('commit', 'not recorded')}`, {e4.get('time', 'time not recorded')}), the same "
        "erasure with the same configurations; U-LiRA and the score from this run."
        if e4
        else "Experiment 4's result was missing when this ran: its criteria are not checked."
    )
    target_table = table(
        ["method", *(label for _, label in JUDGE_CRITERIA), "meets target"], target_rows
    )
    verdict = ""
    if checks:
        winners = [t for t in checks if t["meets"]]
        if winners:
            verdict = "Meets the target: " + ", ".join(f"`{t['label']}`" for t in winners) + "."
        else:
            best = min(
                checks,
                key=lambda t: (
                    len(t["missed"]) + len(t["unknown"]),
                    -(t["score_share"] or 0.0),
                ),
            )
            labels = dict(JUDGE_CRITERIA)
            misses = "; ".join(f"{labels[k]}: {best['checks'][k][1]}" for k in best["missed"])
            verdict = (
                f"No approximate method meets the target. Closest (fewest criteria missed, then "
                f"the highest score): `{best['label']}`, which misses "
                f"{len(best['missed'])} of {len(JUDGE_CRITERIA)}: {misses}."
            )
    return _block(name, data, intro, main, "The issue's target, criterion by criterion. " + src, target_table, verdict)


RENDERERS: dict[str, Callable[[str, Mapping[str, Any]], str]] = {
    "affected_batches": render_affected_batches,
    "upload_purge": render_upload_purge,
    "record_overhead": render_record_overhead,
    "amnesiac_fashion": render_amnesiac_fashion,
    "api_load": render_api_load,
    "class_forgetting": render_class_forgetting,
    "compare_fashion": render_compare_fashion,
    "erasure_stream": render_erasure_stream,
    "erasure_stream_no_share_trigger": render_erasure_stream,
    "faults": render_faults,
    "judge": render_judge,
    "storage_options": render_storage_options,
    "recording_overhead": render_recording_overhead,
    "sample_forgetting": render_sample_forgetting,
    "sample_forgetting_search": render_sample_forgetting_search,
    "sisa_sweep": render_sisa_sweep,
    "soak": render_soak,
    "sparsity_sweep": render_sparsity_sweep,
    "speedup": render_speedup,
}


# --------------------------------------------------------------------------------------
# headlines: one line per benchmark, for the overview page


def _headline_rows(results: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    rows: list[list[str]] = []

    def get(name: str) -> Mapping[str, Any] | None:
        return results.get(name)

    parts = []
    for n in ("gpu/class_forgetting", "class_forgetting"):
        d = get(n)
        for r in (d or {}).get("rows", []):
            p, a = r["partial-amnesiac"], r["amnesiac"]
            parts.append(
                f"{r['model']}: retain {acc(p['retain_acc'])} vs {acc(a['retain_acc'])}, "
                f"forget {acc(p['forget_acc'])} vs {acc(a['forget_acc'])} ({d.get('device')})"
            )
    rows.append(
        [
            "partial amnesiac keeps retain accuracy, amnesiac loses it (partial vs amnesiac)",
            "class_forgetting",
            "; ".join(parts),
        ]
    )

    d = get("sparsity_sweep")
    if d:
        z, auto, amn = d.get("largest_zero_forget"), d.get("auto"), d.get("amnesiac")
        rows.append(
            [
                "largest pruning that still forgets, found per request",
                "sparsity_sweep",
                f"forget 0 up to {share(z['pruned_share'])} of entries pruned; "
                f"`--prune auto` picked {share(auto['pruned_share'])}, "
                f"retain {acc(auto['retain_acc'])} vs amnesiac "
                f"{acc(amn['retain_acc'])} ({d.get('device')})",
            ]
        )

    d = get("affected_batches")
    if d:
        pts = d.get("points", [])
        ok = [p for p in pts if p["partial-amnesiac"]["forget_acc"] < 0.05]
        bad = [p for p in pts if p["partial-amnesiac"]["forget_acc"] >= 0.05]
        text = ""
        if ok:
            rets = [p["partial-amnesiac"]["retain_acc"] for p in ok]
            text = (
                f"partial forgets with retain {acc(min(rets))}-{acc(max(rets))} up to "
                f"{_scalar(max(p['share_percent'] for p in ok))}% of batches"
            )
        if bad:
            text += "; it does not reach forget accuracy 0.05 at " + ", ".join(
                f"{_scalar(p['share_percent'])}% "
                f"(forget acc {acc(p['partial-amnesiac']['forget_acc'])})"
                for p in bad
            )
        rows.append(
            [
                "forget data must sit in part of training",
                "affected_batches",
                f"{text} ({d.get('device')})",
            ]
        )

    d = get("sample_forgetting")
    if d:
        meet = [
            f"{m['method']}{' +' + str(m['recovery_steps']) if m.get('recovery_steps') else ''}"
            for m in d.get("methods", [])
            if m.get("meets_goal") and m["method"] != "retrain"
        ]
        need = d.get("subjects_needed", {})
        rows.append(
            [
                "sample forgetting vs retraining, with CIs and LiRA",
                "sample_forgetting",
                ("approximate methods meeting the goal: " + (", ".join(meet) if meet else "none"))
                + (
                    f"; membership visible from {_scalar(need.get('loss'))} subjects (loss), "
                    f"{_scalar(need.get('lira'))} (LiRA)"
                    if need
                    else ""
                )
                + f" ({d.get('device')})",
            ]
        )

    parts = []
    for n in ("speedup", "gpu/speedup"):
        d = get(n)
        if d:
            by = {m["method"]: m for m in d.get("methods", [])}
            parts.append(
                ", ".join(
                    f"{k} {speedup_cell(by[k], d)}"
                    for k in ("amnesiac", "partial-amnesiac", "sisa")
                    if k in by
                )
                + f" ({device_of(d)})"
            )
    rows.append(["unlearning speed-up vs retraining (one subject)", "speedup", "; ".join(parts)])

    d = get("sisa_sweep")
    if d and d.get("settings_rows"):
        most = max(d["settings_rows"], key=lambda r: (r["shards"], -r["slices"]))
        rows.append(
            [
                "SISA trade-off",
                "sisa_sweep",
                f"{_num(most['shards'])} shards, {_num(most['slices'])} slice(s): "
                f"{ratio(most['speedup_vs_retrain'])} faster erasure, test {acc(most['test_acc'])} "
                f"vs {acc(d['single']['test_acc'])} ({d.get('device')})",
            ]
        )

    d = get("amnesiac_fashion")
    if d:
        t = d["training"]
        rows.append(
            [
                "recording cost",
                "amnesiac_fashion, recording_overhead",
                f"partial stores {share(d['storage_partial_over_full'])} of full; "
                f"{share(t['full']['overhead_vs_none'], 0, True)} / "
                f"{share(t['partial']['overhead_vs_none'], 0, True)} training time "
                f"(full / partial, {d.get('device')})",
            ]
        )

    d = get("api_load")
    if d:
        e = d.get("endpoints", {})
        bits = []
        for key, label in (
            ("post_erasure_requests", "POST"),
            ("get_request_status", "status"),
            ("healthz", "healthz"),
        ):
            if key in e:
                bits.append(
                    f"{label} {_num(e[key]['rps'], 0)} req/s (p99 {_num(e[key]['p99_ms'], 0)} ms)"
                )
        rows.append(["API throughput", "api_load", ", ".join(bits) + f" ({d.get('database', '')})"])
    return rows


#: result files the headline table reads
HEADLINE_SOURCES = (
    "class_forgetting",
    "gpu/class_forgetting",
    "sparsity_sweep",
    "affected_batches",
    "sample_forgetting",
    "speedup",
    "gpu/speedup",
    "sisa_sweep",
    "amnesiac_fashion",
    "api_load",
)


def render_headlines(results: Mapping[str, Mapping[str, Any]]) -> str:
    rows = _headline_rows(results)
    sources = ", ".join(f"`bench/results/{n}.json`" for n in HEADLINE_SOURCES if n in results)
    return (
        table(["claim", "benchmark", "headline (device)"], rows)
        + f"\n\nComputed at build time from {sources}; "
        + "the benchmark pages give each file's provenance.\n"
    )


# --------------------------------------------------------------------------------------
# entry points


def renderer_for(name: str) -> Callable[[str, Mapping[str, Any]], str]:
    base = name.rsplit("/", 1)[-1]
    if base not in RENDERERS:
        raise BenchTableError(
            f"unknown bench table {name!r}: known result files are {', '.join(sorted(RENDERERS))} "
            "(optionally under gpu/), or 'headlines'"
        )
    return RENDERERS[base]


def render(name: str, data: Mapping[str, Any]) -> str:
    """Markdown for the placeholder ``name`` from the parsed result JSON ``data``.

    For ``headlines``, ``data`` maps result names (``speedup``, ``gpu/speedup``, ...) to their JSON.
    """
    if name == "headlines":
        return render_headlines(data)
    return renderer_for(name)(name, data)


def load(name: str, results_dir: Path = RESULTS_DIR) -> Any:
    """The parsed JSON behind ``name``; a missing or unreadable file raises BenchTableError."""
    if name == "headlines":
        return {n: load(n, results_dir) for n in HEADLINE_SOURCES}
    renderer_for(name)  # unknown names fail before touching the disk
    path = results_dir / f"{name}.json"
    if not path.is_file():
        raise BenchTableError(f"bench table {name!r}: result file {path} is missing")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BenchTableError(f"bench table {name!r}: cannot read {path}: {exc}") from exc


def replace_placeholders(
    markdown: str, results_dir: Path = RESULTS_DIR, where: str = "page"
) -> str:
    """Every ``<!-- bench-table: NAME -->`` in ``markdown`` replaced by its rendered table."""

    def one(match: re.Match[str]) -> str:
        name = match.group("name")
        try:
            return render(name, load(name, results_dir))
        except BenchTableError as exc:
            raise BenchTableError(f"{where}: {exc}") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise BenchTableError(
                f"{where}: bench table {name!r}: unexpected result structure: {exc!r}"
            ) from exc

    return PLACEHOLDER.sub(one, markdown)


# --------------------------------------------------------------------------------------
# MkDocs hook events


def _results_dir(config: Any) -> Path:
    cfg = getattr(config, "config_file_path", None) or (
        config.get("config_file_path") if config else None
    )
    return Path(cfg).resolve().parent / "bench" / "results" if cfg else RESULTS_DIR


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return replace_placeholders(markdown, _results_dir(config), where=page.file.src_uri)


def on_files(files: Any, config: Any) -> Any:
    """Publish the benchmark plots under ``bench-results/`` so pages can show them."""
    from mkdocs.structure.files import File

    results = _results_dir(config)
    for png in sorted(results.rglob("*.png")):
        rel = png.relative_to(results).as_posix()
        files.append(File.generated(config, f"{SITE_PLOTS}/{rel}", abs_src_path=str(png)))
    return files


def on_serve(server: Any, config: Any, builder: Any) -> Any:
    server.watch(str(_results_dir(config)))
    return server
