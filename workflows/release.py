"""Releases: the immutable snapshot, stage statuses, status views and the audit trail.

Plain pydantic models shared by the workflows, the activities and the CLI.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import Field

from workflows.approval_policy import ApprovalState
from workflows.audit import AuditEvent
from workflows.changes import ReleaseChanges
from workflows.gates import GateState
from workflows.pipeline import Model, Pipeline, SecretRef, Stage, VariableValue
from workflows.stage_dag import ancestors


class StageStatus(StrEnum):
    """What a person sees for a stage of a release."""

    NOT_DEPLOYED = "not_deployed"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    PARTIALLY_SUCCEEDED = "partially_succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    SKIPPED = "skipped"
    WAITING_FOR_APPROVAL = "waiting_for_approval"
    DEFERRED = "deferred"
    EVALUATING_GATES = "evaluating_gates"
    SCHEDULED = "scheduled"
    WAITING_FOR_INTERVENTION = "waiting_for_intervention"
    REJECTED = "rejected"
    TERMINATED = "terminated"  # ended from outside Stageflow (e.g. `temporal workflow terminate`)

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {
        StageStatus.SUCCEEDED,
        StageStatus.PARTIALLY_SUCCEEDED,
        StageStatus.FAILED,
        StageStatus.CANCELED,
        StageStatus.SKIPPED,
        StageStatus.REJECTED,
        StageStatus.TERMINATED,
    }
)

# Statuses in which a deployment waits on a person.
WAITING_ON_PEOPLE = frozenset(
    {StageStatus.WAITING_FOR_APPROVAL, StageStatus.WAITING_FOR_INTERVENTION, StageStatus.DEFERRED}
)


class TaskStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELED = "canceled"
    IN_PROGRESS = "in_progress"
    PENDING = "pending"


class ResolvedArtifact(Model):
    """An artifact pinned to one version when the release was created."""

    alias: str
    type: str
    version: str
    source: str = Field(description="absolute drop path, download URL or repository")
    location: str | None = Field(
        None, description="local: the version's folder or archive inside the drop"
    )
    commit: str | None = None
    sha256: str | None = None
    extract: bool = True


class ReleaseSpec(Model):
    """The immutable snapshot a release deploys: definition, versions, variables."""

    pipeline: Pipeline
    number: int
    name: str
    artifacts: list[ResolvedArtifact] = []
    variables: dict[str, str] = Field({}, description="release-time values (--var K=V)")
    until: str | None = None
    description: str = ""
    created_by: str
    created_at: datetime
    revision: str = Field(description="sha256 of the pipeline definition")
    changes: ReleaseChanges | None = Field(
        None, description="the commits and work items its git artifacts bring"
    )

    @property
    def reference(self) -> str:
        return f"{self.pipeline.name}/{self.number}"

    @property
    def work_items(self) -> list[str]:
        return self.changes.work_items if self.changes else []


def merged_variables(spec: ReleaseSpec, stage: Stage) -> dict[str, VariableValue]:
    """Pipeline, then stage, then release-time variables; later ones win."""
    merged: dict[str, VariableValue] = dict(spec.pipeline.variables)
    merged.update(stage.variables)
    merged.update(spec.variables)
    return merged


def split_secrets(
    variables: dict[str, VariableValue],
) -> tuple[dict[str, str], dict[str, SecretRef]]:
    plain = {k: v for k, v in variables.items() if isinstance(v, str)}
    secrets = {k: v for k, v in variables.items() if isinstance(v, SecretRef)}
    return plain, secrets


class TaskRun(Model):
    """One task of one job in one deployment, as it ran (or did not)."""

    job: str
    task: str
    status: TaskStatus = TaskStatus.PENDING
    exit_code: int | None = None
    tries: int = 0
    started_at: datetime | None = None
    duration: timedelta | None = None
    agent: str | None = None
    log: str | None = Field(None, description="log store key of the last try's log")
    logs: list[str] = Field([], description="log store keys of every try, in order")
    message: str = ""
    continue_on_error: bool = False


class AgentSession(Model):
    """One lease of an agent for one job; a lost agent means another session."""

    job: str
    try_number: int
    agent: str
    leased_at: datetime
    ended_at: datetime | None = None
    lost: bool = False
    handed_back: bool = Field(False, description="the agent was draining and gave the job back")


class StageAttempt(Model):
    """One deployment of a stage."""

    attempt: int
    status: StageStatus
    workflow_id: str
    triggered_by: str
    reason: str = Field(description="after_release, after <stage>, deploy, redeploy")
    started_at: datetime
    ended_at: datetime | None = None
    tasks: list[TaskRun] = []
    agents: list[AgentSession] = []
    message: str = ""
    approvals: list[ApprovalState] = []
    gates: list[GateState] = []
    waiting_until: datetime | None = Field(
        None, description="when a schedule, freeze or deferral wait ends"
    )
    waiting_reason: str = ""
    slot_granted_at: datetime | None = Field(
        None, description="a queued stage: when this deployment was given its slot"
    )
    events: list[AuditEvent] = Field([], description="decisions made on this deployment")

    def approval(self, phase: str) -> ApprovalState | None:
        return next((a for a in self.approvals if a.phase == phase), None)


def held_stages(upstream: dict[str, list[str]], holds: list[Hold]) -> dict[str, tuple[Hold, str]]:
    """Each stage a hold keeps the release from (the held stage and every stage after
    it), with the hold and what people see: `held by alice on qa: bug 12`."""
    held = {}
    for stage in upstream:
        blocking = {stage} | ancestors(upstream, stage)
        hold = next((h for h in holds if h.stage in blocking), None)
        if hold is not None:
            held[stage] = (
                hold,
                f"held by {hold.by}"
                + (f" on {hold.stage}" if hold.stage != stage else "")
                + (f": {hold.reason}" if hold.reason else ""),
            )
    return held


def holds_in(events: list[AuditEvent]) -> list[Hold]:
    """The holds in force by a release's trail: accepted holds not lifted since."""
    holds: dict[str, Hold] = {}
    for event in events:
        if event.outcome != "accepted" or event.stage is None:
            continue
        if event.action == "hold":
            holds[event.stage] = Hold(
                stage=event.stage, by=event.actor, reason=event.detail, time=event.time
            )
        elif event.action == "unhold":
            holds.pop(event.stage, None)
    return list(holds.values())


