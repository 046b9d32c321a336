"""audit_events by deployment: an index on deployment_id.

Deleting a deployment (retention) cascades to its audit events, and a release's
full view reads them per deployment; without the index each of those scans the
whole table (retention of 5,000 releases took 21.6 s on SQLite).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_audit_events_deployment_id"), "audit_events", ["deployment_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_events_deployment_id"), table_name="audit_events")
