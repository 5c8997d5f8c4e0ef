"""Subject maps: which data subject each training sample belongs to, from a file.

``--subject-size N`` names consecutive samples as subjects, which fits demos; real data has
its subjects recorded elsewhere. A subject map is a CSV file with a header ``sample_id,
subject_id`` (more columns are ignored) or a Parquet file with those two columns (read with
``pyarrow``, the ``lethe[parquet]`` extra). Every training sample must have exactly one
subject; test samples may be listed (their subjects are kept too) or not.

Every problem is a :class:`DatasetError` naming the file and the line (CSV: the line in the
file, header = line 1; Parquet: the row, first = 1): an id the dataset does not have, an id
listed twice, an empty subject, and training samples no line names.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from unlearning_core.data.sampleset import Dataset
from unlearning_core.errors import DatasetError

COLUMNS = ("sample_id", "subject_id")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _csv_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(
                    f"{path}: line 1: the header must name the columns sample_id and subject_id "
                    f"(missing {', '.join(missing)}; found {', '.join(reader.fieldnames or []) or 'nothing'})"
                )
            for row in reader:
                yield reader.line_num, (row["sample_id"] or "").strip(), (row["subject_id"] or "").strip()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a CSV file ({exc})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(f"{path}: reading Parquet needs pyarrow (pip install 'lethe[parquet]')") from None
    try:
        table = pq.read_table(path, columns=list(COLUMNS))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds: all mean unreadable
        raise DatasetError(f"{path}: not a Parquet file with columns sample_id and subject_id ({exc})") from None
    samples, subjects = table.column("sample_id").to_pylist(), table.column("subject_id").to_pylist()
    for row, (sample, subject) in enumerate(zip(samples, subjects, strict=True), start=1):
        yield row, ("" if sample is None else str(sample)).strip(), ("" if subject is None else str(subject)).strip()


@dataclass(frozen=True)
class SubjectMap:
    """A subject map as read: ``subjects[sample_id]`` and where each id was (for errors)."""

    path: Path
    subjects: dict[str, str]
    lines: dict[str, int]
    unit: str  # "line" (CSV) or "row" (Parquet)
    sha256: str

    def at(self, sample_id: str) -> str:
        return f"{self.path}: {self.unit} {self.lines.get(sample_id, '?')}"


def read_subject_map(path: str | Path) -> SubjectMap:
    """The map in a CSV or Parquet file: each id once, no subject empty."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"subject map {path}: no such file")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    unit = "row" if parquet else "line"
    subjects: dict[str, str] = {}
    lines: dict[str, int] = {}
    for line, sample, subject in (_parquet_rows(path) if parquet else _csv_rows(path)):
        if not sample:
            raise DatasetError(f"{path}: {unit} {line}: empty sample_id")
        if not subject:
            raise DatasetError(f"{path}: {unit} {line}: sample {sample!r} has an empty subject_id")
        if sample in subjects:
            raise DatasetError(
                f"{path}: {unit} {line}: sample {sample!r} is listed twice (first on {unit} {lines[sample]})"
            )
        subjects[sample] = subject
        lines[sample] = line
    if not subjects:
        raise DatasetError(f"{path}: the subject map lists no samples")
    return SubjectMap(path=path, subjects=subjects, lines=lines, unit=unit, sha256=file_sha256(path))


def apply_subject_map(dataset: Dataset, subject_map: SubjectMap | str | Path) -> Dataset:
    """``dataset`` with the subjects of ``subject_map`` (replacing any it had)."""
    m = subject_map if isinstance(subject_map, SubjectMap) else read_subject_map(subject_map)
    known = set(dataset.train.sample_ids) | set(dataset.test.sample_ids)
    unknown = [s for s in m.subjects if s not in known]
    if unknown:
        more = f" ({len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""
        raise DatasetError(f"{m.at(unknown[0])}: sample {unknown[0]!r} is not in dataset {dataset.name!r}{more}")
    without = [s for s in dataset.train.sample_ids if s not in m.subjects]
    if without:
        shown = ", ".join(repr(s) for s in without[:3])
        raise DatasetError(
            f"{m.path}: {len(without)} training samples of {dataset.name!r} have no subject "
            f"(no {m.unit} names them), e.g. {shown}"
        )
    train = dataset.train.with_subjects([m.subjects[s] for s in dataset.train.sample_ids])
    test = dataset.test.with_subjects([m.subjects.get(s) for s in dataset.test.sample_ids])
    return Dataset(dataset.name, train, test, dataset.num_classes, dataset.class_names)
