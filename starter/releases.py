"""What the `stageflow` command line does with releases, as plain async functions.

Each takes a connected client and returns models; the CLI only parses and renders.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowHistoryEventFilterType,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import QueryRejectCondition, WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.artifact_pinning import resolve_artifacts
from activities.limits import check_release_request
from activities.pipeline_loader import load_pipeline
from starter.release_ref import ReleaseRef
from workflows.approval_policy import Decision
from workflows.audit import AuditEvent
from workflows.changes import ReleaseChanges
from workflows.names import (
    CONTROL_TASK_QUEUE,
    pipeline_workflow_id,
    stage_workflow_id,
)
from workflows.pipeline import Pipeline
from workflows.pipeline_workflow import (
    CreatedRelease,
    NewRelease,
    PipelineState,
    PipelineWorkflow,
)
from workflows.release import (
    AbandonRequest,
    CancelRequest,
    DeployNow,
    DeployRequest,
    GateIgnore,
    LateDecision,
    ReleaseStatus,
    ResolvedArtifact,
    StageAttempt,
    StageStatus,
    end_from_outside,
    release_status_of,
)
from workflows.release_workflow import ReleaseWorkflow
from workflows.stage_workflow import StageWorkflow

CREATE_RETRY_SECONDS = 120
RETRYABLE_RPC = {
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
}


def _transient(err: RPCError) -> bool:
    """The server was busy or away (restarting): the same request may be sent again.
    A connection the server dropped in the middle of a call reads as UNKNOWN."""
    return err.status in RETRYABLE_RPC or (
        err.status == RPCStatusCode.UNKNOWN and "transport error" in err.message
    )


class ReleaseNotFound(LookupError):
    """No release with that reference: a user's mistake, exit code 2."""


class StageNotFound(LookupError):
    pass


class ReleaseClosed(LookupError):
    """The release (and so every deployment of it) has ended: nothing more can be decided."""


class WorkflowClosed(Exception):
    """The workflow an update was sent to has completed."""


# What the pinned artifacts bring (activities/release_changes.py), for the release's snapshot.
ChangesOf = Callable[[list[ResolvedArtifact]], Awaitable[ReleaseChanges | None]]


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
    return await create_release_of(
        client,
        pipeline,
        revision,
        pipeline_file,
        user=user,
        artifact_versions=artifact_versions,
        variables=variables,
        until=until,
        description=description,
        task_queue=task_queue,
    )


async def create_release_of(
    client: Client,
    pipeline: Pipeline,
    revision: str,
    pipeline_file: Path,
    *,
    user: str,
    artifact_versions: dict[str, str] | None = None,
    variables: dict[str, str] | None = None,
    until: str | None = None,
    description: str = "",
    task_queue: str = CONTROL_TASK_QUEUE,
    changes_of: ChangesOf | None = None,
    request_id: str | None = None,
) -> CreatedRelease:
    """Create the numbered release of a validated pipeline (revision: its sha256), whose
    relative artifact paths start at `pipeline_file`'s directory."""
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
        request_id=request_id or uuid.uuid4().hex,
        changes=await changes_of(artifacts) if changes_of else None,
    )
    check_release_request(request)  # settable variables only; fits one Temporal payload
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
            retryable = not isinstance(err, RPCError) or _transient(err)
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
    handle = release_handle(client, ref)
    try:
        try:
            status = await handle.query(
                ReleaseWorkflow.status, reject_condition=QueryRejectCondition.NOT_OPEN
            )
        except WorkflowQueryRejectedError as closed:
            # Closed: what it recorded last, and whether it ended by itself or from outside.
            status = await handle.query(ReleaseWorkflow.status)
            if closed.status != WorkflowExecutionStatus.COMPLETED and closed.status is not None:
                end_from_outside(status, closed.status.name.lower())
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
        # The release knows a stage runs; the stage knows it waits on a person.
        status.status = release_status_of(status.stages, status.state)
    return status


# A release workflow that ended so was ended in Temporal, not by Stageflow.
ENDED_FROM_OUTSIDE = {
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
}


