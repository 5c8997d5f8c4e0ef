"""The words Lethe's parts share, each defined once.

The training methods (what a run prepares for) and the guarantees of unlearning methods are
named by the CLI, the run spec, the method registry and the API alike. Listing them in each
of those places let the lists drift apart; every place imports them from here instead.

They are ``StrEnum``s: a member *is* its string (``TrainingMethod.SISA == "sisa"``), so it
goes into JSON, database columns and messages as the plain word, and pydantic fields typed
with them accept the plain word.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal


class TrainingMethod(StrEnum):
    """What a training run prepares for (``lethe train --method``, ``run.json``'s ``method``)."""

    PLAIN = "plain"  # nothing recorded: retrain or an optimisation-based method
    AMNESIAC = "amnesiac"  # every step's full update recorded
    PARTIAL_AMNESIAC = "partial-amnesiac"  # every step's update, layer-wise pruned
    SISA = "sisa"  # shards x slices with a checkpoint after each slice


class Guarantee(StrEnum):
    """What a published version promises about the erased samples."""

    EXACT = "exact"  # the weights are those of a model never trained on them
    APPROXIMATE = "approximate"  # their influence is removed approximately; metrics are the evidence


#: The ``method`` of a lineage's first version when it was trained (version 0).
TRAIN_METHOD = "train"
#: The ``method`` of a version made by a compaction (a retraining from scratch that starts
#: a new lineage): exact, like ``retrain``.
COMPACT_METHOD = "compact"

#: How a run records its updates (``RecordingSpec.mode``).
RecordMode = Literal["none", "full", "partial"]

#: Training methods whose artifact is one model (not a SISA ensemble).
SINGLE_MODEL_TRAINING: tuple[TrainingMethod, ...] = (
    TrainingMethod.PLAIN,
    TrainingMethod.AMNESIAC,
    TrainingMethod.PARTIAL_AMNESIAC,
)

#: What each training method records.
RECORD_OF_METHOD: dict[TrainingMethod, RecordMode] = {
    TrainingMethod.PLAIN: "none",
    TrainingMethod.AMNESIAC: "full",
    TrainingMethod.PARTIAL_AMNESIAC: "partial",
    TrainingMethod.SISA: "none",
}

#: The single-model training method a recording mode stands for (``lethe train --record``).
METHOD_OF_RECORD: dict[RecordMode, TrainingMethod] = {
    "none": TrainingMethod.PLAIN,
    "full": TrainingMethod.AMNESIAC,
    "partial": TrainingMethod.PARTIAL_AMNESIAC,
}

#: The unlearning method erasure requests use by default on a model trained so.
DEFAULT_UNLEARN_METHOD: dict[TrainingMethod, str] = {
    TrainingMethod.PLAIN: "retrain",
    TrainingMethod.AMNESIAC: "amnesiac",
    TrainingMethod.PARTIAL_AMNESIAC: "partial-amnesiac",
    TrainingMethod.SISA: "sisa",
}
