"""What the `stageflow` command line does with releases, as plain async functions.

Each takes a connected client and returns models; the CLI only parses and renders.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client, WithStartWorkflowOperation, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from starter.artifacts import resolve_artifacts
from starter.pipeline_loader import load_pipeline
from workflows.names import (
    CONTROL_TASK_QUEUE,
    pipeline_workflow_id,
    release_workflow_id,
)
from workflows.pipeline_workflow import (
    CreatedRelease,
    NewRelease,
    PipelineState,
    PipelineWorkflow,
)
from workflows.release import (
    AbandonRequest,
    AuditEvent,
    CancelRequest,
    DeployRequest,
    ReleaseStatus,
    StageAttempt,
    StageStatus,
)
from workflows.release_workflow import ReleaseWorkflow
from workflows.stage_workflow import StageWorkflow


class ReleaseNotFound(LookupError):
    """No release with that reference: a user's mistake, exit code 2."""


class StageNotFound(LookupError):
    pass


@dataclass(frozen=True)
class ReleaseRef:
    pipeline: str
    number: int

    @classmethod
    def parse(cls, text: str) -> ReleaseRef:
        pipeline, _, number = text.rpartition("/")
        if not pipeline or not number.isdigit():
            raise ValueError(
                f"{text!r} is not a release reference: use PIPELINE/NUMBER, e.g. webapp/42"
            )
        return cls(pipeline, int(number))

    @property
    def workflow_id(self) -> str:
        return release_workflow_id(self.pipeline, self.number)

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.number}"


def parse_vars(pairs: list[str], what: str = "--var") -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r}: use KEY=VALUE")
        values[key] = value
    return values


async def create_release(
    client: Client,
    pipeline_file: Path,
    *,
    user: str,
    artifact_versions: dict[str, str] | None = None,
    variables: dict[str, str] | None = None,
    until: str | None = None,
    description: str = "",
    task_queue: str = CONTROL_TASK_QUEUE,
) -> CreatedRelease:
    """Validate the pipeline, pin artifact versions and create the numbered release.

    Everything that can be wrong with the input is checked before any workflow
    starts: an invalid pipeline never becomes a release.
    """
    pipeline, revision = load_pipeline(pipeline_file)
    if until is not None and until not in pipeline.stage_names:
        raise StageNotFound(
            f"--until {until!r}: no such stage in {pipeline.name} "
            f"(stages: {', '.join(pipeline.stage_names)})"
        )
    artifacts = resolve_artifacts(
        pipeline.artifacts, pipeline_file.resolve(), artifact_versions or {}
    )
    request = NewRelease(
        pipeline=pipeline,
        revision=revision,
        artifacts=artifacts,
        variables=variables or {},
        until=until,
        description=description,
        created_by=user,
        request_id=uuid.uuid4().hex,
    )
    return await client.execute_update_with_start_workflow(
        PipelineWorkflow.create_release,
        request,
        start_workflow_operation=WithStartWorkflowOperation(
            PipelineWorkflow.run,
            PipelineState(name=pipeline.name),
            id=pipeline_workflow_id(pipeline.name),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"pipeline {pipeline.name}: release numbers and revisions",
        ),
    )


def release_handle(
    client: Client, ref: ReleaseRef
) -> WorkflowHandle[ReleaseWorkflow, ReleaseStatus]:
    return client.get_workflow_handle_for(ReleaseWorkflow.run, ref.workflow_id)


async def release_status(client: Client, ref: ReleaseRef, live: bool = True) -> ReleaseStatus:
    """The release's stages; with `live`, running stages carry their tasks as they stand."""
    try:
        status = await release_handle(client, ref).query(ReleaseWorkflow.status)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ReleaseNotFound(f"release {ref} not found") from err
        raise
    if live:
        for view in status.stages:
            latest = view.latest
            if latest is not None and not latest.status.is_final:
                progress = await stage_progress(client, latest.workflow_id)
                if progress is not None:
                    # Until the release has taken in a finished child (and started what
                    # follows it), the stage still counts as in progress.
                    view.status = progress.status if not progress.status.is_final else view.status
                    view.attempts[-1] = progress.model_copy(update={"status": view.status})
    return status


async def stage_progress(client: Client, workflow_id: str) -> StageAttempt | None:
    try:
        return await client.get_workflow_handle_for(StageWorkflow.run, workflow_id).query(
            StageWorkflow.progress
        )
    except RPCError:
        return None  # not started yet, or just finished: the release knows


async def release_history(client: Client, ref: ReleaseRef) -> list[AuditEvent]:
    await release_status(client, ref, live=False)  # a clear error for an unknown release
    return await release_handle(client, ref).query(ReleaseWorkflow.history)


async def request_deploy(
    client: Client, ref: ReleaseRef, stage: str, user: str, *, redeploy: bool = False
) -> str:
    """Signal deploy/redeploy; returns the request id to find the outcome in history."""
    status = await release_status(client, ref, live=False)
    names = [view.name for view in status.stages]
    if stage not in names:
        raise StageNotFound(f"release {ref} has no stage {stage!r} (stages: {', '.join(names)})")
    request = DeployRequest(stage=stage, by=user, request_id=uuid.uuid4().hex)
    signal = ReleaseWorkflow.redeploy if redeploy else ReleaseWorkflow.deploy
    await release_handle(client, ref).signal(signal, request)
    return request.request_id or ""


async def abandon_release(client: Client, ref: ReleaseRef, user: str, reason: str = "") -> str:
    await release_status(client, ref, live=False)
    request = AbandonRequest(by=user, reason=reason, request_id=uuid.uuid4().hex)
    await release_handle(client, ref).signal(ReleaseWorkflow.abandon, request)
    return request.request_id or ""


async def cancel_stage(client: Client, ref: ReleaseRef, stage: str, user: str) -> StageAttempt:
    """Cancel the running deployment of a stage; returns the attempt being canceled."""
    status = await release_status(client, ref, live=False)
    try:
        view = status.stage(stage)
    except KeyError as err:
        names = ", ".join(v.name for v in status.stages)
        raise StageNotFound(f"release {ref} has no stage {stage!r} (stages: {names})") from err
    latest = view.latest
    if latest is None or latest.status.is_final:
        raise StageNotFound(f"stage {stage!r} of {ref} is not being deployed ({view.status.value})")
    await client.get_workflow_handle_for(StageWorkflow.run, latest.workflow_id).signal(
        StageWorkflow.cancel, CancelRequest(by=user)
    )
    return latest


async def find_outcome(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent | None:
    """The audit event a signal with this request id produced, once the release handled it."""
    for event in await release_handle(client, ref).query(ReleaseWorkflow.history):
        if event.request_id == request_id:
            return event
    return None


def settled(status: ReleaseStatus, stages: list[str] | None = None) -> bool:
    """True when no stage (of those named) is queued or in progress."""
    views = [v for v in status.stages if stages is None or v.name in stages]
    return all(v.status in (StageStatus.NOT_DEPLOYED,) or v.status.is_final for v in views)
