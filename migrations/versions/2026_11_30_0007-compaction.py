"""Two tiers per request: compaction runs, the per-model erasure policy, exact answers.

* ``models.erasure_policy``: when the model is compacted (``compact_within_days``,
  ``compact_after_requests``, ``max_subtracted_share``, ``max_accuracy_drop``); NULL on
  models created before: the settings' defaults apply.
* ``training_runs.kind`` (``train`` | ``compaction``) and ``trigger``: a compaction is a
  training run under the same job lease, that retrains the model without every erased
  sample and starts a new lineage.
* ``request_jobs.exact_version_id`` / ``exact_at``: the version that answered the job
  exactly (SISA, retrain, a compaction, or a run that never trained on the samples) and
  when; ``reapplies_job_id``: a job that applies an erasure again on a compaction's new
  lineage, because its samples were still in the compaction's training set.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("erasure_policy", sa.JSON(), nullable=True))
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="train")
        )
        batch_op.add_column(sa.Column("trigger", sa.String(length=32), nullable=True))
    with op.batch_alter_table("request_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("exact_version_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("exact_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("reapplies_job_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_request_jobs_exact_version", "model_versions", ["exact_version_id"], ["id"]
        )
        batch_op.create_foreign_key(
            "fk_request_jobs_reapplies", "request_jobs", ["reapplies_job_id"], ["id"]
        )
        batch_op.create_index("ix_request_jobs_model_exact", ["model_id", "exact_at"])
    # Jobs answered before this migration by an exact method are exact with that version.
    op.execute(
        "UPDATE request_jobs SET exact_version_id = version_id, exact_at = finished_at "
        "WHERE status = 'completed' AND version_id IS NOT NULL AND method IN ('sisa', 'retrain')"
    )


def downgrade() -> None:
    with op.batch_alter_table("request_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_request_jobs_model_exact")
        batch_op.drop_constraint("fk_request_jobs_reapplies", type_="foreignkey")
        batch_op.drop_constraint("fk_request_jobs_exact_version", type_="foreignkey")
        batch_op.drop_column("reapplies_job_id")
        batch_op.drop_column("exact_at")
        batch_op.drop_column("exact_version_id")
    with op.batch_alter_table("training_runs", schema=None) as batch_op:
        batch_op.drop_column("trigger")
        batch_op.drop_column("kind")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("erasure_policy")
