"""record_meta: what the record keeps about itself (e.g. that the backfill is done).

The types are written out here, not imported from activities.record.meta, so
this revision creates the same schema whatever the model becomes later.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

TIME = sa.DateTime(timezone=True)

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "record_meta",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_record_meta")),
    )


def downgrade() -> None:
    op.drop_table("record_meta")
