"""Inputs and results of the control activities (run by the control worker or,
for script gate checks, by an agent of the check's pool)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from workflows.changes import ReleaseChanges
from workflows.pipeline import Freeze, GateCheck, Model, Schedule
from workflows.release import ResolvedArtifact


class StartPlanRequest(Model):
    """`plan_start`: when may this deployment start, given its schedule and freezes?"""

    schedule: Schedule | None = None
    freezes: list[Freeze] = []
    now: datetime = Field(description="the workflow's time (workflow.now()), UTC")


class StartWait(Model):
    reason: Literal["schedule", "freeze"]
    until: datetime
    detail: str = Field(description="e.g. 'next window mon-fri 03:00 Europe/Berlin'")


class StartPlan(Model):
    """The earliest start at or after `now` in a schedule window and outside every freeze."""

    start_at: datetime
    waits: list[StartWait] = Field([], description="what was waited for, in order")


class Recipient(Model):
    user: str
    email: str


class ReleaseSummary(Model):
    pipeline: str
    number: int
    name: str
    description: str = ""
    created_by: str
    artifacts: list[ResolvedArtifact] = []
    changes: ReleaseChanges | None = None


class NotificationRequest(Model):
    """`send_notification`: one mail to each recipient."""

    kind: Literal["approval_pending", "intervention_pending", "outcome"]
    recipients: list[Recipient]
    release: ReleaseSummary
    stage: str
    attempt: int
    phase: Literal["pre", "post"] | None = None
    status: str | None = Field(None, description="the outcome, for kind=outcome")
    deadline: datetime | None = None
    approvers: list[str] = []
    command: str | None = Field(None, description="the exact command that acts on this mail")
    reject_command: str | None = None
    instructions: str | None = None
    message: str = ""


class NotificationResult(Model):
    delivered_to: list[str] = []
    via: Literal["smtp", "outbox"]
    location: str = Field("", description="SMTP host:port, or the outbox directory")


class CheckRequest(Model):
    """`check_http` / `run_check`: evaluate one gate check once."""

    check: GateCheck
    variables: dict[str, str] = {}


class CheckResult(Model):
    healthy: bool
    reason: str


class EndedRequest(Model):
    """`ended_workflows`: which of these workflows are no longer running?"""

    workflow_ids: list[str]


class EndedResult(Model):
    ended: list[str] = Field([], description="closed (any way) or unknown to Temporal")