class StageView(Model):
    name: str
    status: StageStatus = StageStatus.NOT_DEPLOYED
    trigger: str = ""
    held: str = Field("", description="why the release may not deploy here now (a hold)")
    attempts: list[StageAttempt] = []

    @property
    def latest(self) -> StageAttempt | None:
        return self.attempts[-1] if self.attempts else None


class ReleaseStatus(Model):
    """The `status` query of a ReleaseWorkflow."""

    pipeline: str
    number: int
    name: str
    state: str = Field(description="active, abandoned or closed")
    status: str = Field(description="aggregate of the stages")
    created_by: str
    created_at: datetime
    description: str = ""
    until: str | None = None
    artifacts: list[ResolvedArtifact] = []
    stages: list[StageView] = []

    def stage(self, name: str) -> StageView:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


def release_status_of(stages: list[StageView], state: str) -> str:
    """One word for the whole release, for lists and the StageflowStatus attribute."""
    if state != "active":
        return state
    statuses = [stage.status for stage in stages]
    if any(s in WAITING_ON_PEOPLE for s in statuses):
        return "waiting"
    if any(not s.is_final and s != StageStatus.NOT_DEPLOYED for s in statuses):
        return "in_progress"
    if any(s == StageStatus.FAILED for s in statuses):
        return "failed"
    if any(s == StageStatus.TERMINATED for s in statuses):
        return "terminated"
    if any(s == StageStatus.REJECTED for s in statuses):
        return "rejected"
    if any(s == StageStatus.CANCELED for s in statuses):
        return "canceled"
    if any(s == StageStatus.PARTIALLY_SUCCEEDED for s in statuses):
        return "partially_succeeded"
    if statuses and all(s == StageStatus.SUCCEEDED for s in statuses):
        return "succeeded"
    if any(s == StageStatus.SUCCEEDED for s in statuses):
        return "partially_deployed"
    return "not_deployed"


def end_from_outside(status: ReleaseStatus, how: str) -> None:
    """A release workflow terminated (or timed out) in Temporal, not by Stageflow: say
    so, and end what it shows as still running."""
    status.state = status.status = how
    for view in status.stages:
        latest = view.latest
        if latest is not None and not latest.status.is_final:
            view.status = latest.status = StageStatus.TERMINATED
            latest.message = f"the release workflow was {how.replace('_', ' ')} in Temporal"


# --- updates ------------------------------------------------------------------------


class DeployRequest(Model):
    """`deploy` / `redeploy` / `rollback` update: deploy one stage of the release now."""

    stage: str
    by: str
    request_id: str | None = None
    detail: str = Field("", description="rollback: what it rolls back from")


class HoldRequest(Model):
    """`hold` / `unhold` update: keep the release from being deployed to `stage` and the
    stages after it, or let it go again."""

    stage: str
    by: str
    reason: str = ""
    request_id: str | None = None


class Hold(Model):
    """A hold on a stage of a release: who, why, since when."""

    stage: str
    by: str
    reason: str
    time: datetime


class AbandonRequest(Model):
    by: str
    reason: str = ""
    request_id: str | None = None


class CancelRequest(Model):
    """`cancel` update of a StageWorkflow."""

    by: str
    reason: str = ""
    request_id: str | None = None


class LateDecision(Model):
    """`late_decision` update of a ReleaseWorkflow: a decision on a stage whose
    deployment has ended, answered (refused) by the release and kept in its trail."""

    stage: str
    action: str = Field(description="approve, reject, resume, deploy_now, ignore_gate, cancel")
    by: str
    request_id: str | None = None


class GateIgnore(Model):
    """`ignore_gate` update: an approver lets one gate check count as healthy."""

    check: str
    by: str
    groups: list[str] = Field([], description="identity-provider groups `by` signed in with")
    phase: str = "pre"
    request_id: str | None = None


class DeployNow(Model):
    """`deploy_now` update: an approver ends a deferral early."""

    by: str
    groups: list[str] = Field([], description="identity-provider groups `by` signed in with")
    request_id: str | None = None
