"""What the record's queries answer, beside the workflows' own models (ReleaseStatus,
StageAttempt, AuditEvent), which they return where those fit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import Field

from workflows.audit import AuditEvent
from workflows.pipeline import Model
from workflows.release import ReleaseStatus, StageAttempt, StageStatus


class Waiting(Model):
    """One deployment waiting on a person: an approval, an intervention, a deferral."""

    pipeline: str
    number: int
    release: str = Field(description="the release's name")
    stage: str
    attempt: StageAttempt
    kind: str = Field(description="approval, intervention or deferred")
    phase: str = Field(description="pre or post for an approval and a deferral; '' otherwise")
    approvers: list[str] = Field(description="the entries still needed, as the pipeline names them")
    users: list[str] = Field(description="who may act now, groups expanded")
    groups: list[str] = Field(
        [], description="identity-provider groups whose members may act now (oidc:NAME)"
    )
    deadline: datetime | None = None

    @property
    def reference(self) -> str:
        return f"{self.pipeline}/{self.number}"

    def waits_on(self, user: str, groups: Sequence[str] = ()) -> bool:
        """Whether this person may act on it now: by name, or through a group they
        signed in with."""
        return user in self.users or any(g in groups for g in self.groups)


class Deployed(Model):
    """One deployment of a stage, in what-is-where views."""

    number: int
    release: str = Field(description="the release's name")
    attempt: int
    status: StageStatus
    triggered_by: str
    reason: str = Field("", description="after release, after <stage>, deploy, redeploy, rollback")
    started_at: datetime
    ended_at: datetime | None = None


class StageDeployments(Model):
    """What is on one stage: the last successful deployment, and any under way."""

    stage: str
    deployed: Deployed | None = Field(
        None, description="the last succeeded (or partially succeeded) deployment, by end time"
    )
    previous: list[Deployed] = Field(
        [], description="the releases that were on the stage before, newest first, each once"
    )
    in_progress: list[Deployed] = Field(
        [], description="latest attempts of active releases that have not ended, newest first"
    )


class StatusMatrix(Model):
    """`stageflow status PIPELINE`: stages × recent releases, and what is where."""

    pipeline: str
    stages: list[str] = Field(description="the newest release's stages, then older ones")
    releases: list[ReleaseStatus] = Field(
        description="newest first; each stage with its latest attempt only (no tasks)"
    )
    deployed: list[StageDeployments]


class RecordedRevision(Model):
    """One version of a pipeline's definition."""

    sha256: str
    author: str
    time: datetime
    first_release: int | None = None
    definition: str | None = None


class TrailEvent(AuditEvent):
    """A line of a release's audit trail, with how its person signed in when the request
    came through the API (`token <id>`, `oidc <issuer>`)."""

    via: str | None = None
