"""What an erasure asks to forget, resolved to training-set positions of a run.

A request may name samples, a whole class, a data subject, or several of these; the
forget set is their union. Anything the run never saw is an error, not a silent no-op:
an erasure that matches nothing must be noticed by whoever filed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unlearning_core.errors import ForgetSetError


@dataclass(frozen=True)
class ForgetSpec:
    sample_ids: tuple[str, ...] = ()
    classes: tuple[int, ...] = ()
    subjects: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = []
        if self.sample_ids:
            parts.append(f"{len(self.sample_ids)} sample ids")
        parts += [f"class {k}" for k in self.classes]
        parts += [f"subject {s}" for s in self.subjects]
        return ", ".join(parts) or "nothing"

    def resolve(
        self,
        sample_ids: Sequence[str],
        labels: Sequence[int],
        subject_ids: Sequence[str | None],
    ) -> np.ndarray:
        """Sorted unique positions; unknown ids, classes or subjects are errors."""
        if not (self.sample_ids or self.classes or self.subjects):
            raise ForgetSetError("the forget set is empty: name sample ids, a class or a subject")
        chosen: set[int] = set()
        if self.sample_ids:
            where = {sid: i for i, sid in enumerate(sample_ids)}
            unknown = [s for s in self.sample_ids if s not in where]
            if unknown:
                more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
                raise ForgetSetError(
                    f"sample ids not in the run's training set: {', '.join(map(repr, unknown[:3]))}{more}"
                )
            chosen.update(where[s] for s in self.sample_ids)
        labels_arr = np.asarray(labels)
        for k in self.classes:
            hits = np.flatnonzero(labels_arr == k)
            if len(hits) == 0:
                raise ForgetSetError(f"class {k} has no training samples in this run")
            chosen.update(hits.tolist())
        for subject in self.subjects:
            hits = [i for i, s in enumerate(subject_ids) if s == subject]
            if not hits:
                raise ForgetSetError(f"subject {subject!r} has no training samples in this run")
            chosen.update(hits)
        return np.asarray(sorted(chosen), dtype=np.int64)


def read_id_file(path: Path) -> tuple[str, ...]:
    """One sample id per line; blank lines and ``#`` comments are ignored."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ForgetSetError(f"cannot read forget-ids file {path}: {exc.strerror}") from None
    ids = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not ids:
        raise ForgetSetError(f"forget-ids file {path} names no sample ids")
    return ids
