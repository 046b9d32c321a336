"""The log routes of /api/v1: which tasks of a release have logs, one log's lines, and
a running task followed live (what `stageflow logs [--follow]` prints).

Who may read a release's logs is who may read the release (Access.view, or an
approver the release names). Logs come from the log store in the data dir
(activities/log_store.py); which tasks ran, and which one runs now, from the
record and the live view of running stages (starter/logs.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from activities import record
from activities.log_store import DirectoryLogStore, read_log
from starter.api.access import Access
from starter.api.app import AccessDep, Service, ServiceDep
from starter.api.params import NameQuery, PipelineName, ReleaseNumber, StageName
from starter.api.problems import not_found
from starter.api.routes import _spec
from starter.logs import (
    TaskLogs,
    chosen_attempts,
    follow,
    key_stem,
    matches,
    still_written,
    task_logs,
    try_logs,
)
from starter.reading import with_live_view
from starter.releases import StageNotFound
from workflows.release import ReleaseStatus, TaskStatus

TEXT = "text/plain; charset=utf-8"
Attempt = Annotated[int | None, Query(ge=1, le=100_000, description="default: the latest")]
# A task is named NAME or JOB/NAME; a log by its key in the log store (a relative path).
TASK_PATTERN = r"^[^\x00-\x1f]+$"
TaskName = Annotated[
    str | None,
    Query(min_length=1, max_length=400, pattern=TASK_PATTERN, description="NAME or JOB/NAME"),
]
LogKey = Annotated[str, Path(min_length=1, max_length=1000, pattern=TASK_PATTERN)]
Offset = Annotated[int, Query(ge=0, le=2**53, description="from this byte on (a line start)")]
TEXT_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {TEXT: {}}, "description": "the log's lines"}
}


def add_log_routes(api: APIRouter) -> None:
    """The routes of logs, on `api` (mounted at /api/v1)."""

    @api.get(
        "/releases/{pipeline}/{number}/logs",
        tags=["logs"],
        summary="the tasks of a release's deployments and the logs of their tries",
    )
    async def logs(
        pipeline: PipelineName,
        number: ReleaseNumber,
        svc: ServiceDep,
        can: AccessDep,
        stage: NameQuery = None,
        task: TaskName = None,
        attempt: Attempt = None,
    ) -> list[TaskLogs]:
        """Each stage's latest deployment (or `attempt`), each task of it (or `task`),
        with the keys of its tries' logs in the order they ran; a task with no log
        yet has none. 404 names the stages or attempts there are."""
        status = await _release(svc, can, pipeline, number)
        try:
            return task_logs(_store(svc), status, stage, task, attempt)
        except StageNotFound as err:
            raise not_found(str(err)) from None

    @api.get(
        "/releases/{pipeline}/{number}/logs/{key:path}",
        tags=["logs"],
        response_class=StreamingResponse,
        responses=TEXT_RESPONSE,
        summary="one log's lines, each with the time it was written",
    )
    async def log_text(
        pipeline: PipelineName,
        number: ReleaseNumber,
        key: LogKey,
        svc: ServiceDep,
        can: AccessDep,
        offset: Offset = 0,
        timestamps: bool = True,
    ) -> StreamingResponse:
        """The log under `key` (from the listing), a line each, prefixed with the UTC
        time it was written (`2026-11-22T02:11:20.123Z `) unless `timestamps=false`.
        A log whose task is over but that has no end note ends with a line saying
        it was cut short (its agent was lost, or the task killed)."""
        status = await _release(svc, can, pipeline, number)
        store = _store(svc)
        entry = _owner(store, status, key)
        path = store.path(key)
        if path is None:
            raise not_found(f"no log {key!r}")
        over = not still_written(entry, key)
        lines = read_log(path, timestamps=timestamps, task_over=over, offset=offset)
        return StreamingResponse(_with_newlines(lines), media_type=TEXT)

    @api.get(
        "/releases/{pipeline}/{number}/stages/{stage}/follow",
        tags=["logs"],
        response_class=StreamingResponse,
        responses=TEXT_RESPONSE,
        summary="a running task's log, streamed as it is written until the task ends",
    )
    async def follow_task(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        svc: ServiceDep,
        can: AccessDep,
        task: Annotated[
            str,
            Query(
                min_length=1, max_length=400, pattern=TASK_PATTERN, description="NAME or JOB/NAME"
            ),
        ],
        attempt: Attempt = None,
    ) -> StreamingResponse:
        """The task's log as its agent writes it (whole lines, no timestamps), until
        the task ends; then the rest of its shipped log, and the answer ends. A task
        that is not running gives its last try's log whole."""
        status = await _release(svc, can, pipeline, number)
        store = _store(svc)
        try:
            chosen = chosen_attempts(status, stage, attempt)
        except StageNotFound as err:
            raise not_found(str(err)) from None
        deployment = chosen[0][1] if chosen else None
        runs = [r for r in (deployment.tasks if deployment else []) if matches(r, task)]
        if deployment is None or not runs:
            where = f"stage {stage!r} of {pipeline}/{number}"
            raise not_found(f"{where} has no task {task!r}" + ("" if deployment else " yet"))
        run = runs[0]
        stem = key_stem(status, stage, deployment, run)
        if run.status == TaskStatus.IN_PROGRESS:
            client = await svc.client()
            return StreamingResponse(follow(client, store, stem, deployment, run), media_type=TEXT)
        # Not running: the last try's log, as it was shipped.
        tries = try_logs(store, stem)
        path = store.path(tries[-1].key) if tries else None
        lines = read_log(path, timestamps=False) if path else iter(())
        return StreamingResponse(_with_newlines(lines), media_type=TEXT)


async def _release(svc: Service, can: Access, pipeline: str, number: int) -> ReleaseStatus:
    """The release as `release show` gives it, once the person may read it."""
    await _spec(svc, can, pipeline, number)
    status = await record.release(svc.db, pipeline, number)
    if status is None:
        raise not_found(f"release {pipeline}/{number} not found")
    await with_live_view(svc.settings, status, svc.connected())
    return status


def _store(svc: Service) -> DirectoryLogStore:
    return DirectoryLogStore(svc.settings.log_dir)


def _owner(store: DirectoryLogStore, status: ReleaseStatus, key: str) -> TaskLogs:
    """The task whose try `key` is a log of, in this release; 404 for any other key."""
    gone = not_found(f"no log {key!r} in release {status.pipeline}/{status.number}")
    prefix = f"{status.pipeline}/{status.number}/"
    stage, _, rest = key.removeprefix(prefix).partition("/")
    attempt = rest.partition("/")[0]
    if not key.startswith(prefix) or not attempt.isdigit():
        raise gone
    try:
        entries = task_logs(store, status, stage, None, int(attempt))
    except (StageNotFound, ValueError):  # no such stage or attempt; a malformed key
        raise gone from None
    for entry in entries:
        if any(log.key == key for log in entry.logs):
            return entry
    raise gone


def _with_newlines(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        yield line + "\n"
