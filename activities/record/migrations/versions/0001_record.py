"""The record: pipelines, releases, deployments, tasks, approvals, gates, audit events.

The types are written out here, not imported from activities.record.tables, so
this revision creates the same schema whatever the models become later.

Revision ID: 0001
Revises:
Create Date: 2026-12-01 21:17:45.044232
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipelines")),
        sa.UniqueConstraint("name", name=op.f("uq_pipelines_name")),
    )
    op.create_table(
        "pipeline_revisions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("pipeline_id", ID, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("author", sa.String(length=200), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("definition", sa.Text(), nullable=True),
        sa.Column("first_release", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["pipeline_id"],
            ["pipelines.id"],
            name=op.f("fk_pipeline_revisions_pipeline_id_pipelines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_revisions")),
        sa.UniqueConstraint(
            "pipeline_id", "sha256", name=op.f("uq_pipeline_revisions_pipeline_id_sha256")
        ),
    )
    op.create_table(
        "releases",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("pipeline_id", ID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("until", sa.String(length=200), nullable=True),
        sa.Column("artifacts", JSON, nullable=False),
        sa.Column("variables", JSON, nullable=False),
        sa.Column("snapshot", JSON, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["pipeline_id"],
            ["pipelines.id"],
            name=op.f("fk_releases_pipeline_id_pipelines"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_releases")),
        sa.UniqueConstraint("pipeline_id", "number", name=op.f("uq_releases_pipeline_id_number")),
    )
    op.create_index(op.f("ix_releases_created_at_id"), "releases", ["created_at", "id"])
    op.create_index(
        op.f("ix_releases_created_by_created_at_id"), "releases", ["created_by", "created_at", "id"]
    )
    op.create_index(
        op.f("ix_releases_pipeline_id_created_at_id"),
        "releases",
        ["pipeline_id", "created_at", "id"],
    )
    op.create_index(
        op.f("ix_releases_status_created_at_id"), "releases", ["status", "created_at", "id"]
    )
    op.create_table(
        "deployments",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("release_id", ID, nullable=False),
        sa.Column("stage", sa.String(length=200), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(length=500), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("triggered_by", sa.String(length=200), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.Column("agent", sa.String(length=200), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("waiting_until", TIME, nullable=True),
        sa.Column("waiting_reason", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_deployments_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint(
            "release_id", "stage", "attempt", name=op.f("uq_deployments_release_id_stage_attempt")
        ),
    )
    op.create_index(op.f("ix_deployments_status"), "deployments", ["status"])
    op.create_table(
        "release_stages",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("release_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("trigger", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_release_stages_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_stages")),
        sa.UniqueConstraint("release_id", "name", name=op.f("uq_release_stages_release_id_name")),
    )
    op.create_index(
        op.f("ix_release_stages_status_release_id"), "release_stages", ["status", "release_id"]
    )
    op.create_table(
        "agent_sessions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("deployment_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("leased_at", TIME, nullable=False),
        sa.Column("ended_at", TIME, nullable=True),
        sa.Column("lost", sa.Boolean(), nullable=False),
        sa.Column("handed_back", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_agent_sessions_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_sessions")),
        sa.UniqueConstraint(
            "deployment_id", "position", name=op.f("uq_agent_sessions_deployment_id_position")
        ),
    )
    op.create_index(op.f("ix_agent_sessions_agent"), "agent_sessions", ["agent"])
    op.create_table(
        "approvals",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("deployment_id", ID, nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("policy", sa.String(length=40), nullable=False),
        sa.Column("approvers", JSON, nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("deadline", TIME, nullable=True),
        sa.Column("done_entries", JSON, nullable=False),
        sa.Column("defer_until", TIME, nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_approvals_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint(
            "deployment_id", "phase", name=op.f("uq_approvals_deployment_id_phase")
        ),
    )
    op.create_index(op.f("ix_approvals_status"), "approvals", ["status"])
    op.create_table(
        "audit_events",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("release_id", ID, nullable=False),
        sa.Column("deployment_id", ID, nullable=True),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=200), nullable=False),
        sa.Column("stage", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_audit_events_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.id"],
            name=op.f("fk_audit_events_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
        sa.UniqueConstraint(
            "release_id", "event_id", name=op.f("uq_audit_events_release_id_event_id")
        ),
    )
    op.create_index(op.f("ix_audit_events_release_id_time"), "audit_events", ["release_id", "time"])
    op.create_table(
        "gate_outcomes",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("deployment_id", ID, nullable=False),
        sa.Column("phase", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("deadline", TIME, nullable=False),
        sa.Column("healthy_since", TIME, nullable=True),
        sa.Column("ignored", JSON, nullable=False),
        sa.Column("evaluation_count", sa.Integer(), nullable=False),
        sa.Column("evaluations", JSON, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_gate_outcomes_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gate_outcomes")),
        sa.UniqueConstraint(
            "deployment_id", "phase", name=op.f("uq_gate_outcomes_deployment_id_phase")
        ),
    )
    op.create_table(
        "task_runs",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("deployment_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("job", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("duration", sa.Interval(), nullable=True),
        sa.Column("agent", sa.String(length=200), nullable=True),
        sa.Column("log", sa.String(length=1000), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("continue_on_error", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_task_runs_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_runs")),
        sa.UniqueConstraint(
            "deployment_id", "position", name=op.f("uq_task_runs_deployment_id_position")
        ),
    )
    op.create_table(
        "approval_decisions",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("approval_id", ID, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("defer_until", TIME, nullable=True),
        sa.Column("outcome", sa.String(length=40), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=200), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["approvals.id"],
            name=op.f("fk_approval_decisions_approval_id_approvals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_decisions")),
        sa.UniqueConstraint(
            "approval_id", "position", name=op.f("uq_approval_decisions_approval_id_position")
        ),
    )
    op.create_table(
        "task_tries",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("task_run_id", ID, nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("log", sa.String(length=1000), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_run_id"],
            ["task_runs.id"],
            name=op.f("fk_task_tries_task_run_id_task_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_tries")),
        sa.UniqueConstraint("task_run_id", "number", name=op.f("uq_task_tries_task_run_id_number")),
    )


def downgrade() -> None:
    op.drop_table("task_tries")
    op.drop_table("approval_decisions")
    op.drop_table("task_runs")
    op.drop_table("gate_outcomes")
    op.drop_index(op.f("ix_audit_events_release_id_time"), table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_index(op.f("ix_approvals_status"), table_name="approvals")
    op.drop_table("approvals")
    op.drop_index(op.f("ix_agent_sessions_agent"), table_name="agent_sessions")
    op.drop_table("agent_sessions")
    op.drop_index(op.f("ix_release_stages_status_release_id"), table_name="release_stages")
    op.drop_table("release_stages")
    op.drop_index(op.f("ix_deployments_status"), table_name="deployments")
    op.drop_table("deployments")
    op.drop_index(op.f("ix_releases_status_created_at_id"), table_name="releases")
    op.drop_index(op.f("ix_releases_pipeline_id_created_at_id"), table_name="releases")
    op.drop_index(op.f("ix_releases_created_by_created_at_id"), table_name="releases")
    op.drop_index(op.f("ix_releases_created_at_id"), table_name="releases")
    op.drop_table("releases")
    op.drop_table("pipeline_revisions")
    op.drop_table("pipelines")
