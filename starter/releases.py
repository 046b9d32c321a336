"""What the `stageflow` command line does with releases, as plain async functions.

Each takes a connected client and returns models; the CLI only parses and renders.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from starter.artifacts import resolve_artifacts
from starter.pipeline_loader import load_pipeline
from starter.polling import poll
from workflows.approval_policy import Decision
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
    WAITING_ON_PEOPLE,
    AbandonRequest,
    AuditEvent,
    CancelRequest,
    DeployNow,
    DeployRequest,
    GateIgnore,
    ReleaseSpec,
    ReleaseStatus,
    StageAttempt,
    StageStatus,
)
from workflows.release_workflow import ReleaseWorkflow
from workflows.stage_workflow import StageWorkflow

CREATE_RETRY_SECONDS = 120
VERDICT_SECONDS = 15  # how long to wait for a workflow to record a decision
RETRYABLE_RPC = {
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
}


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
    # A burst of creates on one pipeline can exceed the server's in-flight updates
    # per workflow: retry with the same request id (the pipeline dedupes it), with
    # jittered back-off so the retries do not crowd the pipeline workflow.
    deadline = time.monotonic() + CREATE_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
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
        except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
            retryable = not isinstance(err, RPCError) or err.status in RETRYABLE_RPC
            if not retryable or time.monotonic() + delay > deadline:
                raise
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 5.0)


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
    """The release's own events and every deployment's decisions, in time order."""
    status = await release_status(client, ref)  # a clear error for an unknown release
    events = list(await release_handle(client, ref).query(ReleaseWorkflow.history))
    for view in status.stages:
        for attempt in view.attempts:
            events += attempt.events
    return sorted(events, key=lambda event: event.time)


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


# --- people's decisions on a deployment -------------------------------------------------


async def latest_attempt(client: Client, ref: ReleaseRef, stage: str) -> StageAttempt:
    """The stage's latest deployment, live; StageNotFound if none or no such stage."""
    status = await release_status(client, ref)
    try:
        view = status.stage(stage)
    except KeyError as err:
        names = ", ".join(v.name for v in status.stages)
        raise StageNotFound(f"release {ref} has no stage {stage!r} (stages: {names})") from err
    if view.latest is None:
        raise StageNotFound(f"stage {stage!r} of {ref} has not been deployed")
    return view.latest


async def signal_stage(
    client: Client, attempt: StageAttempt, signal: str, payload: Any, request_id: str
) -> AuditEvent | None:
    """Signal a deployment and read back its verdict (accepted or refused, and why)."""
    handle = client.get_workflow_handle_for(StageWorkflow.run, attempt.workflow_id)
    await handle.signal(signal, payload)

    async def verdict() -> AuditEvent | None:
        progress = await stage_progress(client, attempt.workflow_id)
        events = progress.events if progress else []
        return next((e for e in events if e.request_id == request_id), None)

    return await poll(verdict, timeout=VERDICT_SECONDS)


async def decide(
    client: Client,
    ref: ReleaseRef,
    stage: str,
    user: str,
    action: str,
    *,
    phase: str = "pre",
    comment: str = "",
    defer_until: datetime | None = None,
) -> AuditEvent | None:
    """approve / reject / resume a deployment of a stage; returns the recorded verdict."""
    attempt = await latest_attempt(client, ref, stage)
    if attempt.status.is_final:
        raise StageNotFound(
            f"stage {stage!r} of {ref} is {attempt.status.value} (attempt {attempt.attempt}): "
            "nothing to decide"
        )
    request_id = uuid.uuid4().hex
    decision = Decision(
        by=user, phase=phase, comment=comment, defer_until=defer_until, request_id=request_id
    )
    return await signal_stage(client, attempt, action, decision, request_id)


async def deploy_now(client: Client, ref: ReleaseRef, stage: str, user: str) -> AuditEvent | None:
    attempt = await latest_attempt(client, ref, stage)
    request_id = uuid.uuid4().hex
    return await signal_stage(
        client, attempt, "deploy_now", DeployNow(by=user, request_id=request_id), request_id
    )


async def ignore_gate(
    client: Client, ref: ReleaseRef, stage: str, user: str, check: str, phase: str = "pre"
) -> AuditEvent | None:
    attempt = await latest_attempt(client, ref, stage)
    request_id = uuid.uuid4().hex
    request = GateIgnore(check=check, by=user, phase=phase, request_id=request_id)
    return await signal_stage(client, attempt, "ignore_gate", request, request_id)


@dataclass
class Waiting:
    """One deployment waiting on a person."""

    ref: ReleaseRef
    release: str
    stage: str
    attempt: StageAttempt
    kind: str  # approval (pre/post) or intervention
    phase: str
    approvers: list[str]
    users: list[str]  # who may act, groups expanded
    deadline: datetime | None


async def waiting_on_people(client: Client, user: str | None = None) -> list[Waiting]:
    """Everything waiting on a person across releases, from StageflowStatus in visibility."""
    statuses = ", ".join(f"'{s.value}'" for s in WAITING_ON_PEOPLE)
    query = f"WorkflowType = 'StageWorkflow' AND StageflowStatus IN ({statuses})"
    specs: dict[str, ReleaseSpec] = {}
    found = []
    async for execution in client.list_workflows(query):
        parts = execution.id.split("/")
        if len(parts) != 5 or not parts[2].isdigit():
            continue
        ref = ReleaseRef(parts[1], int(parts[2]))
        progress = await stage_progress(client, execution.id)
        if progress is None or progress.status not in WAITING_ON_PEOPLE:
            continue
        if str(ref) not in specs:
            specs[str(ref)] = await release_handle(client, ref).query(ReleaseWorkflow.spec)
        spec = specs[str(ref)]
        for item in _waits_of(ref, spec, parts[3], progress):
            if user is None or user in item.users:
                found.append(item)
    found.sort(key=lambda w: (str(w.ref), w.stage))
    return found


def _waits_of(
    ref: ReleaseRef, spec: ReleaseSpec, stage: str, progress: StageAttempt
) -> list[Waiting]:
    def users(entries: list[str]) -> list[str]:
        return [u for entry in entries for u in spec.pipeline.members(entry)]

    waits = []
    for approval in progress.approvals:
        if approval.status == "pending":
            waits.append(
                Waiting(
                    ref,
                    spec.name,
                    stage,
                    progress,
                    "approval",
                    approval.phase,
                    approval.waiting_for,
                    users(approval.waiting_for),
                    approval.deadline,
                )
            )
    if progress.status == StageStatus.WAITING_FOR_INTERVENTION:
        task = next((t for t in progress.tasks if t.status == "in_progress"), None)
        definition = spec.pipeline.stage(stage)
        entries: list[str] = []
        for job in definition.all_jobs():
            for candidate in job.tasks:
                if task and candidate.name == task.task and candidate.manual_intervention:
                    entries = candidate.manual_intervention.approvers
        waits.append(
            Waiting(
                ref,
                spec.name,
                stage,
                progress,
                "intervention",
                "",
                entries,
                users(entries) if entries else [],
                progress.waiting_until,
            )
        )
    if progress.status == StageStatus.DEFERRED:
        approval = progress.approval("pre")
        entries = approval.approvers if approval else []
        waits.append(
            Waiting(
                ref,
                spec.name,
                stage,
                progress,
                "deferred",
                "pre",
                entries,
                users(entries),
                progress.waiting_until,
            )
        )
    return waits
