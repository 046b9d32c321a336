"""Inputs and results of the agent activities, and the lease signal.

One input model and one result model per activity, with fields that can grow.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from workflows.pipeline import Model, SecretRef, Task
from workflows.release import ResolvedArtifact

LEASE_GRANTED_SIGNAL = "lease_granted"


def log_prefix(pipeline: str, number: int, stage: str, attempt: int, job: str) -> str:
    """The log store folder of one job of one deployment: `webapp/42/dev/1/deploy`."""
    return f"{pipeline}/{number}/{stage}/{attempt}/{job}"


class JobContext(Model):
    """Which job of which deployment an agent is working for."""

    pipeline: str
    release: str
    number: int
    stage: str
    attempt: int
    job: str
    lease_id: str = Field(description="unique per job try: <workflow id>#<job>#<try>")

    @property
    def log_prefix(self) -> str:
        """Where this job's logs go in the log store."""
        return log_prefix(self.pipeline, self.number, self.stage, self.attempt, self.job)

    def environment(self) -> dict[str, str]:
        return {
            "STAGEFLOW_PIPELINE": self.pipeline,
            "STAGEFLOW_RELEASE": self.release,
            "STAGEFLOW_RELEASE_NUMBER": str(self.number),
            "STAGEFLOW_STAGE": self.stage,
            "STAGEFLOW_ATTEMPT": str(self.attempt),
            "STAGEFLOW_JOB": self.job,
        }


class LeaseRequest(Model):
    """`lease_agent`: hold one agent of a pool for one job."""

    context: JobContext


class LeaseGranted(Model):
    """Signal from the leased agent to the StageWorkflow: run the job's steps here."""

    lease_id: str
    agent_id: str
    agent_name: str
    task_queue: str


class LeaseResult(Model):
    agent_id: str
    ended: str = Field(
        description="completed (the job is done), canceled, or handed_back (the agent is "
        "draining: the job's remaining tasks go to another agent)"
    )


class DownloadRequest(Model):
    """`download_artifacts`: put every artifact of the release in the job's work dir."""

    context: JobContext
    artifacts: list[ResolvedArtifact]


class DownloadedArtifact(Model):
    alias: str
    version: str
    path: str
    cached: bool
    bytes: int
    seconds: float


class DownloadResult(Model):
    artifacts: list[DownloadedArtifact] = []


class RunTaskRequest(Model):
    """`run_task`: run one task as a subprocess (or in-process for http/copy/template)."""

    context: JobContext
    task: Task
    index: int = Field(description="position of the task in its job, from 1")
    try_number: int = 1
    variables: dict[str, str] = {}
    secrets: dict[str, SecretRef] = Field(
        {}, description="resolved on the agent; values never leave it"
    )
    log_key: str | None = Field(None, description="ship the log to this log store key")
    end_lease: Literal["never", "always", "if_succeeded"] = Field(
        "never", description="end the job's lease when done: the job's last task"
    )


class RunTaskResult(Model):
    succeeded: bool
    exit_code: int | None = None
    timed_out: bool = False
    duration: timedelta
    log_path: str = Field(description="the log on the agent, for ship_logs")
    log_bytes: int = 0
    message: str = ""
    log_key: str | None = Field(None, description="set when run_task shipped the log itself")
    lease_ended: bool = Field(False, description="the agent ended the lease after this task")
    interrupted: bool = Field(
        False,
        description="the agent was draining and stopped the task at its drain timeout: "
        "not the task's failure; it runs again, as a new try, on another agent",
    )


class TaskProgress(Model):
    """Heartbeat details of a running task: the Web UI and `logs --follow` show it."""

    bytes: int
    last_lines: list[str] = []
    log_path: str


class ShipLogsRequest(Model):
    context: JobContext
    log_path: str
    key: str = Field(description="the log store key to write")


class ShipLogsResult(Model):
    key: str
    bytes: int


class CleanupRequest(Model):
    """`cleanup`: remove the job's work dir and end the lease at once."""

    context: JobContext
