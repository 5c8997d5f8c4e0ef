"""A stream of single-subject erasure requests against one model, with and without compaction.

An approximate erasure (amnesiac, partial amnesiac) answers a request in about a second, but
its version stays approximate and a stream of them wears the model down: subtracted steps
pile up, accuracy drifts. A *compaction* (:func:`unlearning_core.compaction.compact`)
retrains the model from scratch without every erased sample, as a new lineage; every
request erased before it is then exact. This bench feeds one model a stream of distinct,
seeded single-subject requests spread over a simulated month and compares, per model
(amnesiac with full recording, partial amnesiac with partial recording), compaction off
with the default :class:`~unlearning_core.compaction.CompactionPolicy`.

Simulated clock: request ``i`` arrives at ``start + i * days / requests``; its approximate
answer is immediate in simulated time (the wall seconds of the ``unlearn`` call are
reported apart). After every request the policy is evaluated with ``due_trigger`` on the
lineage's state (requests waiting since the last compaction, the oldest one's arrival,
subtracted steps / recorded steps of the lineage, the lineage's first version's test
accuracy minus the latest's, the last training's ``train_seconds``). Between two requests
the clock is also stopped at the deadline trigger's ``fires_at`` (the service's scheduler
checks it periodically). A compaction takes its measured wall seconds of simulated time and
makes every waiting request exact when it ends. After the last request the clock moves a
day at a time (never past the deadline trigger's ``fires_at``) until a trigger fires, so
every request gets an exact time.

    python bench/erasure_stream.py [--requests 300] [--train-samples 20000] [--epochs 2]
        [--recovery-steps 40] [--models amnesiac,partial] [--policy off,default]

Prints one JSON object on the last line of stdout and writes it (through ``common.emit``)
and a plot under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Others share this machine's cores: OpenMP threads that spin while waiting for a core slow
# every step several-fold under load (measured: 40 SGD steps 0.4 s alone, 3-4 s spinning,
# about 1 s passive). Set before torch loads its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, environment, fast_math, pyplot  # noqa: E402

from unlearning_core import pipeline  # noqa: E402
from unlearning_core.artifacts import open_artifact  # noqa: E402
from unlearning_core.compaction import (  # noqa: E402
    CompactionPolicy,
    LineageState,
    Trigger,
    deadline_fires_at,
    due_trigger,
    triggers,
)
from unlearning_core.compaction import compact as compact_run  # noqa: E402
from unlearning_core.data import Dataset, load_dataset  # noqa: E402
from unlearning_core.forget import ForgetSpec  # noqa: E402
from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec  # noqa: E402
from unlearning_core.store import LocalBlobStore  # noqa: E402
from unlearning_core.training.loop import resolve_device  # noqa: E402

#: The two models of the issue: how each records and which method answers its requests.
MODELS: dict[str, dict[str, str]] = {
    "amnesiac": {"record": "full", "method": "amnesiac"},
    "partial": {"record": "partial", "method": "partial-amnesiac"},
}
POLICIES = ("off", "default")
START = datetime(2025, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def r4(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


# ---------------------------------------------------------------- data and evaluation


def dataset_spec(name: str, train_samples: int | None, workdir: Path) -> str:
    """``name`` itself, or an ``.npz`` manifest of its first ``train_samples`` training
    samples (original ids) and its whole test set, written to ``workdir``."""
    if train_samples is None:
        return name
    data = load_dataset(name)
    if train_samples >= len(data.train):
        return name
    n = train_samples

    def to_uint8(images: torch.Tensor) -> np.ndarray:  # loaders normalise to [-1, 1]
        return np.round((images.numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)

    path = workdir / f"{Path(name).name}-first{n}.npz"
    np.savez(
        path,
        images=to_uint8(data.train.images[:n]),
        labels=data.train.labels.numpy()[:n],
        sample_ids=np.asarray(list(data.train.sample_ids[:n]), dtype=str),
        test_images=to_uint8(data.test.images),
        test_labels=data.test.labels.numpy(),
        class_names=np.asarray(data.class_names, dtype=str),
    )
    return str(path)


class Evaluator:
    """Test accuracy on the whole test set; retain accuracy on a fixed seeded subset of the
    training samples, less those erased so far."""

    def __init__(self, data: Dataset, *, retain_eval: int, device: torch.device, seed: int) -> None:
        self.test_x, self.test_y = data.test.images, data.test.labels
        n = len(data.train)
        rng = np.random.default_rng(seed)
        pos = np.sort(rng.choice(n, size=min(retain_eval, n), replace=False))
        self.retain_x, self.retain_y = data.train.images[pos], data.train.labels[pos]
        self.retain_ids = np.asarray([data.train.sample_ids[i] for i in pos])
        self.device = device

    def _correct(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        model.to(self.device).eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(x), 1024):
                pred = model(x[s : s + 1024].to(self.device)).argmax(1).cpu()
                out.append((pred == y[s : s + 1024]).numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=bool)

    def __call__(self, model: torch.nn.Module, erased: set[str]) -> dict[str, Any]:
        test = float(self._correct(model, self.test_x, self.test_y).mean())
        keep = np.asarray([s not in erased for s in self.retain_ids], dtype=bool)
        retain = float(self._correct(model, self.retain_x[keep], self.retain_y[keep]).mean()) if keep.any() else None
        return {"test_acc": test, "retain_acc": retain, "retain_eval_samples": int(keep.sum())}


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------- one stream


class Stream:
    """One model under one policy: the requests, the versions, the compactions."""

    def __init__(
        self,
        *,
        name: str,
        model_key: str,
        policy: CompactionPolicy | None,
        watch: CompactionPolicy,
        store_dir: Path,
        run_id: str,
        base: dict[str, Any],
        subjects: list[str],
        subject_samples: dict[str, list[str]],
        arrivals: list[datetime],
        options: dict[str, Any],
        evaluate: Evaluator,
        device: torch.device,
        eval_every: int = 1,
    ) -> None:
        self.name, self.model_key, self.policy, self.watch = name, model_key, policy, watch
        self.store_dir, self.store = store_dir, LocalBlobStore(store_dir)
        self.run_id = run_id
        self.subjects, self.subject_samples, self.arrivals = subjects, subject_samples, arrivals
        self.options, self.evaluate, self.device = options, evaluate, device
        self.eval_every = max(1, eval_every)
        self.method = MODELS[model_key]["method"]
        self.erased: set[str] = set()
        self.requests: list[dict[str, Any]] = []
        self.versions: list[dict[str, Any]] = []
        self.compactions: list[dict[str, Any]] = []
        self.waiting: list[int] = []
        self.clock = arrivals[0] if arrivals else START
        self.last_train_seconds = float(base["train_seconds"])
        self.lineage_first_acc: float | None = None
        self.latest_acc: float | None = None
        self.subtracted_share = 0.0
        #: bytes of the lineages compacted away (immutable once replaced; the store keeps them)
        self.old_lineages_bytes = 0
        self.would_fire: dict[str, int] = {}  # off: the request at which each default trigger would first fire

    # -- measuring ---------------------------------------------------------------------
    def measure_head(
        self, *, request: int | None, version: int, kind: str, accuracy: bool = True
    ) -> dict[str, Any]:
        """One version's row; ``accuracy=False`` skips the (costly) evaluation, leaving the
        accuracies None (compaction off, between every ``eval_every``-th request)."""
        art = open_artifact(self.store, self.run_id)
        ledger = art.ledger()
        steps = art.spec.results.steps
        self.subtracted_share = len(ledger.subtracted_steps) / steps if steps else 0.0
        acc: dict[str, Any] = {"test_acc": None, "retain_acc": None, "retain_eval_samples": None}
        if accuracy:
            net = art.model_with(art.load_weights(ledger.head.weights))
            acc = self.evaluate(net, self.erased)
            self.latest_acc = acc["test_acc"]
            if kind in ("train", "compact"):
                self.lineage_first_acc = acc["test_acc"]
        lineage = dir_bytes(self.store_dir / "runs" / self.run_id)
        row = {
            "version": version,
            "kind": kind,
            "run_id": self.run_id,
            "after_requests": len(self.requests),
            "request": request,
            "day": r4((self.clock - START) / DAY),
            "test_acc": r4(acc["test_acc"]),
            "retain_acc": r4(acc["retain_acc"]),
            "retain_eval_samples": acc["retain_eval_samples"],
            "subtracted_share": r4(self.subtracted_share),
            "lineage_bytes": lineage,
            "store_bytes": self.old_lineages_bytes + lineage,
        }
        self.versions.append(row)
        return row

    def state(self, policy_waiting: list[int]) -> LineageState:
        drop = (
            self.lineage_first_acc - self.latest_acc
            if self.lineage_first_acc is not None and self.latest_acc is not None
            else None
        )
        return LineageState(
            waiting_requests=len(policy_waiting),
            oldest_waiting_at=self.arrivals[policy_waiting[0]] if policy_waiting else None,
            subtracted_share=self.subtracted_share,
            accuracy_drop=drop,
            estimated_seconds=self.last_train_seconds,
        )

    # -- the stream --------------------------------------------------------------------
    def run(self) -> None:
        head = open_artifact(self.store, self.run_id).ledger().head.version
        self.measure_head(request=None, version=head, kind="train")
        for i, subject in enumerate(self.subjects):
            self.clock = max(self.clock, self.arrivals[i])
            started = time.perf_counter()
            out = pipeline.unlearn(
                self.store, run_id=self.run_id, method=self.method,
                forget=ForgetSpec(subjects=(subject,)), method_options=self.options,
                device=self.device, evaluate=False,
            )
            approx = time.perf_counter() - started
            self.erased.update(self.subject_samples[subject])
            req = {
                "request": i,
                "subject": subject,
                "arrival_day": r4((self.arrivals[i] - START) / DAY),
                "approx_seconds": r4(approx),
                "unlearn_seconds": r4(out.get("unlearn_seconds")),
                "recovery_seconds": r4(out.get("recovery_seconds")),
                "batches_subtracted": out.get("batches_subtracted"),
                "forget_samples": out.get("forget_samples"),
                "version": out.get("version"),
                "new_version": out.get("new_version"),
                "exact_day": None,
                "days_to_exact": None,
                "exact_by": None,
            }
            self.requests.append(req)
            if out.get("new_version"):
                last = i + 1 == len(self.subjects)
                dense = self.policy is not None or (i + 1) % self.eval_every == 0 or last
                row = self.measure_head(request=i, version=out["version"], kind="erasure", accuracy=dense)
            else:  # nothing changed (every batch already subtracted, no recovery): same head
                row = self.versions[-1]
            req["test_acc"], req["subtracted_share"] = row["test_acc"], row["subtracted_share"]
            self.waiting.append(i)
            if self.policy is None:
                self.note_would_fire(i)
                continue
            self.maybe_compact(self.clock)
            nxt = self.arrivals[i + 1] if i + 1 < len(self.subjects) else None
            if nxt is not None:
                self.deadline_checks(until=nxt)
            log(f"[{self.name}] request {i + 1}/{len(self.subjects)}: approx {approx:.2f}s "
                f"test {row['test_acc']:.4f} subtracted {row['subtracted_share']:.2f} "
                f"waiting {len(self.waiting)} compactions {len(self.compactions)}")
        if self.policy is not None:
            self.drain()

    def note_would_fire(self, i: int) -> None:
        """Compaction off: when the watched (default) policy's triggers would first fire on
        this never-compacted lineage (each request's own arrival as ``now``)."""
        for row in triggers(self.watch, self.state(self.waiting), self.arrivals[i]):
            if row["fires"] and row["trigger"] not in self.would_fire:
                self.would_fire[row["trigger"]] = i
        if i % 25 == 0 or i + 1 == len(self.subjects):
            log(f"[{self.name}] request {i + 1}/{len(self.subjects)}: test {self.latest_acc:.4f} "
                f"subtracted {self.subtracted_share:.2f}")

    def maybe_compact(self, now: datetime) -> bool:
        assert self.policy is not None
        trigger = due_trigger(self.policy, self.state(self.waiting), now)
        if trigger is None:
            return False
        self.compact(trigger, now)
        return True

    def deadline_checks(self, *, until: datetime) -> None:
        """The scheduler's wake-ups between two requests: at the deadline's ``fires_at``."""
        assert self.policy is not None
        while self.waiting:
            fires = deadline_fires_at(self.policy, self.state(self.waiting))
            if fires is None or fires >= until:
                return
            self.clock = max(self.clock, fires)
            if not self.maybe_compact(self.clock):
                return

    def drain(self) -> None:
        """After the stream: a day at a time (never past ``fires_at``) until a trigger fires."""
        assert self.policy is not None
        if self.policy.compact_within_days is None:  # no deadline: only a trigger firing now helps
            self.maybe_compact(self.clock)
            return
        guard = 0
        while self.waiting:
            guard += 1
            if guard > 10_000:
                raise RuntimeError(f"{self.name}: no trigger fired with {len(self.waiting)} requests waiting")
            nxt = self.clock + DAY
            fires = deadline_fires_at(self.policy, self.state(self.waiting))
            if fires is not None and self.clock < fires < nxt:
                nxt = fires
            self.clock = nxt
            self.maybe_compact(self.clock)

    def compact(self, trigger: Trigger, now: datetime) -> None:
        state = self.state(self.waiting)
        old = self.run_id
        started = time.perf_counter()
        res = compact_run(self.store, run_id=old, trigger=trigger, device=self.device, evaluate=False)
        wall = time.perf_counter() - started
        self.clock = now + timedelta(seconds=wall)
        expected = sum(len(self.subject_samples[self.requests[j]["subject"]]) for j in self.waiting)
        for j in self.waiting:
            req = self.requests[j]
            req["exact_day"] = r4((self.clock - START) / DAY)
            req["days_to_exact"] = r4((self.clock - self.arrivals[j]) / DAY)
            req["exact_by"] = len(self.compactions)
        self.old_lineages_bytes += dir_bytes(self.store_dir / "runs" / old)
        self.run_id = res["run_id"]
        self.last_train_seconds = float(res["train_seconds"])
        row = self.measure_head(request=None, version=res["version"], kind="compact")
        self.compactions.append({
            "index": len(self.compactions),
            "trigger": str(trigger),
            "after_requests": len(self.requests),
            "started_day": r4((now - START) / DAY),
            "wall_seconds": r4(wall),
            "train_seconds": r4(res["train_seconds"]),
            "replaced_run": old,
            "run_id": self.run_id,
            "version": res["version"],
            "requests_made_exact": len(self.waiting),
            "excluded_samples": res["excluded_samples"],
            "expected_excluded_samples": expected,
            "excluded_total": res["excluded_total"],
            "retained_samples": res["retained_samples"],
            "subtracted_share_before": r4(state.subtracted_share),
            "accuracy_drop_before": r4(state.accuracy_drop),
            "test_acc": row["test_acc"],
        })
        log(f"[{self.name}] compaction {len(self.compactions)} ({trigger}) after request "
            f"{len(self.requests)}: {wall:.1f}s, {res['excluded_samples']} samples left out, "
            f"test {row['test_acc']:.4f}")
        self.waiting = []

    # -- summary -----------------------------------------------------------------------
    def summary(self, *, base: dict[str, Any], within_days: float | None, due_days: float) -> dict[str, Any]:
        measured = [v for v in self.versions if v["test_acc"] is not None]
        accs = [v["test_acc"] for v in measured]
        first = accs[0]
        lineage_drops, lineage_first = [], None
        for v in measured:
            if v["kind"] in ("train", "compact"):
                lineage_first = v["test_acc"]
            lineage_drops.append(lineage_first - v["test_acc"])
        days = [r["days_to_exact"] for r in self.requests]
        exact = [d for d in days if d is not None]
        approx = [r["approx_seconds"] for r in self.requests]
        n = len(self.requests)
        triggers_count: dict[str, int] = {}
        for c in self.compactions:
            triggers_count[c["trigger"]] = triggers_count.get(c["trigger"], 0) + 1
        compaction_wall = sum(c["wall_seconds"] for c in self.compactions)
        on = self.policy is not None
        out: dict[str, Any] = {
            "requests": n,
            "versions": len(self.versions),
            "versions_evaluated": len(measured),
            "compactions": len(self.compactions),
            "full_retrainings": len(self.compactions),
            "compactions_per_100_requests": r4(100 * len(self.compactions) / n) if n else None,
            "triggers": triggers_count,
            "first_test_acc": first,
            "min_test_acc": min(accs),
            "min_test_acc_minus_first": r4(min(accs) - first),
            "max_drop_below_lineage_first": r4(max(lineage_drops)),
            "final_test_acc": accs[-1],
            "final_retain_acc": measured[-1]["retain_acc"],
            "min_retain_acc": min(v["retain_acc"] for v in measured if v["retain_acc"] is not None),
            "final_subtracted_share": self.versions[-1]["subtracted_share"],
            "max_subtracted_share": max(v["subtracted_share"] for v in self.versions),
            "exact_requests": len(exact),
            "max_days_to_exact": max(exact) if exact else None,
            "mean_days_to_exact": r4(sum(exact) / len(exact)) if exact else None,
            "approx_seconds_total": r4(sum(approx)),
            "approx_seconds_median": r4(float(np.median(approx))) if approx else None,
            "approx_seconds_max": r4(max(approx)) if approx else None,
            "compaction_seconds_total": r4(compaction_wall),
            "compaction_train_seconds_total": r4(sum(c["train_seconds"] for c in self.compactions)),
            "retrain_per_request_seconds_estimate": r4(n * base["wall_seconds"]),
            "final_store_bytes": self.versions[-1]["store_bytes"],
            "max_lineage_bytes": max(v["lineage_bytes"] for v in self.versions),
        }
        if on:
            out["within_policy_days"] = (
                all(d is not None and d <= within_days for d in days) if within_days is not None else None
            )
            out["within_due_days"] = all(d is not None and d <= due_days for d in days)
            excluded_ok = all(c["excluded_samples"] == c["expected_excluded_samples"] for c in self.compactions)
            out["compactions_left_out_every_erased_sample"] = excluded_ok
            out["targets"] = {
                "test_acc_within_2_points_of_first": bool(min(accs) - first >= -0.02),
                "every_request_exact_within_policy_days": out["within_policy_days"],
                # the issue sets this one for the partial amnesiac model only
                "at_most_2_compactions_per_100_requests": (
                    bool(100 * len(self.compactions) / n <= 2) if n and self.model_key == "partial" else None
                ),
            }
            out["targets_met"] = all(v for v in out["targets"].values() if v is not None)
        else:
            out["default_policy_would_first_fire_at_request"] = self.would_fire
        return out


# ---------------------------------------------------------------- the experiment


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--train-samples", type=int, default=20000,
                    help="the dataset's first N training samples, as an .npz manifest (0: all)")
    ap.add_argument("--subject-size", type=int, default=10)
    ap.add_argument("--arch", default="small-cnn", help="model architecture")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--record-prune", default="0.99:0.5", help="partial model's recorded pruning FIRST:LAST")
    ap.add_argument("--prune", default="", help="partial amnesiac's pruning at request time FIRST:LAST "
                    "(default: the recorded one)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--days", type=float, default=30.0, help="simulated days the requests are spread over")
    ap.add_argument("--due-days", type=float, default=30.0, help="a request's legal due date: received + this")
    ap.add_argument("--recovery-steps", type=int, default=40,
                    help="recovery fine-tune steps on retained data after each erasure")
    ap.add_argument("--models", default="amnesiac,partial")
    ap.add_argument("--policy", default="off,default")
    ap.add_argument("--compact-within-days", default="", help="override of the policy field ('none': off)")
    ap.add_argument("--compact-after-requests", default="", help="override of the policy field ('none': off)")
    ap.add_argument("--max-subtracted-share", default="", help="override of the policy field ('none': off)")
    ap.add_argument("--max-accuracy-drop", default="", help="override of the policy field ('none': off)")
    ap.add_argument("--ablation", default="partial:default:0:40",
                    help="extra shorter streams MODEL:POLICY:RECOVERY_STEPS:REQUESTS, comma-separated "
                    "('' for none)")
    ap.add_argument("--retain-eval", type=int, default=5000,
                    help="retain accuracy on this fixed seeded subset of the training samples")
    ap.add_argument("--eval-every-off", type=int, default=5,
                    help="with compaction off, evaluate accuracy after every N-th request (and the last); "
                    "with compaction on every version is evaluated (the accuracy-drop trigger needs it)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the training run and the subject draw")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temp dir)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "erasure_stream.json")
    return ap.parse_args(argv)


