"""What the steps of one deployment share: its input, the attempt people see, the
audit trail, who decides, and the status kept in the StageflowStatus attribute."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import Field
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.audit import AuditTrail
    from workflows.names import SA_STATUS
    from workflows.pipeline import Model, Stage
    from workflows.release import CancelRequest, DeployNow, ReleaseSpec, StageAttempt, StageStatus
    from workflows.who_may import Deciders


class StageInput(Model):
    """Input of a StageWorkflow: which stage of which release, and why it runs."""

    spec: ReleaseSpec
    stage: str
    attempt: int
    triggered_by: str
    reason: str
    approved_upstream: list[str] = Field(
        [], description="who approved the upstream stages (skip_if_approved_previous_stage)"
    )


class Rejected(Exception):
    """A person or a gate said no (or time ran out): the deployment is rejected."""


@dataclass
class PendingIntervention:
    """A manual intervention waiting for a person, and what they decided."""

    task: str
    approvers: list[str]
    # A manual intervention task, or a failed task under the stage's `on_failure`.
    kind: Literal["manual", "failure"] = "manual"
    decision: Literal["resume", "reject", "retry", "skip", "fail"] | None = None
    by: str = ""
    comment: str = ""


class Deployment:
    """One deployment's shared state; every step reads and changes it here."""

    def __init__(self, input: StageInput, attempt: StageAttempt) -> None:
        self.input = input
        self.spec: ReleaseSpec = input.spec
        self.stage: Stage = input.spec.pipeline.stage(input.stage)
        self.attempt = attempt
        self.trail = AuditTrail(attempt.events, workflow.now, stage=self.stage.name)
        self.deciders = Deciders(self.spec.pipeline, self.stage, self.spec.created_by)
        self.deploy_now: DeployNow | None = None  # an approver ended the deferral
        self.cancel: CancelRequest | None = None
        self.intervention: PendingIntervention | None = None  # what a person may decide now

    @property
    def task_queue(self) -> str:
        """The control queue: this workflow's own (control activities run there)."""
        return workflow.info().task_queue

    def set_status(self, status: StageStatus) -> None:
        if self.attempt.status == status:
            return  # the parent started us with this status already
        self.attempt.status = status
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])

    def wait(self, until: datetime | None, reason: str = "") -> None:
        """Show what the deployment waits for (a schedule, a deferral, a person) and until when."""
        self.attempt.waiting_until, self.attempt.waiting_reason = until, reason
