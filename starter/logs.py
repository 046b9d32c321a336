"""`stageflow logs`: task logs from the log store, and a running task followed live."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from temporalio.client import Client

from activities.log_store import DirectoryLogStore, read_log
from starter.releases import stage_progress
from worker.settings import Settings
from workflows.release import ReleaseStatus, StageAttempt, TaskRun, TaskStatus

FOLLOW_POLL = 0.2


def _attempts(status: ReleaseStatus, args: argparse.Namespace) -> list[tuple[str, StageAttempt]]:
    chosen = []
    for view in status.stages:
        if args.stage and view.name != args.stage:
            continue
        if args.attempt:
            chosen += [(view.name, a) for a in view.attempts if a.attempt == args.attempt]
        elif view.latest:
            chosen.append((view.name, view.latest))
    return chosen


def _matches(run: TaskRun, wanted: str | None) -> bool:
    return wanted is None or run.task == wanted or f"{run.job}/{run.task}" == wanted


async def print_logs(
    client: Client, settings: Settings, status: ReleaseStatus, args: argparse.Namespace
) -> int:
    store = DirectoryLogStore(settings.log_dir)
    stamps = not args.no_timestamps
    printed = 0
    for stage, attempt in _attempts(status, args):
        for run in attempt.tasks:
            if not _matches(run, args.task):
                continue
            if run.status == TaskStatus.IN_PROGRESS and args.follow:
                await _follow(client, store, stage, attempt, run, stamps)
                printed += 1
                continue
            if run.log is None:
                continue
            path = store.path(run.log)
            print(
                f"==> {stage} #{attempt.attempt} / {run.task} ({run.status.value}) <==", flush=True
            )
            if path is not None:
                for line in read_log(path, timestamps=stamps):
                    print(line)
            printed += 1
    if printed == 0:
        print("no logs yet" + (f" for task {args.task!r}" if args.task else ""))
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
