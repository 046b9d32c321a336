"""The record's tables: what Stageflow keeps of every release, deployment and decision.

A pipeline has revisions (each definition a release was made from) and releases;
a release has one row per stage of its snapshot (`release_stages`: the stage's
latest recorded attempt and status, what lists and the status matrix read) and
its deployments; a deployment has its agent sessions, task runs (each try's log
key in `task_tries`), approvals (each decision in `approval_decisions`) and gate
outcomes; every audit event of the release and of its deployments is a row of
`audit_events`.

Rows written from a workflow's state carry `version`: an upsert replaces a row
only with a higher version, so a retried or replayed write changes nothing and
an older write never overwrites a newer one. Audit events and revisions never
change once written; their identity makes a second write a no-op.

One Alembic revision per change of these classes (activities/record/migrations).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    Interval,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from activities.record.database import UtcDateTime

# Constraint and index names the same on every database, so migrations can name them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Integer on SQLite: only INTEGER PRIMARY KEY is its rowid (auto-numbered).
Id = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON().with_variant(JSONB(), "postgresql")
Name = String(200)
Word = String(40)
Version = BigInteger()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UtcDateTime(), timedelta: Interval()}


def _id() -> Mapped[int]:
    return mapped_column(Id, primary_key=True, autoincrement=True)


def _parent(table: str) -> Mapped[int]:
    return mapped_column(Id, ForeignKey(f"{table}.id", ondelete="CASCADE"), nullable=False)


class PipelineRow(Base):
    """A pipeline, known from its first recorded release or revision."""

    __tablename__ = "pipelines"

    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(Name, unique=True)


class RevisionRow(Base):
    """One version of a pipeline's definition: its sha256, who brought it, when."""

    __tablename__ = "pipeline_revisions"
    __table_args__ = (UniqueConstraint("pipeline_id", "sha256"),)

    id: Mapped[int] = _id()
    pipeline_id: Mapped[int] = _parent("pipelines")
    sha256: Mapped[str] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(Name)
    time: Mapped[datetime]
    definition: Mapped[str | None] = mapped_column(Text, doc="the definition's text, when known")
    first_release: Mapped[int | None]


class StoredRevisionRow(Base):
    """One applied version of a pipeline (`pipeline apply`, or `release create FILE`):
    revision `number` of the pipeline, whose text is the RevisionRow of its sha256."""

    __tablename__ = "stored_revisions"
    __table_args__ = (UniqueConstraint("pipeline_id", "number"),)

    id: Mapped[int] = _id()
    pipeline_id: Mapped[int] = _parent("pipelines")
    number: Mapped[int] = mapped_column(Integer, doc="1, 2, … per pipeline")
    sha256: Mapped[str] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(Name)
    time: Mapped[datetime]
    source: Mapped[str | None] = mapped_column(
        Text, doc="the file it was applied from: relative artifact paths start there"
    )


class ReleaseRow(Base):
    """A release: its snapshot and what it shows in lists (state, aggregate status)."""

    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "number"),
        Index(None, "created_at", "id"),
        Index(None, "pipeline_id", "created_at", "id"),
        Index(None, "status", "created_at", "id"),
        Index(None, "created_by", "created_at", "id"),
    )

    id: Mapped[int] = _id()
    pipeline_id: Mapped[int] = _parent("pipelines")
    number: Mapped[int]
    name: Mapped[str] = mapped_column(Name)
    revision: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(Word, doc="active, abandoned, closed, terminated")
    status: Mapped[str] = mapped_column(Word, doc="release_status_of its stages and state")
    created_by: Mapped[str] = mapped_column(Name)
    created_at: Mapped[datetime]
    description: Mapped[str] = mapped_column(Text, default="")
    until: Mapped[str | None] = mapped_column(Name)
    artifacts: Mapped[list[dict[str, Any]]] = mapped_column(Json)
    variables: Mapped[dict[str, Any]] = mapped_column(
        Json, doc="pipeline then release-time values; a secret as its reference, never a value"
    )
    snapshot: Mapped[dict[str, Any]] = mapped_column(Json, doc="the ReleaseSpec")
    version: Mapped[int] = mapped_column(Version)


class ReleaseWorkItemRow(Base):
    """A work item a release brings (named by its commits): `stageflow where ITEM`."""

    __tablename__ = "release_work_items"
    __table_args__ = (UniqueConstraint("release_id", "item"), Index(None, "item"))

    id: Mapped[int] = _id()
    release_id: Mapped[int] = _parent("releases")
    item: Mapped[str] = mapped_column(Name)


class ReleaseStageRow(Base):
    """One stage of one release: its place, its trigger, its latest attempt's status."""

    __tablename__ = "release_stages"
    __table_args__ = (UniqueConstraint("release_id", "name"), Index(None, "status", "release_id"))

    id: Mapped[int] = _id()
    release_id: Mapped[int] = _parent("releases")
    position: Mapped[int]
    name: Mapped[str] = mapped_column(Name)
    trigger: Mapped[str] = mapped_column(Name, default="")
    status: Mapped[str] = mapped_column(Word)
    attempt: Mapped[int] = mapped_column(default=0, doc="the latest recorded attempt; 0: none")
    version: Mapped[int] = mapped_column(Version, doc="of the attempt's write that set status")


