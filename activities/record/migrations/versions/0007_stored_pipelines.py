"""Stored pipelines and work items (issue 16): each `pipeline apply` is a numbered
revision of the pipeline (who, when, the definition's sha256, where it was applied
from), and each release's work items are rows, so `stageflow where ITEM` is one
indexed query.

The definitions recorded before this revision (from the releases made of them)
become revisions 1, 2, … of their pipelines, in the order they were first used.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIME = sa.DateTime(timezone=True)

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stored_revisions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("pipeline_id", ID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["pipeline_id"],
            ["pipelines.id"],
            name=op.f("fk_stored_revisions_pipeline_id_pipelines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stored_revisions")),
        sa.UniqueConstraint(
            "pipeline_id", "number", name=op.f("uq_stored_revisions_pipeline_id_number")
        ),
    )
    op.create_table(
        "release_work_items",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("release_id", ID, nullable=False),
        sa.Column("item", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_release_work_items_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_work_items")),
        sa.UniqueConstraint(
            "release_id", "item", name=op.f("uq_release_work_items_release_id_item")
        ),
    )
    op.create_index(
        op.f("ix_release_work_items_item"), "release_work_items", ["item"], unique=False
    )
    # Every definition known so far becomes a numbered revision, oldest first.
    revisions = sa.table(
        "pipeline_revisions",
        sa.column("id", ID),
        sa.column("pipeline_id", ID),
        sa.column("sha256", sa.String),
        sa.column("author", sa.String),
        sa.column("time", TIME),
    )
    stored = sa.table(
        "stored_revisions",
        sa.column("pipeline_id", ID),
        sa.column("number", sa.Integer),
        sa.column("sha256", sa.String),
        sa.column("author", sa.String),
        sa.column("time", TIME),
    )
    connection = op.get_bind()
    found = connection.execute(
        sa.select(
            revisions.c.pipeline_id, revisions.c.sha256, revisions.c.author, revisions.c.time
        ).order_by(revisions.c.pipeline_id, revisions.c.time, revisions.c.id)
    ).all()
    numbers: dict[int, int] = {}
    rows = []
    for pipeline_id, sha256, author, time in found:
        numbers[pipeline_id] = numbers.get(pipeline_id, 0) + 1
        rows.append(
            {
                "pipeline_id": pipeline_id,
                "number": numbers[pipeline_id],
                "sha256": sha256,
                "author": author,
                "time": time,
            }
        )
    if rows:
        op.bulk_insert(stored, rows)


def downgrade() -> None:
    op.drop_index(op.f("ix_release_work_items_item"), table_name="release_work_items")
    op.drop_table("release_work_items")
    op.drop_table("stored_revisions")