async def ended_from_outside(
    client: Client, ref: ReleaseRef, rpc_timeout: timedelta | None = None
) -> str | None:
    """How the release's workflow was ended in Temporal (terminated, timed_out, ...),
    or None while it runs or when it ended by itself. Asks the server, not a worker."""
    described = await release_handle(client, ref).describe(rpc_timeout=rpc_timeout)
    if described.status in ENDED_FROM_OUTSIDE:
        return described.status.name.lower()
    return None


async def termination_event(
    client: Client, ref: ReleaseRef, rpc_timeout: timedelta | None = None
) -> AuditEvent | None:
    """The termination of the release's workflow as an audit event: who, when, why."""
    async for event in release_handle(client, ref).fetch_history_events(
        event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT, rpc_timeout=rpc_timeout
    ):
        if event.HasField("workflow_execution_terminated_event_attributes"):
            attributes = event.workflow_execution_terminated_event_attributes
            return AuditEvent(
                time=event.event_time.ToDatetime(tzinfo=UTC),
                actor=attributes.identity or "temporal",
                action="terminate",
                detail=attributes.reason or "terminated in Temporal",
            )
    return None


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
    handle = release_handle(client, ref)
    events = list(await handle.query(ReleaseWorkflow.history))
    for view in status.stages:
        for attempt in view.attempts:
            events += attempt.events
    if status.state == "terminated":
        event = await termination_event(client, ref)
        if event is not None:
            events.append(event)
    return sorted(events, key=lambda event: event.time)


async def deploy_stage(
    client: Client,
    ref: ReleaseRef,
    stage: str,
    user: str,
    *,
    redeploy: bool = False,
    request_id: str | None = None,
) -> AuditEvent:
    """Deploy (or redeploy) a stage of a release; returns the release's verdict.

    Every action takes a `request_id`: the same request sent again (a client that
    lost the answer) is answered with the first one's verdict, never done twice."""
    status = await release_status(client, ref, live=False)
    _stage_of(status, ref, stage)
    request = DeployRequest(stage=stage, by=user, request_id=request_id or uuid.uuid4().hex)
    method = ReleaseWorkflow.redeploy if redeploy else ReleaseWorkflow.deploy
    return await _release_update(client, status, method, request)


async def abandon_release(
    client: Client, ref: ReleaseRef, user: str, reason: str = "", request_id: str | None = None
) -> AuditEvent:
    status = await release_status(client, ref, live=False)
    request = AbandonRequest(by=user, reason=reason, request_id=request_id or uuid.uuid4().hex)
    return await _release_update(client, status, ReleaseWorkflow.abandon, request)


async def cancel_stage(
    client: Client, ref: ReleaseRef, stage: str, user: str, request_id: str | None = None
) -> AuditEvent:
    """Cancel the running deployment of a stage; returns the deployment's verdict."""
    request = CancelRequest(by=user, request_id=request_id or uuid.uuid4().hex)
    return await _act_on_stage(client, ref, stage, "cancel", StageWorkflow.cancel, request)


async def _release_update(
    client: Client, status: ReleaseStatus, method: Any, arg: Any
) -> AuditEvent:
    ref = ReleaseRef(status.pipeline, status.number)
    try:
        return await _update(release_handle(client, ref), method, arg)
    except WorkflowClosed:
        raise ReleaseClosed(
            f"release {ref} is {_ended(status)}: nothing more can be done"
        ) from None


async def _act_on_stage(
    client: Client, ref: ReleaseRef, stage: str, action: str, method: Any, request: Any
) -> AuditEvent:
    """Send a person's action to the stage's latest deployment and return its verdict.

    A deployment that has ended cannot answer; its release does (and records
    the refusal); a release that has ended too is one clear error.
    """
    # Most decisions are on a stage's first deployment: ask it directly, one round
    # trip. Only when it has ended (or never began) is the latest attempt looked up.
    first = stage_workflow_id(ref.pipeline, ref.number, stage, 1)
    try:
        return await _update(client.get_workflow_handle(first), method, request)
    except WorkflowClosed:
        pass
    status = await release_status(client, ref, live=False)
    view = _stage_of(status, ref, stage)
    answered = _answer_in(view.attempts, request.request_id)
    if answered is not None:
        return answered  # the same request again, after its deployment ended
    latest = view.latest
    if latest is not None and latest.attempt > 1 and not latest.status.is_final:
        handle = client.get_workflow_handle_for(StageWorkflow.run, latest.workflow_id)
        try:
            return await _update(handle, method, request)
        except WorkflowClosed:
            pass  # it has just ended: the release answers
    late = LateDecision(stage=stage, action=action, by=request.by, request_id=request.request_id)
    try:
        return await _update(release_handle(client, ref), ReleaseWorkflow.late_decision, late)
    except WorkflowClosed:
        state = f"{latest.status.value} (attempt {latest.attempt})" if latest else "not deployed"
        raise ReleaseClosed(
            f"release {ref} is {_ended(status)} and stage {stage!r} is {state}: "
            f"nothing to {action.replace('_', ' ')}"
        ) from None