class DeploymentRow(Base):
    """One deployment: one attempt at one stage of one release."""

    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("release_id", "stage", "attempt"),
        Index(None, "status"),
        # What is deployed on a stage: its last succeeded deployment, found at once.
        Index(None, "pipeline_id", "stage", "ended_at"),
    )

    id: Mapped[int] = _id()
    release_id: Mapped[int] = _parent("releases")
    pipeline_id: Mapped[int] = _parent("pipelines")  # the release's, for what-is-where
    stage: Mapped[str] = mapped_column(Name)
    attempt: Mapped[int]
    workflow_id: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(Word)
    reason: Mapped[str] = mapped_column(Name, doc="after release, after <stage>, deploy, redeploy")
    triggered_by: Mapped[str] = mapped_column(Name)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    agent: Mapped[str | None] = mapped_column(Name, doc="the agent of the last session")
    message: Mapped[str] = mapped_column(Text, default="")
    waiting_until: Mapped[datetime | None]
    waiting_reason: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Version)


class AgentSessionRow(Base):
    """One lease of an agent for one job of a deployment."""

    __tablename__ = "agent_sessions"
    __table_args__ = (UniqueConstraint("deployment_id", "position"), Index(None, "agent"))

    id: Mapped[int] = _id()
    deployment_id: Mapped[int] = _parent("deployments")
    position: Mapped[int]
    job: Mapped[str] = mapped_column(Name)
    try_number: Mapped[int]
    agent: Mapped[str] = mapped_column(Name)
    leased_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    lost: Mapped[bool] = mapped_column(Boolean, default=False)
    handed_back: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Version)


class TaskRunRow(Base):
    """One task of one job in a deployment, as it ran (or did not)."""

    __tablename__ = "task_runs"
    __table_args__ = (UniqueConstraint("deployment_id", "position"),)

    id: Mapped[int] = _id()
    deployment_id: Mapped[int] = _parent("deployments")
    position: Mapped[int] = mapped_column(doc="the task's place in the deployment's task list")
    job: Mapped[str] = mapped_column(Name)
    task: Mapped[str] = mapped_column(Name)
    status: Mapped[str] = mapped_column(Word)
    exit_code: Mapped[int | None]
    tries: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime | None]
    duration: Mapped[timedelta | None]
    agent: Mapped[str | None] = mapped_column(Name)
    log: Mapped[str | None] = mapped_column(String(1000), doc="log store key of the last try")
    message: Mapped[str] = mapped_column(Text, default="")
    continue_on_error: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Version)


class TaskTryRow(Base):
    """One try of a task run, with its own log."""

    __tablename__ = "task_tries"
    __table_args__ = (UniqueConstraint("task_run_id", "number"),)

    id: Mapped[int] = _id()
    task_run_id: Mapped[int] = _parent("task_runs")
    number: Mapped[int] = mapped_column(doc="1 for the first try")
    log: Mapped[str] = mapped_column(String(1000), doc="log store key")
    version: Mapped[int] = mapped_column(Version)


class ApprovalRow(Base):
    """The pre- or post-deployment approval of a deployment."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("deployment_id", "phase"), Index(None, "status"))

    id: Mapped[int] = _id()
    deployment_id: Mapped[int] = _parent("deployments")
    phase: Mapped[str] = mapped_column(String(8))
    policy: Mapped[str] = mapped_column(Word)
    approvers: Mapped[list[str]] = mapped_column(Json)
    status: Mapped[str] = mapped_column(Word)
    deadline: Mapped[datetime | None]
    done_entries: Mapped[list[int]] = mapped_column(Json)
    defer_until: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Version)


class DecisionRow(Base):
    """One decision on an approval, accepted or refused and why."""

    __tablename__ = "approval_decisions"
    __table_args__ = (UniqueConstraint("approval_id", "position"),)

    id: Mapped[int] = _id()
    approval_id: Mapped[int] = _parent("approvals")
    position: Mapped[int]
    time: Mapped[datetime]
    by: Mapped[str] = mapped_column("decided_by", Name)
    action: Mapped[str] = mapped_column(Word)
    comment: Mapped[str] = mapped_column(Text, default="")
    defer_until: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(Word)
    reason: Mapped[str] = mapped_column(Text, default="")
    request_id: Mapped[str | None] = mapped_column(Name)
    version: Mapped[int] = mapped_column(Version)


class GateRow(Base):
    """The pre- or post-deployment gates of a deployment: their outcome and samples."""

    __tablename__ = "gate_outcomes"
    __table_args__ = (UniqueConstraint("deployment_id", "phase"),)

    id: Mapped[int] = _id()
    deployment_id: Mapped[int] = _parent("deployments")
    phase: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(Word)
    started_at: Mapped[datetime]
    deadline: Mapped[datetime]
    healthy_since: Mapped[datetime | None]
    ignored: Mapped[list[str]] = mapped_column(Json)
    evaluation_count: Mapped[int] = mapped_column(default=0)
    evaluations: Mapped[list[dict[str, Any]]] = mapped_column(
        Json, doc="the last samples the workflow kept, each check's outcome"
    )
    version: Mapped[int] = mapped_column(Version)


class AuditEventRow(Base):
    """One line of a release's audit trail (its own, or one of its deployments')."""

    __tablename__ = "audit_events"
    __table_args__ = (
        UniqueConstraint("release_id", "event_id"),
        Index(None, "release_id", "time"),
        # A deployment's events; what ON DELETE CASCADE of a deployment looks them up by.
        Index(None, "deployment_id"),
    )

    id: Mapped[int] = _id()
    release_id: Mapped[int] = _parent("releases")
    deployment_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("deployments.id", ondelete="CASCADE"), doc="None: the release's own trail"
    )
    event_id: Mapped[str] = mapped_column(String(64), doc="see writes.event_id")
    time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(Name)
    action: Mapped[str] = mapped_column(Name)
    stage: Mapped[str | None] = mapped_column(Name)
    outcome: Mapped[str] = mapped_column(Word)
    detail: Mapped[str] = mapped_column(Text, default="")
    request_id: Mapped[str | None] = mapped_column(Name)
