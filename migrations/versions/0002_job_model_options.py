"""Jobs: the model options a job asked for (allocation shape and budget split), nullable JSON
(matches app/db/models.py at 0002).

Plain ADD/DROP COLUMN, not a batch copy: on SQLite a batch drop rebuilds `jobs`, and with
foreign keys on, dropping the old table would cascade to every job's metrics and checkpoints.
SQLite has DROP COLUMN since 3.35.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("model_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "model_options")
