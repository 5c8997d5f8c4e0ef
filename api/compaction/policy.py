"""A model's erasure policy: stored with the model, defaults from the settings.

The policy itself (:class:`unlearning_core.compaction.CompactionPolicy`) is shared with the
CLI and the stream benchmark; here it is only read from and merged into a model row.
"""

from __future__ import annotations

from typing import Any

from api.config import get_settings
from unlearning_core.compaction import CompactionPolicy


def default_policy() -> CompactionPolicy:
    """The settings' policy (``LETHE_COMPACT_*``), for new models that name none."""
    s = get_settings()
    return CompactionPolicy(
        compact_within_days=s.compact_within_days,
        compact_after_requests=s.compact_after_requests,
        max_subtracted_share=s.compact_max_subtracted_share,
        max_accuracy_drop=s.compact_max_accuracy_drop,
    )


def policy_of(stored: dict[str, Any] | None) -> CompactionPolicy:
    """A model's policy from its ``erasure_policy`` column (NULL: the defaults)."""
    if stored is None:
        return default_policy()
    return CompactionPolicy.model_validate({**default_policy().model_dump(), **stored})


def merged(stored: dict[str, Any] | None, changes: dict[str, Any]) -> CompactionPolicy:
    """The policy after ``changes`` (fields given; ``None`` turns a trigger off), validated:
    a bad field raises pydantic's ``ValidationError`` naming it (422)."""
    return CompactionPolicy.model_validate({**policy_of(stored).model_dump(), **changes})
