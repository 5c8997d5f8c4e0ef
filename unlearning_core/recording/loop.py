"""Recording any training loop: :func:`record_training` and the steps it sees.

``lethe train`` owns its loop; most users own theirs. ``record_training`` wraps a model (and
optionally its optimizer) for one run and records exactly what ``lethe train`` records, so
every loader and unlearning method works on the result unchanged:

- the initial and final weights (every tensor of the state dict, safetensors);
- per recorded step, the update of every float tensor of the state that can change
  (trainable parameters and float buffers such as BatchNorm running statistics), full or
  layer-wise pruned, each blob with its sha256;
- the sample -> step index over the user's own sample ids (normalised to strings);
- ``run.json`` with the recording settings, the model factory that rebuilds the model, and
  what happened (optimizer steps, skipped steps, merged windows).

One recorded step is one optimizer step. The user marks it with a window::

    with record_training(model, optimizer, store=..., run_id=..., model_factory=...) as rec:
        for epoch in range(epochs):
            for ids, x, y in loader:
                with rec.step(ids, epoch=epoch):
                    loss_fn(model(x), y).backward()
                    optimizer.step()
                    optimizer.zero_grad()

``group_steps=K`` records one step per K consecutive optimizer steps of an epoch instead
(their summed update; the index lists the union of their samples), as ``lethe train
--group-steps`` does: K times fewer blobs, and an erasure subtracts whole groups.
``compression="zlib"`` compresses each blob (lossless).

How a step's update is measured: the recorder keeps a snapshot of the recorded tensors and,
when a step closes, stores ``state now - snapshot`` and makes the current state the next
snapshot. Every change of the model therefore lands in exactly one recorded step (a
change made between two windows, say BatchNorm statistics of a forward pass run outside
one, counts toward the next step; a change after the last window is a last step holding no
sample), so the recorded updates always add up to ``final - initial``.

Gradient accumulation: either put every micro-batch of an optimizer step into one window
(``step.add(ids)`` for each micro-batch), or open one window per micro-batch: a window that
ends without an optimizer step while finite gradients are pending is merged into the next
one, so its samples join the step that applies their gradients.

Mixed precision: a window in which no optimizer step took effect (``GradScaler`` skipped it
for inf/nan gradients) is still a recorded step, whose update is zero except for what the
forward pass changed; ``run.json`` lists it in ``loop.skipped_steps``. Optimizer steps are
counted by torch's optimizer step hooks (every ``torch.optim.Optimizer`` that holds the
model's parameters; passing ``optimizer`` is optional); without any such optimizer, a step
counts when a trainable parameter changed.

A crash: an exception inside ``with record_training(...)`` leaves the run incomplete
(``recording.json`` says so, ``run.json`` is never written), every loader refuses it with a
:class:`RunError` naming the error, and the exception reaches the caller unchanged. So does
an ``optimizer.step()`` outside any window, or a frozen parameter that starts training.

DistributedDataParallel: with ``torch.distributed`` initialised, every rank calls
``rec.step`` with its own sample ids; rank 0 gathers them (``gather_object``) and records
the step's update (the same on every rank after the gradient all-reduce), other ranks write
nothing, and the run is complete once rank 0 closes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from unlearning_core.errors import LetheError, RunError
from unlearning_core.recording.codec import STORE_DTYPES
from unlearning_core.recording.masks import DEFAULT_MASK, MASK_KINDS, PruneSchedule
from unlearning_core.recording.recorder import UpdateRecorder, store_fixed_masks
from unlearning_core.runs.artifact import RecordedRun
from unlearning_core.runs.factory import check_factory as check_model_factory
from unlearning_core.runs.factory import factory_name
from unlearning_core.runs.index import StepIndex
from unlearning_core.runs.marker import RecordingMarker, write_marker
from unlearning_core.runs.spec import (
    BlobPointer,
    LoopSpec,
    RecordingSpec,
    RunResults,
    RunSpec,
    TrainingSpec,
)
from unlearning_core.runs.writing import ensure_new_run, publish_run
from unlearning_core.store import BlobStore, open_store
from unlearning_core.vocab import METHOD_OF_RECORD
from unlearning_core.weights import save_state

__all__ = ["RecordedStep", "TrainingRecording", "normalise_sample_ids", "record_training"]

SampleIds = Iterable[str | int] | torch.Tensor | np.ndarray | None

_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def record_training(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    store: BlobStore | str | os.PathLike[str],
    run_id: str,
    model_factory: str | Callable[..., torch.nn.Module],
    model_kwargs: Mapping[str, Any] | None = None,
    mode: Literal["full", "partial"] = "partial",
    prune_first: float = 0.99,
    prune_last: float = 0.5,
    mask: Literal["fixed", "random", "magnitude"] = DEFAULT_MASK,
    mask_seed: int | None = None,
    dtype: Literal["float32", "float16", "bfloat16"] = "float32",
    seed: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    distributed: bool | None = None,
    check_factory: bool = True,
    writers: int = 2,
    max_pending: int = 16,
    skip_layers: int = 0,
    group_steps: int = 1,
    compression: Literal["none", "zlib"] = "none",
) -> TrainingRecording:
    """Record one training run of ``model`` from the caller's own loop (a context manager).

    Args:
        model: the module being trained (a ``DistributedDataParallel`` or ``torch.compile``
            wrapper is unwrapped: the inner module's state is recorded).
        optimizer: optional. Optimizer steps are counted through torch's step hooks for
            every ``torch.optim.Optimizer`` holding the model's parameters, passed or not;
            a passed one must hold some of them, and its hyper-parameters go into
            ``run.json`` (else those of the first optimizer that steps).
        store: a :class:`BlobStore`, a local directory or ``s3://bucket/prefix``.
        run_id: the run's name in the store (letters, digits, ``.``, ``_``, ``-``; at most
            128); an existing or previously attempted id is refused.
        model_factory: what rebuilds the model for unlearning: ``"pkg.module:callable"``
            (or the callable itself, if importable by that name), a ``lethe.models`` entry
            point, or a built-in model name; called with ``model_kwargs`` (JSON values).
            Checked at the start (``check_factory``): its model must have this model's
            state-dict keys and shapes.
        mode: ``full`` (every update, for ``amnesiac``) or ``partial`` (layer-wise pruned
            with ``prune_first`` -> ``prune_last`` and ``mask``, for ``partial-amnesiac``).
        mask: how a partial run prunes: ``fixed`` (one mask per tensor for the whole run,
            stored once; each step stores only the kept values, contiguous: the fastest to
            record and to unlearn), ``random`` (a new mask per step, regenerated from the
            seed) or ``magnitude`` (the largest entries of each step, indices stored).
        mask_seed: seed of the fixed / random masks (default ``seed``, else 0).
        dtype: precision of stored updates (``float32``, ``float16`` or ``bfloat16``; always
            summed in float32).
        seed: the run's seed, kept in ``run.json`` (recording does not seed anything).
        metadata: the caller's own JSON object, kept in ``run.json`` (``loop.metadata``).
        distributed: record a ``torch.distributed`` job (rank 0 writes); default: when a
            process group with more than one rank is initialised.
        writers, max_pending: background writer threads and the most updates queued.
        skip_layers: partial runs: the first N layers (depth order) are not recorded at all.
        group_steps: one recorded step per K consecutive steps of an epoch (the last group of
            an epoch may be shorter), holding their summed update and the union of their
            sample ids: K times fewer blobs, and an erasure subtracts whole groups.
        compression: ``zlib`` compresses each stored update (lossless; fewer bytes, slower).

    Use ``with record_training(...) as rec:`` and ``with rec.step(ids, epoch=e):`` around
    each optimizer step. After the block, ``rec.run`` is the stored run (rank 0).
    """
    return TrainingRecording(
        model, optimizer, store=store, run_id=run_id, model_factory=model_factory,
        model_kwargs=model_kwargs, mode=mode, prune_first=prune_first, prune_last=prune_last,
        mask=mask, mask_seed=mask_seed, dtype=dtype, seed=seed, metadata=metadata,
        distributed=distributed, check_factory=check_factory, writers=writers, max_pending=max_pending,
        skip_layers=skip_layers, group_steps=group_steps, compression=compression,
    )


def normalise_sample_ids(sample_ids: SampleIds) -> list[str]:
    """Sample ids as the index stores them: strings (integers written in decimal).

    Accepts a sequence of str / int, a 1-D integer or string array, or an integer tensor.
    A single string, floats, booleans, ``None`` entries, empty ids and ids with surrounding
    whitespace or a line break are refused: an id must read back the same from a file of
    ids (one per line) when an erasure names it.
    """
    if sample_ids is None:
        return []
    if isinstance(sample_ids, (str, bytes)):
        raise RunError(f"sample ids must be a sequence of ids, got the single value {sample_ids!r}")
    if isinstance(sample_ids, torch.Tensor):
        if sample_ids.is_floating_point() or sample_ids.is_complex() or sample_ids.dtype == torch.bool:
            raise RunError(f"sample ids must be integers or strings, got a {sample_ids.dtype} tensor")
        values: list[Any] = sample_ids.detach().reshape(-1).cpu().tolist()
    elif isinstance(sample_ids, np.ndarray):
        if sample_ids.dtype.kind not in "iuUO":
            raise RunError(f"sample ids must be integers or strings, got a {sample_ids.dtype} array")
        values = sample_ids.reshape(-1).tolist()
    else:
        values = list(sample_ids)
    out: list[str] = []
    for v in values:
        if isinstance(v, str):
            s = v
        elif isinstance(v, (bool, np.bool_)):
            raise RunError(f"sample id {v!r} is a boolean; use strings or integers")
        elif isinstance(v, (int, np.integer)):
            s = str(int(v))
        elif isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            s = str(int(v.item()))
        else:
            raise RunError(f"sample id {v!r} ({type(v).__name__}) is not a string or an integer")
        if not s or s != s.strip() or "\n" in s or "\r" in s:
            raise RunError(f"sample id {s!r} is empty, has surrounding whitespace or a line break")
        out.append(s)
    return out


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state is the model's: inside DDP / DataParallel / torch.compile."""
    seen = 0
    while seen < 8:
        seen += 1
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, torch.nn.Module):
            model = inner
            continue
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
            continue
        break
    return model


