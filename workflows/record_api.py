"""What the workflows write to the record (activities/record), and the retention run.

The ReleaseWorkflow and the StageWorkflow send their state through one control
activity, `record`, in the background: a write never blocks or fails a
deployment, and is retried while the database is away. Every row a write
carries has a version (microseconds of the writer's `workflow.now()` when it
took the snapshot, and never less than its last one plus one), so a retried
write changes nothing and an older write arriving late never overwrites a
newer one.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from workflows.audit import AuditEvent
from workflows.pipeline import Model
from workflows.release import ReleaseSpec, StageAttempt


class AttemptWrite(Model):
    """One deployment as its writer knows it, at `version`."""

    stage: str
    attempt: StageAttempt
    version: int


class RecordWrite(Model):
    """`record`: one write of a release's state, applied in this order: the release
    (its snapshot, the first time), its state, its deployments, its trail."""

    pipeline: str
    number: int
    spec: ReleaseSpec | None = Field(None, description="the snapshot; on the release's first write")
    state: str | None = Field(None, description="active, abandoned or closed")
    version: int = Field(0, description="the version of `state` (and of the release row)")
    attempts: list[AttemptWrite] = []
    events: list[AuditEvent] = Field([], description="events of the release's own trail")


class RetentionInput(Model):
    """RetentionWorkflow: one retention run (the daily Schedule starts it with no options)."""

    dry_run: bool = Field(False, description="count what would go, delete nothing")


class RetentionRequest(Model):
    """`apply_retention`: delete what each pipeline's retention no longer keeps."""

    now: datetime = Field(description="the time retention is measured from (the workflow's)")
    dry_run: bool = False


class RetentionResult(Model):
    """What a retention run deleted (or, with dry_run, would delete)."""

    releases: int = 0
    deployments: int = 0
    logs: int = Field(0, description="log files (each with its timestamp index)")
    kept: int = Field(
        0, description="releases past their age kept: the sum of the kept_* counts below"
    )
    kept_deployed: int = Field(0, description="deployed on a stage now")
    kept_last: int = Field(0, description="among the last keep_last deployments of a stage")
    kept_active: int = Field(
        0, description="active, with a deployment under way or its idle close not yet passed"
    )
    kept_unreadable: int = Field(
        0, description="their snapshot's retention could not be read (kept, never guessed)"
    )
    dry_run: bool = False
