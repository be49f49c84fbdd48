"""Jobs: a teacher model (`teacher_model_id`, FK to models.id, ON DELETE SET NULL, indexed) and
how the student starts (`init`, "scratch" or "project"; existing jobs get "scratch")
(matches app/db/models.py at 0003).

No batch copy of `jobs` on SQLite (see 0002: with foreign keys on, dropping the old table would
cascade to every job's metrics and checkpoints). SQLite cannot add a constraint to a table, but
ADD COLUMN may carry a REFERENCES clause (the column defaults to NULL), and DROP COLUMN (3.35+)
drops it with the column. PostgreSQL gets a named constraint.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_jobs_teacher_model_id"
INDEX_NAME = "ix_jobs_teacher_model_id"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def upgrade() -> None:
    if _sqlite():
        op.execute(
            f"ALTER TABLE jobs ADD COLUMN teacher_model_id VARCHAR(32) CONSTRAINT {FK_NAME} "
            "REFERENCES models (id) ON DELETE SET NULL"
        )
    else:
        op.add_column("jobs", sa.Column("teacher_model_id", sa.String(length=32), nullable=True))
        op.create_foreign_key(
            FK_NAME, "jobs", "models", ["teacher_model_id"], ["id"], ondelete="SET NULL"
        )
    op.create_index(INDEX_NAME, "jobs", ["teacher_model_id"])
    op.add_column(
        "jobs",
        sa.Column("init", sa.String(length=16), nullable=False, server_default="scratch"),
    )


def downgrade() -> None:
    op.drop_column("jobs", "init")
    op.drop_index(INDEX_NAME, table_name="jobs")
    if not _sqlite():
        op.drop_constraint(FK_NAME, "jobs", type_="foreignkey")
    op.drop_column("jobs", "teacher_model_id")
