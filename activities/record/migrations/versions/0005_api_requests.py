"""The API's trail of people's requests on releases: how they signed in, and the
requests it refused before they reached a workflow (issue 13).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 03:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_requests",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("release_id", ID, nullable=True),
        sa.Column("pipeline", sa.String(length=200), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=200), nullable=True),
        sa.Column("time", TIME, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("via", sa.String(length=300), nullable=False),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_api_requests_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_requests")),
    )
    op.create_index(op.f("ix_api_requests_release_id_time"), "api_requests", ["release_id", "time"])
    op.create_index(op.f("ix_api_requests_request_id"), "api_requests", ["request_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_api_requests_request_id"), table_name="api_requests")
    op.drop_index(op.f("ix_api_requests_release_id_time"), table_name="api_requests")
    op.drop_table("api_requests")
