"""Values shown beside the metrics that no metric function computes.

The pipeline measures them itself (timings of the method, sizes of what was stored or
read, the comparison's speed-up), but every table lists them with the metrics; registering
them here keeps each table's list in the registry alone. Imported last by the package, so
they follow the computed metrics in every table.
"""

from __future__ import annotations

from unlearning_core.metrics.registry import register_display

register_display(
    "unlearn_seconds", label="Unlearn time (s)", direction="lower", show=("version", "report", "compare"),
    description="Wall time of the unlearning method, recovery fine-tune excluded.",
)
register_display(
    "recovery_seconds", label="Recovery time (s)", direction="lower", show=("version", "report", "compare"),
    description="Wall time of the recovery fine-tune on retained data (0 without one).",
)
register_display(
    "storage_bytes", label="Stored for unlearning (bytes)", direction="lower", fmt=",",
    show=("report", "compare"),
    description="What the run keeps so that it can unlearn (recorded updates, SISA checkpoints).",
)
register_display(
    "batches_subtracted", label="Batches subtracted", direction=None, fmt="d", show=("report",),
    description="Amnesiac methods: recorded updates subtracted by this erasure.",
)
register_display(
    "bytes_read", label="Update bytes read", direction="lower", fmt=",", show=("report",),
    description="Amnesiac methods: bytes of recorded updates read from the store.",
)
register_display(
    "speedup_vs_retrain", label="Speed-up vs retrain", direction="higher", fmt=".2f", show=("compare",),
    description="Retraining time over this method's unlearn plus recovery time (compare only).",
)
