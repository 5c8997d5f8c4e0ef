"""Verifying a run recorded elsewhere before anything trusts it (``lethe runs import``).

A run made by :func:`unlearning_core.record_training` on someone else's machine is only
worth registering if every later erasure can rely on it. :func:`verify_run` checks, in this
order, and raises :class:`RunError` naming the first problem:

1. the run is complete (``run.json`` written; a crashed or unfinished loop is refused);
2. its model factory is allowed (with ``registered_only``: a built-in or an installed
   ``lethe.models`` entry point, never an import path) and builds a model whose state has
   exactly the recorded tensors with their shapes;
3. every blob it names (weights, sample table, index, update list, every update, the
   timeline) is in the store with the recorded sha256;
4. the sample -> step index is consistent with the sample table, and, with
   ``known_sample_ids``, every sample id is one of the dataset's;
5. for a run that recorded full updates, the initial weights plus all updates give the
   final weights within ``atol`` (pruned updates cannot add up to the final weights by
   construction: only their shapes and hashes are checked).

Reads only; nothing is written anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from unlearning_core.errors import LetheError, RunError
from unlearning_core.methods.amnesiac import subtract_steps
from unlearning_core.models import is_registered
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.spec import BlobPointer
from unlearning_core.store import BlobStore


@dataclass
class Verification:
    """What :func:`verify_run` checked, for the import's audit event."""

    run_id: str
    model: str
    steps: int
    samples: int
    blobs_checked: int = 0
    bytes_checked: int = 0
    sum_check: str = "skipped"  # "passed (max |diff| ...)" or why it was skipped
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)


def _factory_of(run: RecordedRun) -> str:
    return run.spec.loop.model_factory if run.spec.loop is not None else run.spec.model


def _pointers(run: RecordedRun) -> list[tuple[str, BlobPointer]]:
    spec = run.spec
    named: list[tuple[str, BlobPointer | None]] = [
        ("initial weights", spec.initial_weights),
        ("trained weights", spec.trained_weights),
        ("sample table", spec.samples),
        ("index", spec.index),
        ("update list", spec.updates),
        ("timeline", spec.timeline),
    ]
    return [(what, p) for what, p in named if p is not None]


def verify_run(
    store: BlobStore,
    run_id: str,
    *,
    known_sample_ids: Iterable[str] | None = None,
    registered_only: bool = True,
    atol: float = 1e-4,
    device: torch.device | str = "cpu",
) -> Verification:
    """Check the run (see the module doc); a :class:`Verification` or a :class:`RunError`."""
    run = RecordedRun.open(store, run_id)  # 1. refuses an incomplete run, naming why
    factory = _factory_of(run)
    if registered_only:
        run.allow_import_path = False
        if not is_registered(factory):
            raise RunError(
                f"run {run_id!r}: its model factory {factory!r} is not a registered model; install it "
                "on the service's machines as an entry point of the 'lethe.models' group"
            )
    # 2. the model rebuilds with exactly the recorded tensors
    try:
        model = run.new_model()
    except LetheError as exc:
        raise RunError(f"run {run_id!r}: its model cannot be built: {exc}") from None
    state = model.state_dict()
    final = run.load_weights(run.spec.trained_weights)
    missing, extra = sorted(set(final) - set(state)), sorted(set(state) - set(final))
    if missing or extra:
        raise RunError(
            f"run {run_id!r}: the model its factory {factory!r} builds does not match the recorded weights "
            f"(recorded only: {missing[:3]}; built only: {extra[:3]})"
        )
    for name, tensor in final.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise RunError(
                f"run {run_id!r}: tensor {name!r} is {tuple(tensor.shape)} in the recorded weights but "
                f"{tuple(state[name].shape)} in the model {factory!r} builds"
            )
    for name, shape in run.spec.tensors.items():
        if name not in final or tuple(final[name].shape) != tuple(shape):
            raise RunError(f"run {run_id!r}: recorded tensor {name!r} {tuple(shape)} is not in the weights as such")

    # 3. every blob with its sha256
    result = Verification(run_id=run_id, model=factory, steps=0, samples=0)
    pointers = _pointers(run) + [(f"update of step {i}", p) for i, p in enumerate(run.update_blobs)]
    for what, pointer in pointers:
        try:
            data = store.get(pointer.key, expected_sha256=pointer.sha256)
        except LetheError as exc:
            raise RunError(f"run {run_id!r}: {what} ({pointer.key}): {exc}") from None
        result.blobs_checked += 1
        result.bytes_checked += len(data)

    # 4. index and sample table agree; every id is the dataset's
    ids = list(run.sample_table["sample_ids"])
    index = run.index
    result.samples, result.steps = len(ids), int(index.n_steps)
    if len(set(ids)) != len(ids):
        raise RunError(f"run {run_id!r}: its sample table lists a sample id twice")
    if len(run.update_blobs) not in (0, index.n_steps):
        raise RunError(f"run {run_id!r}: {len(run.update_blobs)} update blobs for {index.n_steps} recorded steps")
    ptr_ok = len(index.ptr) == index.n_steps + 1 and int(index.ptr[-1]) == len(index.positions) if len(index.ptr) else False
    if not ptr_ok or bool((index.positions < 0).any() or (index.positions >= len(ids)).any()):
        raise RunError(
            f"run {run_id!r}: its index does not match its sample table ({len(ids)} samples; "
            f"{index.n_steps} steps pointing at {len(index.positions)} positions)"
        )
    if known_sample_ids is not None:
        known = set(known_sample_ids)
        unknown = [s for s in ids if s not in known]
        if unknown:
            shown = ", ".join(repr(s) for s in unknown[:3])
            raise RunError(
                f"run {run_id!r}: {len(unknown)} of its {len(ids)} sample ids are not in the dataset, e.g. {shown}"
            )

    # 5. initial + all updates == final (full recording only)
    if run.spec.recording.mode != "full" or not run.update_blobs:
        result.sum_check = f"skipped: the run recorded {run.spec.recording.mode} updates"
        return result
    initial = run.load_weights(run.spec.initial_weights)
    back, _ = subtract_steps(run, final, list(range(index.n_steps)), prune=None, device=torch.device(device))
    worst, where = 0.0, ""
    for name in run.spec.tensors:
        diff = float((back[name].float() - initial[name].float()).abs().max()) if back[name].numel() else 0.0
        if diff > worst:
            worst, where = diff, name
    result.max_abs_diff = worst
    if worst > atol:
        raise RunError(
            f"run {run_id!r}: the final weights minus all recorded updates differ from the initial weights "
            f"by up to {worst:.3g} (tensor {where!r}; tolerance {atol:g}): updates are missing or wrong"
        )
    result.sum_check = f"passed (max |diff| {worst:.2e} <= {atol:g})"
    return result
