"""Per-step update recording for the amnesiac family (full and layer-wise partial)."""

from unlearning_core.recording.codec import (
    RECORD_MODES,
    STORE_DTYPES,
    UpdateFormat,
    decode_update,
    encode_update,
)
from unlearning_core.recording.masks import MASK_KINDS, PruneSchedule
from unlearning_core.recording.recorder import UpdateRecorder, float_state, update_key

__all__ = [
    "MASK_KINDS",
    "RECORD_MODES",
    "STORE_DTYPES",
    "PruneSchedule",
    "UpdateFormat",
    "UpdateRecorder",
    "decode_update",
    "encode_update",
    "float_state",
    "update_key",
]
