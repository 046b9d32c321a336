"""Task logs of a release, as the API serves them (starter/api/routes_logs.py): which
tasks and tries have a log, one log's lines, and a running task followed live.

The log store (activities/log_store.py) holds each try of each task under its own
key; which tasks ran, and whether one runs now, comes from the release's status
(the record, and the live view of running stages). The command line prints what
these give (starter/log_commands.py).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio.client import Client

from activities.log_store import LogStore
from starter.releases import StageNotFound, stage_progress
from workflows.agent_api import log_prefix
from workflows.release import ReleaseStatus, StageAttempt, TaskRun, TaskStatus
from workflows.stage_jobs import log_stem

FOLLOW_POLL = 0.2
# Bytes read from a growing log at a time while following it.
FOLLOW_CHUNK = 64 * 1024

# What follows a task's key stem in the keys of its logs: `.job2` for the job's
# re-run on another agent after a lost agent, `.try2` for the task's retry.
_TRY_SUFFIX = re.compile(r"(?:\.job(\d+))?(?:\.try(\d+))?\.log")


class TryLog(BaseModel):
    """The stored log of one try of a task."""

    key: str = Field(description="its key in the log store: GET .../logs/{key} reads it")
    job_try: int = Field(description="1, or the job's re-run after its agent was lost")
    task_try: int = Field(description="1, or the task's retry")

    @property
    def label(self) -> str:
        if self.job_try > 1:
            return f"job try {self.job_try}, try {self.task_try}"
        return f"try {self.task_try}"


class TaskLogs(BaseModel):
    """One task of one deployment, and the logs of its tries in the order they ran."""

    stage: str
    attempt: int
    job: str
    task: str
    status: TaskStatus
    logs: list[TryLog]


def chosen_attempts(
    status: ReleaseStatus, stage: str | None, attempt: int | None
) -> list[tuple[str, StageAttempt]]:
    """The deployments asked for: each stage's latest one (or only `stage`'s), or attempt
    `attempt` of each; StageNotFound, naming what exists, when there is no such thing."""
    names = [view.name for view in status.stages]
    ref = f"{status.pipeline}/{status.number}"
    if stage is not None and stage not in names:
        raise StageNotFound(f"release {ref} has no stage {stage!r} (stages: {', '.join(names)})")
    chosen = []
    for view in status.stages:
        if stage and view.name != stage:
            continue
        if attempt:
            chosen += [(view.name, a) for a in view.attempts if a.attempt == attempt]
        elif view.latest:
            chosen.append((view.name, view.latest))
    if attempt and not chosen:
        raise StageNotFound(_no_such_attempt(status, stage, attempt))
    return chosen


def _no_such_attempt(status: ReleaseStatus, stage: str | None, attempt: int) -> str:
    ref = f"{status.pipeline}/{status.number}"
    views = [v for v in status.stages if not stage or v.name == stage]
    existing = "; ".join(
        f"{v.name}: {', '.join(str(a.attempt) for a in v.attempts)}" for v in views if v.attempts
    )
    where = f"stage {stage!r} of {ref}" if stage else ref
    if not existing:
        return f"{where} has no attempt {attempt}: it was never deployed"
    return f"{where} has no attempt {attempt} (attempts {existing})"


def matches(run: TaskRun, wanted: str | None) -> bool:
    """`--task NAME` or `--task JOB/NAME` names this task (None: every task)."""
    return wanted is None or run.task == wanted or f"{run.job}/{run.task}" == wanted


def task_logs(
    store: LogStore,
    status: ReleaseStatus,
    stage: str | None = None,
    task: str | None = None,
    attempt: int | None = None,
) -> list[TaskLogs]:
    """Every chosen task with the stored logs of its tries (none yet: an empty list)."""
    found = []
    for name, deployment in chosen_attempts(status, stage, attempt):
        for run in deployment.tasks:
            if matches(run, task):
                found.append(
                    TaskLogs(
                        stage=name,
                        attempt=deployment.attempt,
                        job=run.job,
                        task=run.task,
                        status=run.status,
                        logs=try_logs(store, key_stem(status, name, deployment, run)),
                    )
                )
    return found


def key_stem(status: ReleaseStatus, stage: str, attempt: StageAttempt, run: TaskRun) -> str:
    """The log store key of the task's first try, without `.log`; every try's key
    starts with it (`webapp/42/dev/1/job/01-deploy`)."""
    if run.log:
        directory, _, name = run.log.rpartition("/")
        match = re.search(_TRY_SUFFIX.pattern + "$", name)
        return f"{directory}/{name[: match.start()] if match else name}"
    # Not logged in the status (canceled, or its agent was lost): the key the
    # workflow gives the task.
    job_runs = [r for r in attempt.tasks if r.job == run.job]
    index = next(i for i, r in enumerate(job_runs, 1) if r is run)
    prefix = log_prefix(status.pipeline, status.number, stage, attempt.attempt, run.job)
    return log_stem(prefix, index, run.task)


def try_logs(store: LogStore, stem: str) -> list[TryLog]:
    """The stored logs of every try of the task whose keys start with `stem`, in the
    order they ran: job try, then task try (`01-deploy.log`, `01-deploy.try2.log`,
    `01-deploy.job2.log` …). `01-deploy` does not match `01-deploy-db`."""
    found = []
    for key in store.list(stem):
        match = _TRY_SUFFIX.fullmatch(key[len(stem) :])
        if match:
            job_try, task_try = (int(n) if n else 1 for n in match.groups())
            found.append(TryLog(key=key, job_try=job_try, task_try=task_try))
    return sorted(found, key=lambda log: (log.job_try, log.task_try))


def still_written(entry: TaskLogs, key: str) -> bool:
    """Whether the log under `key` may still grow: only the last try of a running task."""
    return entry.status == TaskStatus.IN_PROGRESS and bool(entry.logs) and entry.logs[-1].key == key


async def follow(
    client: Client, store: LogStore, stem: str, attempt: StageAttempt, run: TaskRun
) -> AsyncIterator[bytes]:
    """The bytes of a running task's log as they are written, until the task ends, then
    what its shipped log holds beyond them; whole lines only while it runs.

    The agent names its local log in the task's heartbeat; on one machine (or a
    shared disk) it is read as it grows. Afterwards the shipped log is the truth:
    the key the deployment names, else the last try's under `stem`. A task that is
    not running (any more) gives that log whole.
    """
    local = await _live_log_path(client, attempt.workflow_id)
    offset = 0
    while True:
        if local is not None and local.exists():
            with local.open("rb") as log:
                log.seek(offset)
                data = log.read(FOLLOW_CHUNK)
            # Whole lines only; the rest comes with the next read.
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
                offset += cut
            if len(data) == FOLLOW_CHUNK:
                continue  # more is there already
        current = await _task_now(client, attempt, run)
        if current is None or current.status != TaskStatus.IN_PROGRESS:
            break
        if local is None:
            local = await _live_log_path(client, attempt.workflow_id)
        await asyncio.sleep(FOLLOW_POLL)
    ended = await _task_now(client, attempt, run)
    tries = try_logs(store, stem)
    key = ended.log if ended is not None and ended.log else (tries[-1].key if tries else None)
    path = store.path(key) if key else None
    if path is None:
        return
    last = b"\n"
    with path.open("rb") as log:
        log.seek(offset)
        while rest := log.read(FOLLOW_CHUNK):
            yield rest
            last = rest
    if not last.endswith(b"\n"):
        yield b"\n"


async def _task_now(client: Client, attempt: StageAttempt, run: TaskRun) -> TaskRun | None:
    """The task as its deployment says now; None once the deployment answers no more."""
    current = await stage_progress(client, attempt.workflow_id)
    if current is None:
        return None
    return next((t for t in current.tasks if t.job == run.job and t.task == run.task), None)


async def _live_log_path(client: Client, workflow_id: str) -> Path | None:
    """The local log path from the running `run_task` activity's heartbeat details."""
    from workflows.agent_api import TaskProgress

    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except Exception:
        return None
    converter = client.data_converter
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name != "run_task" or not pending.heartbeat_details.payloads:
            continue
        try:
            (progress,) = await converter.decode(pending.heartbeat_details.payloads, [TaskProgress])
        except Exception:
            continue
        return Path(progress.log_path)
    return None
