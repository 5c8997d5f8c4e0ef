"""What every benchmark script shares: settings record, data subsets, evaluation, output.

Kept here so each bench script holds only its experiment: the same record of the machine
(device, torch version), the same stratified subset when a bench must shrink Fashion-MNIST
to fit a CPU budget, the same light evaluation (the full report's relearn probe costs more
than a sweep can afford) and the same output contract (DESIGN.md: one JSON object on the
last stdout line, also written under ``bench/results/``).

Run the scripts from the repository root (``python bench/x.py``); this file sits beside
them, so ``from common import ...`` resolves through the script's own folder.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from provenance import stamped  # noqa: E402  (bench/ is on sys.path, as for common)
from unlearning_core.data import Dataset, load_dataset
from unlearning_core.metrics import evaluate_unlearning, get_metric

RESULTS = Path(__file__).resolve().parent / "results"
#: What a sweep measures per point: the registry's cheap accuracies, by their DESIGN.md names
#: (``with_mia`` adds ``mia_auc``). A name the registry lacks fails at import, not mid-sweep.
QUICK_METRICS = tuple(get_metric(n).name for n in ("forget_acc", "retain_acc", "test_acc", "per_class_acc"))


def environment(device: torch.device) -> dict[str, Any]:
    """Where a number was measured: without this a timing or accuracy cannot be compared."""
    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    return env


def fast_math(device: torch.device) -> None:
    """TF32 matmuls on CUDA (cuDNN convs use TF32 by default already); no effect on CPU."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def stratified_positions(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A seeded, class-balanced pick of ``limit`` positions (sorted); all when ``limit`` is None."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked: list[np.ndarray] = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        take = limit // len(classes) + (1 if i < limit % len(classes) else 0)
        picked.append(rng.choice(members, size=min(take, len(members)), replace=False))
    return np.sort(np.concatenate(picked))


def dataset_spec(
    name: str, *, limit: int | None, test_limit: int | None, workdir: Path, seed: int = 0
) -> str:
    """The dataset spec a run should name: ``name`` itself, or an ``.npz`` manifest of a
    stratified subset written to ``workdir``.

    A run reloads its dataset by spec at unlearning time and checks ids and labels, so a
    subset must be a real dataset file, not an in-memory slice. The manifest keeps the
    original sample ids and the test set's own split.
    """
    if limit is None and test_limit is None:
        return name
    data = load_dataset(name)
    train = stratified_positions(data.train.labels.numpy(), limit, seed)
    test = stratified_positions(data.test.labels.numpy(), test_limit, seed + 1)

    def to_uint8(images: torch.Tensor) -> np.ndarray:  # loaders normalise to [-1, 1]
        return np.round((images.numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)

    path = workdir / f"{Path(name).name}-{len(train)}-{len(test)}.npz"
    np.savez(
        path,
        images=to_uint8(data.train.images[train]),
        labels=data.train.labels.numpy()[train],
        sample_ids=np.asarray([data.train.sample_ids[i] for i in train], dtype=str),
        test_images=to_uint8(data.test.images[test]),
        test_labels=data.test.labels.numpy()[test],
        class_names=np.asarray(data.class_names, dtype=str),
    )
    return str(path)


def quick_metrics(
    model: torch.nn.Module,
    dataset: Dataset,
    forget_positions: np.ndarray,
    *,
    device: torch.device,
    max_retain: int = 5000,
    with_mia: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """:data:`QUICK_METRICS` (and ``mia_auc`` with ``with_mia``), computed by the metric
    registry from one set of outputs, so a bench's numbers are the service's numbers.

    The retain set is a seeded subsample of at most ``max_retain`` samples (an unbiased
    estimate), as in :func:`unlearning_core.metrics.evaluate_unlearning`.
    """
    names = QUICK_METRICS + (("mia_auc",) if with_mia else ())
    return evaluate_unlearning(
        model, dataset, forget_positions, device=device, max_retain=max_retain, seed=seed,
        names=names, expensive=False,
    )


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]``."""
    box: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - started


def pyplot():  # noqa: ANN201 (matplotlib.pyplot module)
    """matplotlib's pyplot on the Agg backend (no display on servers or GPU machines)."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("bench plots need matplotlib: .venv/bin/pip install 'matplotlib>=3.8'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def parse_floats(text: str) -> list[float]:
    """``"5,10,20"`` -> ``[5.0, 10.0, 20.0]`` with a clear error on bad input."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"expected comma-separated numbers, got {text!r}")


def emit(result: dict[str, Any], out: Path, extra_paths: Sequence[Path] = ()) -> None:
    """Write ``result`` with its provenance (commit, time, host, load, command) to ``out``
    and print it as the last stdout line (DESIGN.md contract)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    result = stamped(result)
    if extra_paths:
        result = {**result, "files": [str(p) for p in (out, *extra_paths)]}
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def train_recorded(
    store: Any,
    *,
    run_id: str,
    spec: str,
    model: str,
    epochs: int,
    batch_size: int,
    lr: float,
    concentrate: tuple[int, float] | None,
    record: str = "full",
    dtype: str = "float32",
    device: torch.device,
    seed: int = 0,
) -> Any:
    """Train ``model`` on dataset ``spec`` with updates recorded; ``concentrate`` puts class K
    into share Q of the batches (the setting every amnesiac experiment must state)."""
    from unlearning_core.runs.spec import DatasetSpec, RecordingSpec, TrainingSpec
    from unlearning_core.runs.train import train_run

    training = TrainingSpec(
        epochs=epochs, batch_size=batch_size, lr=lr, momentum=0.9, weight_decay=0.0, seed=seed,
        concentrate_class=concentrate[0] if concentrate else None,
        concentrate_share=concentrate[1] if concentrate else None,
    )
    return train_run(
        store, run_id=run_id, dataset=load_dataset(spec), dataset_spec=DatasetSpec(spec=spec),
        model_name=model, training=training, recording=RecordingSpec(mode=record, dtype=dtype),
        device=device,
    )
