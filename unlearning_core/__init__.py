"""Pure machine-unlearning library: datasets, models, recorded training, unlearning methods, metrics.

Imports nothing from ``api`` or ``worker`` and needs no server; runs the same on CPU and CUDA.

The stable entry point for users' own training loops is :func:`record_training`
(``from unlearning_core import record_training``); see
``docs/guides/bring-your-own-training.md``. It is imported on first use, so importing this
package stays cheap (``lethe --help`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RecordedStep", "TrainingRecording", "__version__", "record_training"]

if TYPE_CHECKING:  # pragma: no cover
    from unlearning_core.recording.loop import RecordedStep, TrainingRecording, record_training

_LAZY = {"record_training", "TrainingRecording", "RecordedStep"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from unlearning_core.recording import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'unlearning_core' has no attribute {name!r}")