def _answer_in(attempts: list[StageAttempt], request_id: str | None) -> AuditEvent | None:
    """The answer a deployment gave to this request, if it did (a request is answered
    once: sent again, it gets the same event)."""
    for attempt in attempts:
        for event in attempt.events:
            if request_id and event.request_id == request_id:
                return event
    return None


async def _update(handle: WorkflowHandle[Any, Any], method: Any, arg: Any) -> AuditEvent:
    try:
        return await handle.execute_update(method, arg)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise WorkflowClosed(str(err)) from err
        raise
    except WorkflowUpdateFailedError as err:
        if "completed" in str(err.cause or err).lower():
            raise WorkflowClosed(str(err)) from err
        raise


def _ended(status: ReleaseStatus) -> str:
    return status.state if status.state != "active" else "closed"


def _stage_of(status: ReleaseStatus, ref: ReleaseRef, stage: str) -> Any:
    try:
        return status.stage(stage)
    except KeyError as err:
        names = ", ".join(v.name for v in status.stages)
        raise StageNotFound(f"release {ref} has no stage {stage!r} (stages: {names})") from err


def settled(status: ReleaseStatus, stages: list[str] | None = None) -> bool:
    """True when no stage (of those named) is queued or in progress."""
    views = [v for v in status.stages if stages is None or v.name in stages]
    return all(v.status in (StageStatus.NOT_DEPLOYED,) or v.status.is_final for v in views)


# --- people's decisions on a deployment -------------------------------------------------


async def latest_attempt(client: Client, ref: ReleaseRef, stage: str) -> StageAttempt:
    """The stage's latest deployment, live; StageNotFound if none or no such stage."""
    status = await release_status(client, ref)
    view = _stage_of(status, ref, stage)
    if view.latest is None:
        raise StageNotFound(f"stage {stage!r} of {ref} has not been deployed")
    return view.latest


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
    request_id: str | None = None,
    groups: Sequence[str] = (),
    choice: str | None = None,
) -> AuditEvent:
    """approve / reject / resume a deployment of a stage; returns the recorded verdict.
    `groups`: the identity-provider groups the person signed in with (an approver entry
    `group:oidc:NAME` counts them)."""
    decision = Decision(
        by=user,
        groups=list(groups),
        phase=phase,  # type: ignore[arg-type]
        comment=comment,
        defer_until=defer_until,
        choice=choice,  # type: ignore[arg-type]
        request_id=request_id or uuid.uuid4().hex,
    )
    methods = {
        "approve": StageWorkflow.approve,
        "reject": StageWorkflow.reject,
        "resume": StageWorkflow.resume,
    }
    return await _act_on_stage(client, ref, stage, action, methods[action], decision)


async def deploy_now(
    client: Client,
    ref: ReleaseRef,
    stage: str,
    user: str,
    request_id: str | None = None,
    groups: Sequence[str] = (),
) -> AuditEvent:
    request = DeployNow(by=user, groups=list(groups), request_id=request_id or uuid.uuid4().hex)
    return await _act_on_stage(client, ref, stage, "deploy_now", StageWorkflow.deploy_now, request)


async def ignore_gate(
    client: Client,
    ref: ReleaseRef,
    stage: str,
    user: str,
    check: str,
    phase: str = "pre",
    request_id: str | None = None,
    groups: Sequence[str] = (),
) -> AuditEvent:
    request = GateIgnore(
        check=check,
        by=user,
        groups=list(groups),
        phase=phase,
        request_id=request_id or uuid.uuid4().hex,
    )
    return await _act_on_stage(
        client, ref, stage, "ignore_gate", StageWorkflow.ignore_gate, request
    )