def make_policy(args: argparse.Namespace) -> CompactionPolicy:
    fields: dict[str, Any] = {}
    for key, cast in (("compact_within_days", float), ("compact_after_requests", int),
                      ("max_subtracted_share", float), ("max_accuracy_drop", float)):
        raw = str(getattr(args, key)).strip()
        if raw:
            fields[key] = None if raw.lower() == "none" else cast(raw)
    return CompactionPolicy(**fields)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    fast_math(device)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    for m in models:
        if m not in MODELS:
            sys.exit(f"--models: unknown model {m!r} (known: {', '.join(MODELS)})")
    for p in policies:
        if p not in POLICIES:
            sys.exit(f"--policy: unknown policy {p!r} (known: {', '.join(POLICIES)})")
    ablations = []
    for part in (x for x in args.ablation.split(",") if x.strip()):
        m, p, rs, n = part.strip().split(":")
        if m not in MODELS or p not in POLICIES:
            sys.exit(f"--ablation: bad entry {part!r}")
        ablations.append((m, p, int(rs), int(n)))
    policy = make_policy(args)
    rec_first, rec_last = (float(x) for x in args.record_prune.split(":"))
    prune = [float(x) for x in args.prune.split(":")] if args.prune else None

    started, load_start = time.perf_counter(), load_average()
    result: dict[str, Any] = {
        "benchmark": "erasure_stream",
        **environment(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("workdir", "out", "no_plot")},
        "policy": policy.model_dump(),
        "load_average_start": load_start,
    }
    own_tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="lethe-stream-")) if own_tmp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        spec = dataset_spec(args.dataset, args.train_samples or None, workdir)
        dspec = DatasetSpec(spec=spec, subject_size=args.subject_size)
        data = dspec.load()
        subject_samples: dict[str, list[str]] = {}
        for sid, subj in zip(data.train.sample_ids, data.train.subject_ids, strict=True):
            if subj:
                subject_samples.setdefault(subj, []).append(sid)
        all_subjects = sorted(subject_samples)
        longest = max([args.requests] + [a[3] for a in ablations])
        if longest > len(all_subjects):
            sys.exit(f"{longest} requests need as many distinct subjects; the data has {len(all_subjects)}")
        rng = np.random.default_rng(args.seed)
        subjects = [all_subjects[i] for i in rng.choice(len(all_subjects), size=longest, replace=False)]
        evaluate = Evaluator(data, retain_eval=args.retain_eval, device=device, seed=args.seed)
        training = TrainingSpec(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=0.9,
                                weight_decay=0.0, seed=args.seed, timeline_every=0)
        result["data"] = {
            "dataset": args.dataset, "spec": Path(spec).name, "train_samples": len(data.train),
            "test_samples": len(data.test), "subjects": len(all_subjects), "subject_size": args.subject_size,
            "retain_eval": f"retain accuracy on a fixed seeded subset of {len(evaluate.retain_ids)} "
                           "training samples, less those erased so far; test accuracy on the whole test set; "
                           "with compaction on after every version, with compaction off after every "
                           f"{max(1, args.eval_every_off)}th request",
        }
        # One trained run per model; every stream starts from a copy of its store.
        bases: dict[str, dict[str, Any]] = {}
        needed = {m for m in models} | {a[0] for a in ablations}
        for m in [m for m in MODELS if m in needed]:
            rec = (RecordingSpec(mode="full") if MODELS[m]["record"] == "full"
                   else RecordingSpec(mode="partial", prune_first=rec_first, prune_last=rec_last))
            t0 = time.perf_counter()
            res = pipeline.train(LocalBlobStore(workdir / f"base-{m}"), run_id=f"stream-{m}", dataset=dspec,
                                 model=args.arch, training=training, recording=rec, device=device,
                                 evaluate=False)
            res["wall_seconds"] = time.perf_counter() - t0
            bases[m] = res
            log(f"base {m}: {res['steps']} steps, train {res['train_seconds']:.1f}s "
                f"(wall {res['wall_seconds']:.1f}s), {res['storage_bytes']} bytes recorded")
        result["training"] = {
            m: {k: b[k] for k in ("record", "steps", "train_seconds", "wall_seconds", "storage_bytes")}
            for m, b in bases.items()
        }

        def stream(m: str, p: str, recovery: int, n: int, name: str) -> dict[str, Any]:
            store_dir = workdir / name.replace("/", "-")
            shutil.copytree(workdir / f"base-{m}", store_dir)
            options: dict[str, Any] = {"recovery_steps": recovery}
            if m == "partial" and prune is not None:
                options.update(prune_first=prune[0], prune_last=prune[1])
            arrivals = [START + timedelta(days=args.days * i / n) for i in range(n)]
            s = Stream(
                name=name, model_key=m, policy=policy if p == "default" else None, watch=policy,
                store_dir=store_dir, run_id=bases[m]["run_id"], base=bases[m], subjects=subjects[:n],
                subject_samples=subject_samples, arrivals=arrivals, options=options,
                evaluate=evaluate, device=device, eval_every=args.eval_every_off,
            )
            t0 = time.perf_counter()
            s.run()
            out = {
                "model": m, "method": MODELS[m]["method"], "record": MODELS[m]["record"], "policy": p,
                "recovery_steps": recovery, "method_options": options,
                "wall_seconds": r4(time.perf_counter() - t0),
                **s.summary(base=bases[m], within_days=policy.compact_within_days, due_days=args.due_days),
                "compaction_log": s.compactions,
                "versions_log": s.versions,
                "requests_log": s.requests,
            }
            log(f"[{name}] done in {out['wall_seconds']:.0f}s: {out['compactions']} compactions, "
                f"min test {out['min_test_acc']:.4f} (first {out['first_test_acc']:.4f})")
            if own_tmp:
                shutil.rmtree(store_dir, ignore_errors=True)
            return out

        configs: dict[str, Any] = {}
        for m in models:
            for p in policies:
                configs[f"{m}/{p}"] = stream(m, p, args.recovery_steps, args.requests, f"{m}/{p}")
        result["configurations"] = configs
        result["ablations"] = {
            f"{m}/{p}/recovery{rs}/{n}": stream(m, p, rs, n, f"{m}/{p}/recovery{rs}/{n}")
            for m, p, rs, n in ablations
        }
        result["targets"] = {
            name: {"targets": c["targets"], "targets_met": c["targets_met"]}
            for name, c in {**configs, **result["ablations"]}.items() if "targets" in c
        }
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    result["wall_seconds"] = r4(time.perf_counter() - started)
    result["load_average_end"] = load_average()
    extra = []
    if not args.no_plot:
        extra = [plot(result, args.out.with_suffix(".png"))]
    emit(result, args.out, extra)
    return json.loads(args.out.read_text())  # as written: with its provenance


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per model (columns): test accuracy, retain accuracy and subtracted share over the
    stream, compaction off vs on; compactions marked."""
    plt = pyplot()
    configs = result["configurations"]
    models = list(dict.fromkeys(c["model"] for c in configs.values()))
    rows = (("test_acc", "test accuracy"), ("retain_acc", "retain accuracy"),
            ("subtracted_share", "share of steps subtracted"))
    fig, axes = plt.subplots(len(rows), len(models), figsize=(6.5 * len(models), 9), squeeze=False,
                             sharex=True)
    colors = {"off": "tab:red", "default": "tab:blue"}
    for col, m in enumerate(models):
        for c in configs.values():
            if c["model"] != m:
                continue
            label = f"compaction {'off' if c['policy'] == 'off' else 'on (default policy)'}"
            for row, (key, title) in enumerate(rows):
                ax = axes[row][col]
                pts = [(v["after_requests"], v[key]) for v in c["versions_log"] if v[key] is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[c["policy"]], lw=1.2, label=label)
                for comp in c["compaction_log"]:
                    ax.axvline(comp["after_requests"], color=colors[c["policy"]], ls=":", lw=0.7, alpha=0.6)
                ax.set_ylabel(title)
        for c in result.get("ablations", {}).values():
            if c["model"] != m:
                continue
            x = [v["after_requests"] for v in c["versions_log"]]
            for row, (key, _title) in enumerate(rows):
                axes[row][col].plot(x, [v[key] for v in c["versions_log"]], color="tab:green", lw=1,
                                    alpha=0.8, label=f"on, recovery {c['recovery_steps']} ({c['requests']} requests)")
        first = next((c["first_test_acc"] for c in configs.values() if c["model"] == m), None)
        if first is not None:
            axes[0][col].axhline(first - 0.02, color="grey", ls="--", lw=0.8, label="first version - 2 points")
        axes[0][col].set_title(f"{m} ({MODELS[m]['method']}, record {MODELS[m]['record']})")
        axes[0][col].legend(fontsize=7)
        axes[-1][col].set_xlabel("requests answered (dotted: compactions)")
    s = result["settings"]
    data = result["data"]
    fig.suptitle(f"{s['requests']} single-subject requests over {s['days']:g} simulated days; "
                 f"{data['train_samples']} {data['dataset']} samples, {s['arch']}, {s['epochs']} epochs, "
                 f"recovery {s['recovery_steps']} steps ({result['device']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