def _json_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    out = dict(value or {})
    try:
        return json.loads(json.dumps(out))
    except (TypeError, ValueError) as exc:
        raise RunError(f"{what} must be JSON (strings, numbers, lists, objects): {exc}") from None


def _optimizer_settings(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """The first parameter group's hyper-parameters that are JSON numbers, strings or flags."""
    out: dict[str, Any] = {}
    for key, value in opt.param_groups[0].items():
        if key == "params":
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[key] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
            out[key] = list(value)
    return out


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class RecordedStep:
    """One ``rec.step(...)`` window: the samples of (part of) one optimizer step."""

    def __init__(self, recording: TrainingRecording, sample_ids: SampleIds, epoch: int) -> None:
        self._rec = recording
        self.epoch = epoch
        self.sample_ids: list[str] = normalise_sample_ids(sample_ids)

    def add(self, sample_ids: SampleIds) -> None:
        """More samples of this step (each micro-batch of an accumulated step)."""
        self.sample_ids.extend(normalise_sample_ids(sample_ids))

    def __enter__(self) -> Self:
        self._rec._open_window(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._rec._close_window(self, failed=exc is not None)


class TrainingRecording:
    """The recording of one run from the caller's loop; made by :func:`record_training`."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        *,
        store: BlobStore | str | os.PathLike[str],
        run_id: str,
        model_factory: str | Callable[..., torch.nn.Module],
        model_kwargs: Mapping[str, Any] | None,
        mode: str,
        prune_first: float,
        prune_last: float,
        mask: str,
        mask_seed: int | None,
        dtype: str,
        seed: int | None,
        metadata: Mapping[str, Any] | None,
        distributed: bool | None,
        check_factory: bool,
        writers: int,
        max_pending: int,
        skip_layers: int = 0,
        group_steps: int = 1,
        compression: str = "none",
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise RunError(f"record_training needs a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise RunError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise RunError(f"run id {run_id!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        if mode not in ("full", "partial"):
            raise RunError(f"mode must be 'full' or 'partial', got {mode!r}")
        if mask not in MASK_KINDS:
            raise RunError(f"mask must be one of {', '.join(MASK_KINDS)}, got {mask!r}")
        if dtype not in STORE_DTYPES:
            raise RunError(f"dtype must be one of {', '.join(STORE_DTYPES)}, got {dtype!r}")
        PruneSchedule(prune_first, prune_last, skip=skip_layers)  # in [0, 1)
        if skip_layers and mode != "partial":
            raise RunError("skip_layers prunes layers away: it needs mode='partial'")
        if isinstance(group_steps, bool) or not isinstance(group_steps, int) or not 1 <= group_steps <= 100_000:
            raise RunError(f"group_steps must be an integer from 1 to 100000, got {group_steps!r}")
        if compression not in ("none", "zlib"):
            raise RunError(f"compression must be 'none' or 'zlib', got {compression!r}")
        self.run_id = run_id
        self.model = model
        self.module = _unwrap(model)
        self.optimizer = optimizer
        self.mode = mode
        self._store_arg = store
        self._factory_arg = model_factory
        self._model_kwargs = _json_object(model_kwargs, "model_kwargs")
        self._metadata = _json_object(metadata, "metadata")
        self._recording = RecordingSpec(
            mode=mode, mask=mask, mask_seed=(seed or 0) if mask_seed is None else mask_seed,  # type: ignore[arg-type]
            prune_first=prune_first, prune_last=prune_last, dtype=dtype, skip_layers=skip_layers,
            group_steps=group_steps, compression=compression,  # type: ignore[arg-type]
        )
        self._group_steps = group_steps
        self._seed = seed
        self._distributed_arg = distributed
        self._check_factory = check_factory
        self._writers, self._max_pending = writers, max_pending
        self._state: Literal["new", "open", "closed", "failed"] = "new"
        # filled in by start()
        self.rank, self.world_size, self.distributed = 0, 1, False
        self.store: BlobStore | None = None
        self.prefix = ""
        self.run: RecordedRun | None = None
        self._hook: Any = None
        self._window: RecordedStep | None = None
        self._window_opt_steps = 0
        # rank 0's bookkeeping
        self._factory = ""
        self._names: list[str] = []
        self._frozen: dict[str, torch.Tensor] = {}
        self._frozen_params: list[tuple[str, torch.nn.Parameter]] = []
        self._trainable: list[torch.nn.Parameter] = []
        self._param_ids: set[int] = set()
        self._touches: weakref.WeakKeyDictionary[torch.optim.Optimizer, bool] = weakref.WeakKeyDictionary()
        self._before: dict[str, torch.Tensor] = {}
        self._recorder: UpdateRecorder | None = None
        self._initial: BlobPointer | None = None
        self._positions: dict[str, int] = {}
        self._steps: list[tuple[int, int, list[int]]] = []
        self._batch_of_epoch: dict[int, int] = {}
        self._epoch = 0
        self._pending_ids: list[str] = []
        self._pending_epoch: int | None = None
        self._pending_opt_steps = 0
        self._optimizer_steps = 0
        self._samples_processed = 0
        self._largest_step = 0
        # an open group of steps (group_steps > 1): its epoch, sample ids, size, all skipped?
        self._group_epoch: int | None = None
        self._group_ids: list[str] = []
        self._group_len = 0
        self._group_skipped = True
        self._optimizers: list[str] = []
        self._optimizer_settings: dict[str, Any] = {}
        self._skipped: list[int] = []
        self._unattributed: list[int] = []
        self._merged = 0
        self._started = 0.0
        self._started_at = datetime.now(UTC)
        self._stall = 0.0
        self._marker: RecordingMarker | None = None

    # -- public -------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Steps recorded so far (rank 0; 0 elsewhere); with ``group_steps``, closed groups."""
        return len(self._steps)

    @property
    def skipped_steps(self) -> list[int]:
        """Recorded steps in which no optimizer step took effect (rank 0); with
        ``group_steps``, groups none of whose steps took effect."""
        return list(self._skipped)

    def step(self, sample_ids: SampleIds = None, *, epoch: int | None = None) -> RecordedStep:
        """A window around one optimizer step and the samples it trained on.

        ``sample_ids``: the caller's ids of this step's samples (more with ``add``), any
        order, duplicates allowed. ``epoch``: the epoch number (>= 0; default: the last one
        given, else 0); steps are keyed by (epoch, number within the epoch).
        """
        if self._state != "open":
            raise RunError(f"rec.step() on a recording that is {self._state}; use it inside `with record_training(...)`")
        if self._window is not None:
            raise RunError("rec.step() windows do not nest: close the previous step first")
        if epoch is None:
            epoch = self._epoch
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise RunError(f"epoch must be an integer >= 0, got {epoch!r}")
        self._epoch = int(epoch)
        return RecordedStep(self, sample_ids, int(epoch))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.finish()
        else:
            self.abort(exc)

    # -- start ----------------------------------------------------------------------------
    def start(self) -> None:
        """Check everything, store the initial weights and start counting optimizer steps
        (what ``with`` does on entry)."""
        if self._state != "new":
            raise RunError(f"recording {self.run_id!r} was already started")
        self._param_ids = {id(p) for p in self.module.parameters()}
        if self.optimizer is not None and not self._holds_model_params(self.optimizer):
            raise RunError("the optimizer passed to record_training holds none of the model's parameters")
        self._setup_distributed()
        error: BaseException | None = None
        if self.rank == 0:
            try:
                self._start_rank0()
            except BaseException as exc:  # noqa: BLE001 (re-raised below, after the other ranks heard)
                error = exc
        if self.distributed:
            import torch.distributed as dist

            box = [None if error is None else f"{type(error).__name__}: {error}"]
            dist.broadcast_object_list(box, src=0)
            if self.rank != 0 and box[0] is not None:
                self._state = "failed"
                raise RunError(f"recording {self.run_id!r} did not start on rank 0: {box[0]}")
        if error is not None:
            self._state = "failed"
            raise error
        if self.optimizer is not None:
            self._note_optimizer(self.optimizer)
        self._hook = register_optimizer_step_post_hook(self._after_optimizer_step)
        self._started = time.perf_counter()
        self._state = "open"

    def _setup_distributed(self) -> None:
        import torch.distributed as dist

        ready = dist.is_available() and dist.is_initialized()
        wanted = self._distributed_arg
        if wanted is None:
            wanted = bool(ready and dist.get_world_size() > 1)
        if wanted and not ready:
            raise RunError("distributed=True but torch.distributed is not initialised")
        self.distributed = bool(wanted)
        if self.distributed:
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def _start_rank0(self) -> None:
        store = self._store_arg
        self.store = store if isinstance(store, BlobStore) else open_store(store)
        self.prefix = ensure_new_run(self.store, self.run_id)
        self._factory = factory_name(self._factory_arg)
        state = self.module.state_dict(keep_vars=True)
        for name, value in state.items():
            if isinstance(value, torch.nn.parameter.UninitializedTensorMixin):
                raise RunError(f"{name} is not initialised yet (a lazy module): run one forward pass first")
        if self._check_factory:
            check_model_factory(self._factory, self._model_kwargs, self.module)
        frozen_ids = {id(p) for p in self.module.parameters() if not p.requires_grad}
        self._names = [k for k, v in state.items() if torch.is_floating_point(v) and id(v) not in frozen_ids]
        self._frozen = {
            k: v.detach().to("cpu", copy=True)
            for k, v in state.items() if torch.is_floating_point(v) and id(v) in frozen_ids
        }
        self._frozen_params = [(n, p) for n, p in self.module.named_parameters() if not p.requires_grad]
        self._trainable = [p for p in self.module.parameters() if p.requires_grad]
        if not self._names:
            raise RunError("the model has no trainable parameter or float buffer to record")
        self._marker = RecordingMarker(
            run_id=self.run_id, status="recording", started_at=self._started_at,
            host=platform.node(), pid=os.getpid(), extra={"world_size": self.world_size},
        )
        write_marker(self.store, self.prefix, self._marker)
        try:
            live = self.module.state_dict()
            self._initial = BlobPointer.of(
                save_state(self.store, f"{self.prefix}/weights/initial.safetensors", live)
            )
            with torch.no_grad():
                self._before = {k: live[k].detach().clone() for k in self._names}
            fmt = self._recording.update_format({k: tuple(self._before[k].shape) for k in self._names})
            fmt, mask_ref = store_fixed_masks(fmt, self.store, self.prefix)
            if mask_ref is not None:
                self._recording = self._recording.model_copy(update={"mask_index": BlobPointer.of(mask_ref)})
            self._recorder = UpdateRecorder(
                self.module, fmt=fmt, store=self.store, prefix=self.prefix,
                writers=self._writers, max_pending=self._max_pending,
            )
        except BaseException as exc:
            self._mark_incomplete(exc)
            raise

    # -- optimizer steps ----------------------------------------------------------------
    def _holds_model_params(self, opt: torch.optim.Optimizer) -> bool:
        known = self._touches.get(opt)
        if known is None:
            known = self._touches[opt] = any(
                id(p) in self._param_ids for group in opt.param_groups for p in group["params"]
            )
        return known

    def _note_optimizer(self, opt: torch.optim.Optimizer) -> None:
        name = _qualified(type(opt))
        if name not in self._optimizers:
            self._optimizers.append(name)
        if not self._optimizer_settings:
            self._optimizer_settings = _optimizer_settings(opt)

    def _after_optimizer_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._state != "open" or not self._holds_model_params(opt):
            return
        if self._window is None:
            raise RunError(
                f"{type(opt).__name__}.step() ran outside a rec.step(...) window, so its update "
                f"would belong to no samples; recording {self.run_id!r} stops here (put the "
                "optimizer step inside the window of the samples whose gradients it applies)"
            )
        self._window_opt_steps += 1
        self._note_optimizer(opt)

    # -- windows --------------------------------------------------------------------------
    def _open_window(self, window: RecordedStep) -> None:
        if self._state != "open":
            raise RunError(f"rec.step() on a recording that is {self._state}")
        if self._window is not None:
            raise RunError("rec.step() windows do not nest: close the previous step first")
        if self._group_len and window.epoch != self._group_epoch:
            self._flush_group()  # before this window's step changes the model: groups never span epochs
        self._window = window
        self._window_opt_steps = 0

    def _close_window(self, window: RecordedStep, *, failed: bool) -> None:
        self._window = None
        if failed or self._state != "open":
            return  # the exception goes on; the recording is aborted by its own `with`
        started = time.perf_counter()
        ids = window.sample_ids
        if self.distributed:
            import torch.distributed as dist

            gathered: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
            dist.gather_object(ids, gathered, dst=0)
            if self.rank == 0:
                assert gathered is not None
                ids = [s for part in gathered for s in part]
        if self.rank != 0:
            return
        self._pending_ids.extend(ids)
        if self._pending_epoch is None:
            self._pending_epoch = window.epoch
        stepped = self._window_opt_steps > 0 or (not self._optimizers and self._params_changed())
        self._pending_opt_steps += self._window_opt_steps
        if not stepped and self._pending_gradients() == "finite":
            self._merged += 1  # accumulation: these samples join the step that applies them
        else:
            self._record_step(skipped=not stepped)
        self._stall += time.perf_counter() - started

    def _params_changed(self) -> bool:
        live = self.module.state_dict()
        params = {id(p) for p in self._trainable}
        keep = self.module.state_dict(keep_vars=True)
        return any(
            not torch.equal(live[k], self._before[k]) for k in self._names if id(keep[k]) in params
        )

    def _pending_gradients(self) -> Literal["none", "finite", "nonfinite"]:
        """Gradients waiting for an optimizer step: none (or all zero), finite ones (an
        accumulating micro-batch), or inf/nan ones (a step a GradScaler skipped)."""
        found = False
        for p in self._trainable:
            g = p.grad
            if g is None:
                continue
            if not bool(torch.isfinite(g).all()):
                return "nonfinite"
            found = found or bool(g.any())
        return "finite" if found else "none"

    def _position(self, sample_id: str) -> int:
        pos = self._positions.get(sample_id)
        if pos is None:
            pos = self._positions[sample_id] = len(self._positions)
        return pos

    def _record_step(self, *, skipped: bool) -> None:
        """One optimizer step (with the windows merged into it) is over: record its update
        now, or add it to the open group of ``group_steps``."""
        for name, p in self._frozen_params:
            if p.requires_grad:
                raise RunError(
                    f"parameter {name} was frozen (requires_grad=False) when recording started and "
                    "trains now; record_training records the parameters trainable at the start"
                )
        epoch = self._pending_epoch if self._pending_epoch is not None else self._epoch
        ids = list(dict.fromkeys(self._pending_ids))
        self._samples_processed += len(ids)
        self._largest_step = max(self._largest_step, len(ids))
        self._optimizer_steps += self._pending_opt_steps
        self._pending_ids, self._pending_epoch, self._pending_opt_steps = [], None, 0
        if self._group_steps == 1:
            self._take_update(epoch, ids, skipped=skipped)
            return
        if self._group_len and self._group_epoch != epoch:
            self._flush_group()  # merged windows of an earlier epoch: their step closes a group
        self._group_epoch = epoch
        self._group_ids.extend(ids)
        self._group_len += 1
        self._group_skipped = self._group_skipped and skipped
        if self._group_len == self._group_steps:
            self._flush_group()

    def _flush_group(self) -> None:
        """Record the open group (its summed update, the union of its samples), if any."""
        if not self._group_len:
            return
        assert self._group_epoch is not None
        epoch, ids, skipped = self._group_epoch, self._group_ids, self._group_skipped
        self._group_epoch, self._group_ids, self._group_len, self._group_skipped = None, [], 0, True
        self._take_update(epoch, list(dict.fromkeys(ids)), skipped=skipped)

    def _take_update(self, epoch: int, ids: list[str], *, skipped: bool, unattributed: bool = False) -> None:
        """Store ``state now - snapshot`` as the next recorded step of ``epoch``, holding
        ``ids``, and make the current state the next snapshot."""
        assert self._recorder is not None
        k = len(self._steps)
        batch = self._batch_of_epoch.get(epoch, 0)
        self._batch_of_epoch[epoch] = batch + 1
        live = self.module.state_dict()
        try:
            with torch.no_grad():
                delta = {}
                for name in self._names:
                    after = live[name].detach()
                    delta[name] = after - self._before[name]
                    self._before[name].copy_(after)
        except KeyError as exc:
            raise RunError(f"the model's state dict lost {exc} during training; its layout must stay fixed") from None
        except RuntimeError as exc:
            raise RunError(f"the model's state changed shape during training ({exc}); its layout must stay fixed") from None
        self._recorder.submit(delta, step=k, epoch=epoch, batch=batch)
        self._steps.append((epoch, batch, [self._position(s) for s in ids]))
        if skipped:
            self._skipped.append(k)
        if unattributed:
            self._unattributed.append(k)

    # -- finish ---------------------------------------------------------------------------
    def finish(self) -> RecordedRun | None:
        """Store the final weights, index, samples and ``run.json`` (rank 0) and return the
        run; what ``with`` does when the block ends without an exception."""
        if self._state != "open":
            raise RunError(f"recording {self.run_id!r} is {self._state}; it cannot be finished")
        if self._window is not None:
            raise RunError("finish() inside a rec.step() window")
        error: BaseException | None = None
        try:
            if self.distributed:
                import torch.distributed as dist

                dist.gather_object("done", [None] * self.world_size if self.rank == 0 else None, dst=0)
            if self.rank == 0:
                self.run = self._finish_rank0()
        except BaseException as exc:  # noqa: BLE001 (re-raised below)
            error = exc
            if self.rank == 0:
                self._mark_incomplete(exc)
        finally:
            self._remove_hook()
        if self.distributed:
            import torch.distributed as dist

            box = [None if error is None else f"{type(error).__name__}: {error}"]
            dist.broadcast_object_list(box, src=0)
            if self.rank != 0 and box[0] is not None and error is None:
                error = RunError(f"rank 0 could not complete recording {self.run_id!r}: {box[0]}")
        if error is not None:
            self._state = "failed"
            raise error
        self._state = "closed"
        return self.run

    def _finish_rank0(self) -> RecordedRun:
        assert self.store is not None and self._recorder is not None and self._initial is not None
        if self._pending_ids or self._pending_epoch is not None:
            self._record_step(skipped=True)  # micro-batches whose gradients no step applied
        self._flush_group()
        live = self.module.state_dict()
        if any(not torch.equal(live[k], self._before[k]) for k in self._names):
            self._take_update(self._epoch, [], skipped=False, unattributed=True)
        stats = self._recorder.close()
        self._recorder = None
        final = self.module.state_dict()
        changed = [k for k, v in self._frozen.items() if not torch.equal(final[k].detach().cpu(), v)]
        if changed:
            raise RunError(
                f"frozen parameter {changed[0]} changed during training without being recorded "
                "(it had requires_grad=False at the start)"
            )
        prefix, store = self.prefix, self.store
        trained = save_state(store, f"{prefix}/weights/v0000.safetensors", final)
        epochs = [e for e, _, _ in self._steps]
        index = StepIndex.from_steps(epochs, [b for _, b, _ in self._steps], [p for _, _, p in self._steps])
        index_ref = store.put(f"{prefix}/index.safetensors", index.to_bytes())
        n = len(self._positions)
        table = {"sample_ids": list(self._positions), "subject_ids": [None] * n, "labels": [-1] * n}
        samples = store.put(f"{prefix}/samples.json", json.dumps(table).encode())
        blobs = [BlobPointer.of(b.ref).model_dump() for b in stats.blobs]
        if [b.step for b in stats.blobs] != list(range(len(self._steps))):
            raise RunError(f"recording {self.run_id!r} lost update blobs: {len(stats.blobs)} of {len(self._steps)} steps")
        updates = store.put(f"{prefix}/updates.json", json.dumps(blobs).encode())
        settings = self._optimizer_settings
        betas = settings.get("betas")
        first = next(iter(final.values()), None)
        training = TrainingSpec(
            epochs=len(set(epochs)),
            batch_size=self._largest_step or 1,
            lr=float(settings.get("lr", 0.0) or 0.0),
            momentum=float(settings.get("momentum", betas[0] if isinstance(betas, list) and betas else 0.0) or 0.0),
            weight_decay=float(settings.get("weight_decay", 0.0) or 0.0),
            seed=self._seed or 0,
            timeline_every=0,
        )
        spec = RunSpec(
            method=METHOD_OF_RECORD[self._recording.mode],
            run_id=self.run_id,
            created_at=self._started_at,
            model=self._factory,
            dataset=None,
            training=training,
            recording=self._recording,
            tensors={k: list(self._before[k].shape) for k in self._names},
            results=RunResults(
                steps=len(self._steps),
                samples_processed=self._samples_processed,
                train_seconds=time.perf_counter() - self._started,
                stall_seconds=self._stall + stats.stall_seconds,
                backpressure_seconds=stats.backpressure_seconds,
                storage_bytes=stats.storage_bytes,
                device=str(first.device) if first is not None else "cpu",
            ),
            initial_weights=self._initial,
            trained_weights=BlobPointer.of(trained),
            samples=BlobPointer.of(samples),
            index=BlobPointer.of(index_ref),
            updates=BlobPointer.of(updates),
            loop=LoopSpec(
                model_factory=self._factory,
                model_kwargs=self._model_kwargs,
                optimizers=self._optimizers,
                optimizer_settings=settings,
                optimizer_steps=self._optimizer_steps,
                skipped_steps=self._skipped,
                unattributed_steps=self._unattributed,
                merged_windows=self._merged,
                frozen_tensors=list(self._frozen),
                world_size=self.world_size,
                torch_version=torch.__version__,
                metadata=self._metadata,
            ),
        )
        run = publish_run(RecordedRun(store, spec))
        if self._marker is not None:
            self._marker.status, self._marker.steps_recorded = "complete", len(self._steps)
            write_marker(store, prefix, self._marker)
        return run

    # -- abort ----------------------------------------------------------------------------
    def abort(self, exc: BaseException | None = None) -> None:
        """Mark the run incomplete (rank 0) and stop; what ``with`` does when the block
        raises. The run is never published and every loader refuses it."""
        try:
            if self.rank == 0 and self._state in ("open", "new"):
                self._mark_incomplete(exc)
        finally:
            self._remove_hook()
            self._window = None
            self._state = "failed"

    def _mark_incomplete(self, exc: BaseException | None) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            with contextlib.suppress(Exception):  # queued writes finish; their errors no longer matter
                recorder.close()
        if self._marker is None or self.store is None:
            return
        self._marker.status = "incomplete"
        self._marker.steps_recorded = len(self._steps)
        reason = "aborted" if exc is None else f"{type(exc).__name__}: {exc}"
        self._marker.error = reason if len(reason) <= 500 else reason[:497] + "..."
        try:
            write_marker(self.store, self.prefix, self._marker)
        except LetheError:
            pass  # the store is what failed; the missing run.json still keeps the run unusable

    def _remove_hook(self) -> None:
        hook, self._hook = self._hook, None
        if hook is not None:
            hook.remove()
