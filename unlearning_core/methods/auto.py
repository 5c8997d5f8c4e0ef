"""``method: "auto"``: pick, per request and model, the method the last judge run ranked best.

The judge (``bench/judge.py``, :mod:`unlearning_core.metrics.unlearning_score`) measures
every method against retraining on the same setting and writes a result file. From it a
:class:`Ranking` keeps, per method, whether it met the target (inside retraining's 95%
intervals on forget accuracy and the attacks, test accuracy within a point of
retraining's) and its score. :func:`choose` then picks for one request on one model:

1. only methods that can unlearn what the model's training recorded
   (:attr:`UnlearningMethod.trained_with`), with the options and recovery steps of the
   variant the judge ranked (its validation search chose them);
2. a request holding more than ``large_share`` of the training data is outside what the
   judge measured (random forgetting of a small set): the exact method that needs no
   recording (``retrain``; ``sisa`` on a SISA model) is chosen;
3. otherwise the judged methods that met the target, fastest first (the judge's
   speed-up), then those that did not, by score (still the fast tier: the model's
   compaction makes the answer exact by the policy's deadline); a method the judge never
   ran is not chosen;
4. without any ranking, the model's own default method.

The choice comes with its reason in words, which the service records with the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearning_core.methods.base import get_method, method_names
from unlearning_core.vocab import DEFAULT_UNLEARN_METHOD, TrainingMethod

AUTO = "auto"
#: Above this share of the training data a request is not "a few samples" any more.
LARGE_SHARE = 0.1


@dataclass(frozen=True)
class Judged:
    """One method as the judge saw it."""

    method: str
    met_target: bool
    score: float | None = None  # NeurIPS-style score (retrain's own is the ceiling)
    speedup: float | None = None  # vs retraining, in the same run
    misses: tuple[str, ...] = ()  # the criteria it missed
    options: dict[str, Any] = field(default_factory=dict)  # what the judged variant ran with


@dataclass(frozen=True)
class Ranking:
    """The judge's verdicts, best first, and where they come from."""

    methods: tuple[Judged, ...]
    source: str = ""
    measured_at: str = ""

    def ordered(self) -> list[Judged]:
        met = sorted((j for j in self.methods if j.met_target), key=lambda j: -(j.speedup or 0.0))
        rest = sorted((j for j in self.methods if not j.met_target), key=lambda j: -(j.score or 0.0))
        return met + rest


@dataclass(frozen=True)
class Choice:
    method: str
    reason: str
    considered: list[str] = field(default_factory=list)
    #: the options the judge ran the method with (empty: the method's defaults)
    options: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"method": self.method, "reason": self.reason, "considered": self.considered,
                "options": self.options}


def load_ranking(path: str | Path) -> Ranking | None:
    """The ranking in a judge result file (``bench/results/judge.json``: its ``ranking``
    list of ``{method, met_target, score, speedup, misses, options}``); None if there is none."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    rows = data.get("ranking")
    if not isinstance(rows, list):
        return None
    judged = tuple(
        Judged(
            method=str(r["method"]), met_target=bool(r.get("met_target")),
            score=r.get("score"), speedup=r.get("speedup"), misses=tuple(r.get("misses") or ()),
            options=dict(r.get("options") or {}),
        )
        for r in rows
        if isinstance(r, dict) and r.get("method")
    )
    return Ranking(methods=judged, source=str(p), measured_at=str(data.get("time", "")))


def _exact_fallback(trained_with: TrainingMethod) -> str:
    return "sisa" if trained_with == TrainingMethod.SISA else "retrain"


def choose(
    *,
    trained_with: TrainingMethod | str,
    forget_samples: int,
    train_samples: int,
    ranking: Ranking | None,
    large_share: float = LARGE_SHARE,
) -> Choice:
    """The method for one request on one model (see the module doc)."""
    trained = TrainingMethod(trained_with)
    usable = [m for m in method_names() if m != AUTO and trained in get_method(m).trained_with]
    share = forget_samples / max(1, train_samples)
    if share > large_share:
        exact = _exact_fallback(trained)
        return Choice(
            exact,
            f"the request holds {forget_samples} of {train_samples} training samples ({share:.0%}, more than "
            f"{large_share:.0%}): outside what the judge measures, so the exact {exact!r}",
            considered=[exact],
        )
    default = DEFAULT_UNLEARN_METHOD[trained]
    if ranking is None or not ranking.methods:
        return Choice(default, f"no judge ranking is available: the model's default {default!r}", [default])
    ordered = [j for j in ranking.ordered() if j.method in usable]
    if not ordered:
        return Choice(
            default,
            f"the judge ranked no method that can unlearn a {trained} model: the default {default!r}",
            [default],
        )
    best = ordered[0]
    when = f" ({ranking.source}, {ranking.measured_at})" if ranking.source else ""
    if best.met_target:
        speed = f", {best.speedup:.0f}x faster than retraining" if best.speedup else ""
        why = f"the last judge run{when} found {best.method!r} inside retraining's intervals{speed}"
    else:  # the fast tier still answers; compaction makes it exact by the policy's deadline
        why = (
            f"no method met the target in the last judge run{when}; {best.method!r} came closest "
            f"(missing {', '.join(best.misses) or 'the target'}); compaction makes the answer exact"
        )
    if best.options:
        why += f"; with the options it was judged with ({', '.join(f'{k}={v}' for k, v in sorted(best.options.items()))})"
    return Choice(best.method, why, [j.method for j in ordered], options=dict(best.options))
