"""The minimal durable shape: bare Temporal workflows with no Stageflow code.

A release is a parent workflow with one child workflow per stage (run one after
another, like `after_stages`) and one activity per task — the least any design
with durable stages and tasks can do. The activity runs the same no-op command
a Stageflow task runs, so a ratio shows orchestration cost only.

The worker (`python -m bench.bare_worker`) runs these in a process of its own,
like Stageflow's control worker and agents.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

# What a Stageflow `script: "true"` task runs (bash with Stageflow's flags), minus the file.
NOOP_COMMAND = ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", "true"]
NO_RETRY = RetryPolicy(maximum_attempts=1)


@dataclass
class BareReleaseInput:
    stages: int = 3
    tasks_per_stage: int = 1
    command: list[str] = field(default_factory=lambda: list(NOOP_COMMAND))
    # None: the activities run on the workflow's own worker (the SDK starts them eagerly,
    # in the reply to the workflow task); a queue name: on another worker, like an agent.
    activity_queue: str | None = None


@dataclass
class BareStageInput:
    stage: int
    tasks: int
    command: list[str]
    activity_queue: str | None = None


@dataclass
class BareHoldInput:
    """The failover limit: an activity that holds until the marker file exists."""

    directory: str
    heartbeat_seconds: float = 5.0


# --- activities ----------------------------------------------------------------------


@activity.defn(name="bare_task")
async def bare_task(command: list[str]) -> int:
    """Run the task's command as a subprocess, output discarded; its exit code."""
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


@activity.defn(name="bare_hold")
async def bare_hold(request: BareHoldInput) -> str:
    """Heartbeat until `<directory>/killed` exists; returns the worker that finished it."""
    directory = Path(request.directory)
    me = f"pid {os.getpid()}"
    if (directory / "killed").exists():
        return me
    (directory / "holder").write_text(me)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        activity.heartbeat()
        await asyncio.sleep(0.2)
    return me


# --- workflows -----------------------------------------------------------------------


@workflow.defn(name="BareStage")
class BareStage:
    """One stage: its tasks, one activity each, in order."""

    @workflow.run
    async def run(self, input: BareStageInput) -> None:
        for _ in range(input.tasks):
            await workflow.execute_activity(
                "bare_task",
                input.command,
                task_queue=input.activity_queue,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=NO_RETRY,
            )


@workflow.defn(name="BareRelease")
class BareRelease:
    """One release: one child workflow per stage, each after the one before."""

    @workflow.run
    async def run(self, input: BareReleaseInput) -> None:
        for stage in range(1, input.stages + 1):
            await workflow.execute_child_workflow(
                BareStage.run,
                BareStageInput(
                    stage=stage,
                    tasks=input.tasks_per_stage,
                    command=input.command,
                    activity_queue=input.activity_queue,
                ),
                id=f"{workflow.info().workflow_id}/stage-{stage}",
            )


@workflow.defn(name="BareApproval")
class BareApproval:
    """Waits for an `approve` signal, then runs one activity: signal → activity start."""

    def __init__(self) -> None:
        self._approved = False

    @workflow.run
    async def run(self, command: list[str]) -> None:
        await workflow.wait_condition(lambda: self._approved)
        await workflow.execute_activity(
            "bare_task",
            command,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=NO_RETRY,
        )

    @workflow.signal
    def approve(self, by: str) -> None:
        self._approved = True


@dataclass
class BareVerdict:
    """What the bare decision update records and returns: a small audit event."""

    actor: str
    action: str
    outcome: str
    time: str


@workflow.defn(name="BareDecision")
class BareDecision:
    """Waits for an `approve` update, which records a small event and returns it: the
    least a decision that answers its caller can do (the decision round trip's limit)."""

    def __init__(self) -> None:
        self._events: list[BareVerdict] = []

    @workflow.run
    async def run(self) -> list[BareVerdict]:
        await workflow.wait_condition(lambda: bool(self._events))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._events

    @workflow.update
    def approve(self, by: str) -> BareVerdict:
        """Record the approval and return it."""
        event = BareVerdict(
            actor=by, action="approve", outcome="accepted", time=workflow.now().isoformat()
        )
        self._events.append(event)
        return event


@workflow.defn(name="BareFailover")
class BareFailover:
    """One heartbeating activity, retried on another worker when its worker dies."""

    @workflow.run
    async def run(self, input: BareHoldInput) -> str:
        return await workflow.execute_activity(
            "bare_hold",
            input,
            result_type=str,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=input.heartbeat_seconds),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100)),
        )


WORKFLOWS = [BareRelease, BareStage, BareApproval, BareDecision, BareFailover]
ACTIVITIES: list[Callable[..., Any]] = [bare_task, bare_hold]
