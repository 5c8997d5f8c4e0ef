"""A PyTorch Lightning callback that records a ``Trainer.fit`` run for unlearning.

Install the extra (``pip install 'lethe[lightning]'``) and add the callback::

    from unlearning_core.integrations.lightning import LetheRecording

    recording = LetheRecording(store="s3://bucket/runs", run_id="claims-2026-12",
                               model_factory="mypkg.nets:build", submodule="net",
                               mode="partial", prune_first=0.99, prune_last=0.5)
    trainer = L.Trainer(max_epochs=5, callbacks=[recording])
    trainer.fit(module, train_loader)
    recording.run   # the recorded run (rank 0), as record_training leaves it

Each training batch is one window of :func:`unlearning_core.record_training`: its sample ids
come from the batch under ``sample_id_key`` (a dict key, default ``"sample_id"``, or a
position in a tuple batch), or from ``sample_ids=callable(batch)``. With
``accumulate_grad_batches`` a window without an optimizer step joins the next one, so a
recorded step is one optimizer step and holds the ids of all its micro-batches. Validation
and sanity checks run outside the windows (eval mode changes nothing). An exception in
``fit`` leaves the run incomplete (never usable); a multi-device strategy (DDP) records
through ``torch.distributed`` as ``record_training`` does: rank 0 writes.

``submodule`` records ``getattr(module, submodule)`` instead of the whole LightningModule,
so the factory rebuilds the user's network, not the training wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from unlearning_core.errors import RunError
from unlearning_core.recording.loop import RecordedStep, TrainingRecording, record_training

try:  # lightning 2.x; the older package name as a fallback
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as exc:
        raise ImportError(
            "the Lightning callback needs PyTorch Lightning: pip install 'lethe[lightning]'"
        ) from exc


class LetheRecording(Callback):  # type: ignore[misc]
    """Records the fit it is attached to (see the module doc); ``run`` is the result."""

    def __init__(
        self,
        *,
        store: Any,
        run_id: str,
        model_factory: str | Callable[..., torch.nn.Module],
        sample_id_key: str | int = "sample_id",
        sample_ids: Callable[[Any], Any] | None = None,
        submodule: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.model_factory = store, run_id, model_factory
        self.sample_id_key, self.sample_ids_of = sample_id_key, sample_ids
        self.submodule = submodule
        self.options: Mapping[str, Any] = options  # record_training's keyword arguments
        self.recording: TrainingRecording | None = None
        self._window: RecordedStep | None = None
        self.run: Any = None

    # -- sample ids --------------------------------------------------------------------
    def ids_of(self, batch: Any) -> Any:
        if self.sample_ids_of is not None:
            return self.sample_ids_of(batch)
        key = self.sample_id_key
        try:
            return batch[key]
        except (KeyError, IndexError, TypeError):
            raise RunError(
                f"the training batch has no sample ids under {key!r}: put them in the batch "
                "(a dict key or a tuple position, sample_id_key=) or pass sample_ids=callable"
            ) from None

    # -- the fit -----------------------------------------------------------------------
    def _module(self, pl_module: torch.nn.Module) -> torch.nn.Module:
        if self.submodule is None:
            return pl_module
        inner = getattr(pl_module, self.submodule, None)
        if not isinstance(inner, torch.nn.Module):
            raise RunError(f"the LightningModule has no submodule {self.submodule!r} to record")
        return inner

    def on_fit_start(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        self.recording = record_training(
            self._module(pl_module), optimizers[0] if optimizers else None,
            store=self.store, run_id=self.run_id, model_factory=self.model_factory, **self.options,
        )
        self.recording.__enter__()

    def on_train_batch_start(self, trainer: Any, pl_module: torch.nn.Module, batch: Any, batch_idx: int) -> None:
        assert self.recording is not None, "on_fit_start opens the recording"
        self._window = self.recording.step(self.ids_of(batch), epoch=int(trainer.current_epoch))
        self._window.__enter__()

    def on_train_batch_end(
        self, trainer: Any, pl_module: torch.nn.Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        window, self._window = self._window, None
        if window is not None:
            window.__exit__(None, None, None)

    def on_fit_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        recording, self.recording = self.recording, None
        if recording is not None:
            recording.__exit__(None, None, None)
            self.run = getattr(recording, "run", None)

    def on_exception(self, trainer: Any, pl_module: torch.nn.Module, exception: BaseException) -> None:
        window, self._window = self._window, None
        if window is not None:
            window.__exit__(type(exception), exception, None)
        recording, self.recording = self.recording, None
        if recording is not None:
            recording.__exit__(type(exception), exception, exception.__traceback__)
