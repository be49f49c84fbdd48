"""Jobs and models: the owner's label (`name`, up to 200 characters, NULL: none), which a job
passes to its model (matches app/db/models.py at 0004).

Plain ADD COLUMN / DROP COLUMN on both backends (no batch copy on SQLite: see 0002).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("jobs", "models")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("name", sa.String(length=200), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "name")
