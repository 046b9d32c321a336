"""`stageflow logs`: task logs from the log store, and a running task followed live."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from temporalio.client import Client

from activities.log_store import DirectoryLogStore, LogStore, read_log
from starter.releases import StageNotFound, stage_progress
from worker.settings import Settings
from workflows.agent_api import log_prefix
from workflows.release import ReleaseStatus, StageAttempt, TaskRun, TaskStatus
from workflows.stage_jobs import log_stem

FOLLOW_POLL = 0.2

# What follows a task's key stem in the keys of its logs: `.job2` for the job's
# re-run on another agent after a lost agent, `.try2` for the task's retry.
_TRY_SUFFIX = re.compile(r"(?:\.job(\d+))?(?:\.try(\d+))?\.log")


@dataclass(frozen=True)
class TryLog:
    """The stored log of one try of a task."""

    key: str
    job_try: int
    task_try: int

    @property
    def label(self) -> str:
        if self.job_try > 1:
            return f"job try {self.job_try}, try {self.task_try}"
        return f"try {self.task_try}"


def _attempts(status: ReleaseStatus, args: argparse.Namespace) -> list[tuple[str, StageAttempt]]:
    chosen = []
    for view in status.stages:
        if args.stage and view.name != args.stage:
            continue
        if args.attempt:
            chosen += [(view.name, a) for a in view.attempts if a.attempt == args.attempt]
        elif view.latest:
            chosen.append((view.name, view.latest))
    if args.attempt and not chosen:
        raise StageNotFound(_no_such_attempt(status, args))
    return chosen


def _no_such_attempt(status: ReleaseStatus, args: argparse.Namespace) -> str:
    ref = f"{status.pipeline}/{status.number}"
    views = [v for v in status.stages if not args.stage or v.name == args.stage]
    existing = "; ".join(
        f"{v.name}: {', '.join(str(a.attempt) for a in v.attempts)}" for v in views if v.attempts
    )
    where = f"stage {args.stage!r} of {ref}" if args.stage else ref
    if not existing:
        return f"{where} has no attempt {args.attempt}: it was never deployed"
    return f"{where} has no attempt {args.attempt} (attempts {existing})"


def _matches(run: TaskRun, wanted: str | None) -> bool:
    return wanted is None or run.task == wanted or f"{run.job}/{run.task}" == wanted


def _key_stem(status: ReleaseStatus, stage: str, attempt: StageAttempt, run: TaskRun) -> str:
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


async def print_logs(
    client: Client | None, settings: Settings, status: ReleaseStatus, args: argparse.Namespace
) -> int:
    """Print the logs of every try of the chosen tasks; `--follow` streams a running one.

    A log cut short (its agent was lost, or the task killed) says so in its last line.
    Printing into a pipe that closes early (`| head`) ends quietly.
    """
    try:
        return await _print_logs(client, settings, status, args)
    except BrokenPipeError:
        # The reader is gone (`| head`): stop quietly, as Unix tools do. Later
        # flushes of stdout must not fail again, so it now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


async def _print_logs(
    client: Client | None, settings: Settings, status: ReleaseStatus, args: argparse.Namespace
) -> int:
    store = DirectoryLogStore(settings.log_dir)
    stamps = not args.no_timestamps
    printed = 0
    for stage, attempt in _attempts(status, args):
        for run in attempt.tasks:
            if not _matches(run, args.task):
                continue
            if run.status == TaskStatus.IN_PROGRESS and client is not None:
                await _follow(client, store, stage, attempt, run, stamps)
                printed += 1
                continue
            logs = try_logs(store, _key_stem(status, stage, attempt, run))
            for number, log in enumerate(logs, 1):
                path = store.path(log.key)
                if path is None:
                    continue  # removed since it was listed
                label = f", {log.label}" if len(logs) > 1 or log.task_try > 1 else ""
                print(
                    f"==> {stage} #{attempt.attempt} / {run.task} ({run.status.value}){label} <==",
                    flush=True,
                )
                # Only the last try of a running task may still be written to.
                running = run.status == TaskStatus.IN_PROGRESS and number == len(logs)
                for line in read_log(path, timestamps=stamps, task_over=not running):
                    print(line)
                printed += 1
    if printed == 0:
        print("no logs yet" + (f" for task {args.task!r}" if args.task else ""))
    sys.stdout.flush()  # a closed pipe shows here, while BrokenPipeError is still caught
    return 0


async def _follow(
    client: Client,
    store: DirectoryLogStore,
    stage: str,
    attempt: StageAttempt,
    run: TaskRun,
    stamps: bool,
) -> None:
    """Stream the agent's live log of a running task until the task ends.

    The agent names its local log in the task's heartbeat; on one machine (or a
    shared disk) we read it as it grows. Afterwards the shipped log is the truth.
    """
    print(f"==> {stage} #{attempt.attempt} / {run.task} (following) <==", flush=True)
    local = await _live_log_path(client, attempt.workflow_id)
    offset = 0
    while True:
        if local is not None and local.exists():
            with local.open("rb") as log:
                log.seek(offset)
                data = log.read()
            if data:
                # Print whole lines only; the rest comes with the next read.
                cut = data.rfind(b"\n") + 1
                if cut:
                    print(data[:cut].decode(errors="replace"), end="", flush=True)
                    offset += cut
        current = await stage_progress(client, attempt.workflow_id)
        task = next(
            (
                t
                for t in (current.tasks if current else [])
                if t.job == run.job and t.task == run.task
            ),
            None,
        )
        if current is None or task is None or task.status != TaskStatus.IN_PROGRESS:
            break
        if local is None:
            local = await _live_log_path(client, attempt.workflow_id)
        await asyncio.sleep(FOLLOW_POLL)
    # The task ended: print what the shipped log holds beyond what we showed.
    final = await stage_progress(client, attempt.workflow_id)
    task = next((t for t in (final.tasks if final else []) if t.task == run.task), None)
    if task is not None and task.log and (path := store.path(task.log)) is not None:
        with path.open("rb") as log:
            log.seek(offset)
            rest = log.read()
        if rest:
            print(rest.decode(errors="replace"), end="" if rest.endswith(b"\n") else "\n")


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
