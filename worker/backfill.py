"""The backfill: releases that exist only in Temporal, taken into the record once (issue 12).

A data dir from before the record (or a new record beside a Temporal that has
history) holds releases the record never saw. On the control worker's first
start against it, every ReleaseWorkflow on the worker's task queue that the
record does not know is imported from its queries (`spec`, `status`, `history`)
at version 0, below any version a workflow writes: whatever a running release
records itself afterwards wins over what the backfill took.

When every listed release is in the record (imported now or already there),
the marker `backfill/<task queue>` is set in `record_meta` and later starts
return at once. A release that could not be read (no worker can replay it, a
query timed out) is logged and leaves the marker unset, so the next start tries
again; the releases imported meanwhile are then found already recorded.

Queries are answered by a control worker: call this once the worker polls.
Releases are read one after another, not to crowd the worker that serves the
live ones.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHistoryEventFilterType,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError

from activities.record.database import Database
from activities.record.meta import get_meta, set_meta
from activities.record.queries import release_spec
from activities.record.writes import import_release
from workflows.audit import AuditEvent
from workflows.names import CONTROL_TASK_QUEUE
from workflows.release import (
    ReleaseSpec,
    ReleaseStatus,
    end_from_outside,
    release_status_of,
)
from workflows.release_workflow import ReleaseWorkflow
from workflows.stage_workflow import StageWorkflow

log = logging.getLogger(__name__)

# How long one query may take: a release no worker can answer for must not hold
# up the rest (nor the worker's start) for long.
QUERY_TIMEOUT = timedelta(seconds=10)
RELEASE_PREFIX = "release/"
# A run that ended by itself, or goes on in a newer run; any other end came from outside.
ENDED_BY_ITSELF = {WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.CONTINUED_AS_NEW}

# What a release whose queries fail raises: the server's refusal or timeout, the
# worker's failed replay, or an answer today's models cannot read.
UNREADABLE = (RPCError, WorkflowQueryFailedError, ValueError)


def backfill_marker(task_queue: str) -> str:
    """The `record_meta` key that says the releases of `task_queue` are all in the record."""
    return f"backfill/{task_queue}"


async def backfill(
    client: Client,
    db: Database,
    *,
    task_queue: str = CONTROL_TASK_QUEUE,
    query_timeout: timedelta = QUERY_TIMEOUT,
) -> int:
    """Import into the record every release of `task_queue` that exists only in
    Temporal; the number imported (0 at once when the backfill was done before).

    A release that cannot be read or written is logged and skipped, and the
    marker stays unset (the next start tries again); an unreadable record raises.
    """
    marker = backfill_marker(task_queue)
    if await get_meta(db, marker) is not None:
        return 0
    imported, present = 0, 0
    failed: list[str] = []
    for execution in await _latest_runs(client, task_queue):
        ref = _release_ref(execution.id)
        if ref is None:
            log.info("backfill: %s is not a release id; left alone", execution.id)
            continue
        if await release_spec(db, *ref) is not None:
            present += 1
            continue
        try:
            spec, status, history = await _read_release(client, execution, query_timeout)
        except UNREADABLE as err:
            log.warning("backfill: cannot read %s: %s", execution.id, err)
            failed.append(execution.id)
            continue
        try:
            await import_release(db, spec, status, history, version=0)
        except SQLAlchemyError as err:
            log.warning("backfill: cannot record %s: %s", execution.id, err)
            failed.append(execution.id)
            continue
        imported += 1
    summary = f"{imported} imported, {present} already recorded"
    if failed:
        log.warning(
            "backfill: %s; %d not read, tried again at the next start: %s",
            summary,
            len(failed),
            ", ".join(failed),
        )
        return imported
    await set_meta(db, marker, f"done {datetime.now(UTC).isoformat()}: {summary}")
    log.info("backfill of %r done: %s", task_queue, summary)
    return imported


async def _latest_runs(client: Client, task_queue: str) -> list[WorkflowExecution]:
    """Each ReleaseWorkflow of the queue once, as its latest run (a release continued
    as new is listed once per run), oldest release first."""
    query = f"WorkflowType = 'ReleaseWorkflow' AND TaskQueue = '{task_queue}'"
    latest: dict[str, WorkflowExecution] = {}
    async for execution in client.list_workflows(query):
        known = latest.get(execution.id)
        if known is None or execution.start_time > known.start_time:
            latest[execution.id] = execution
    return sorted(latest.values(), key=lambda e: (e.start_time, e.id))


def _release_ref(workflow_id: str) -> tuple[str, int] | None:
    """(pipeline, number) of `release/<pipeline>/<number>`; None for any other id."""
    if not workflow_id.startswith(RELEASE_PREFIX):
        return None
    pipeline, _, number = workflow_id.removeprefix(RELEASE_PREFIX).rpartition("/")
    return (pipeline, int(number)) if pipeline and number.isdigit() else None


async def _read_release(
    client: Client, execution: WorkflowExecution, timeout: timedelta
) -> tuple[ReleaseSpec, ReleaseStatus, list[AuditEvent]]:
    """The release as its run's queries show it, as `stageflow release show` does:
    running stages as they stand, and a release ended from outside Stageflow
    (terminated, timed out) with its unfinished stages terminated."""
    handle = client.get_workflow_handle_for(
        ReleaseWorkflow.run, execution.id, run_id=execution.run_id
    )
    spec = await handle.query(ReleaseWorkflow.spec, rpc_timeout=timeout)
    status = await handle.query(ReleaseWorkflow.status, rpc_timeout=timeout)
    history = list(await handle.query(ReleaseWorkflow.history, rpc_timeout=timeout))
    if execution.status is None or execution.status == WorkflowExecutionStatus.RUNNING:
        await _take_in_running_stages(client, status, timeout)
    elif execution.status not in ENDED_BY_ITSELF:
        end_from_outside(status, execution.status.name.lower())
        if execution.status == WorkflowExecutionStatus.TERMINATED:
            history.append(await _termination(client, execution, timeout))
    return spec, status, history


async def _take_in_running_stages(
    client: Client, status: ReleaseStatus, timeout: timedelta
) -> None:
    """A running stage as its StageWorkflow shows it (waiting for an approval, its tasks
    so far): the release knows only that it runs. Kept as the release shows it when
    the stage cannot answer (not started yet, or just ended: the release knows)."""
    for view in status.stages:
        latest = view.latest
        if latest is None or latest.status.is_final:
            continue
        try:
            progress = await client.get_workflow_handle_for(
                StageWorkflow.run, latest.workflow_id
            ).query(StageWorkflow.progress, rpc_timeout=timeout)
        except UNREADABLE:
            continue
        # Until the release has taken in a finished child, the stage still counts as running.
        if not progress.status.is_final:
            view.status = progress.status
        view.attempts[-1] = progress.model_copy(update={"status": view.status})
    status.status = release_status_of(status.stages, status.state)


async def _termination(
    client: Client, execution: WorkflowExecution, timeout: timedelta
) -> AuditEvent:
    """The termination as an audit event: who terminated the release, when and why
    (the release's own trail cannot say it; `stageflow release history` shows it so)."""
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    async for event in handle.fetch_history_events(
        event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT, rpc_timeout=timeout
    ):
        attributes = event.workflow_execution_terminated_event_attributes
        return AuditEvent(
            time=event.event_time.ToDatetime(tzinfo=UTC),
            actor=attributes.identity or "temporal",
            action="terminate",
            detail=attributes.reason or "terminated in Temporal",
        )
    raise ValueError(f"{execution.id} is terminated but its history has no close event")
