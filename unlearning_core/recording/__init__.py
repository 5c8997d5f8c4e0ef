"""Per-step update recording for the amnesiac family (full and layer-wise partial)."""

from unlearning_core.recording.codec import (
    RECORD_MODES,
    STORE_DTYPES,
    UpdateFormat,
    UpdateSum,
    decode_update,
    encode_update,
    with_fixed_masks,
)
from unlearning_core.recording.masks import DEFAULT_MASK, MASK_KINDS, FixedMasks, PruneSchedule
from unlearning_core.recording.prefetch import READ_AHEAD_BYTES, prefetch
from unlearning_core.recording.recorder import (
    MASK_INDEX,
    UpdateRecorder,
    float_state,
    store_fixed_masks,
    update_key,
)

__all__ = [
    "DEFAULT_MASK",
    "MASK_INDEX",
    "MASK_KINDS",
    "READ_AHEAD_BYTES",
    "RECORD_MODES",
    "STORE_DTYPES",
    "FixedMasks",
    "PruneSchedule",
    "UpdateFormat",
    "UpdateRecorder",
    "UpdateSum",
    "decode_update",
    "encode_update",
    "float_state",
    "prefetch",
    "store_fixed_masks",
    "update_key",
    "with_fixed_masks",
]
