"""The jobs of a deployment (DESIGN.md step 5): for each agent job, lease an agent
from the pool, download the release's artifacts there, run the tasks by their
conditions and keep each try's log; a job whose agent dies moves to another agent.

A lease is an `async with AgentLease(...)`: entering it holds one agent of the
pool (the agent signals which queue to send the job's steps to), every step runs
on that agent's queue raced against the lease, and leaving it ends the lease.
Manual interventions split a job: the agent is not held while a person decides.
A task that fails on a stage with `on_failure` does not: the agent stays leased
while a person chooses retry, skip or fail, so a retry runs in the same work dir.
"""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from types import TracebackType
from typing import Literal, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutType
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import (
        CLEANUP,
        DOWNLOAD_ARTIFACTS,
        LEASE_AGENT,
        RENEW_LEASE,
        RUN_TASK,
        SHIP_LOGS,
        ActivityRef,
    )
    from workflows.agent_api import (
        CleanupRequest,
        DownloadRequest,
        JobContext,
        LeaseGranted,
        LeaseRequest,
        LeaseResult,
        RunTaskRequest,
        RunTaskResult,
        ShipLogsRequest,
    )
    from workflows.deployment import Deployment
    from workflows.interventions import failure_choice, intervention
    from workflows.names import pool_queue
    from workflows.pipeline import Job, Task
    from workflows.release import (
        AgentSession,
        StageStatus,
        TaskRun,
        TaskStatus,
        merged_variables,
        split_secrets,
    )
    from workflows.task_conditions import should_run, task_counts_as_failure

I = TypeVar("I")  # noqa: E741 - an activity's input type
R = TypeVar("R")


class AgentLost(Exception):
    """The agent holding the job's lease stopped heartbeating (crashed or was killed)."""


class HandedBack(Exception):
    """The agent is draining (SIGTERM) and gave the job back: its remaining tasks go to
    another agent, and this does not count as a lost agent."""


# How many times one lease may be renewed after Temporal lost sight of it.
MAX_RENEWALS = 10
# How long a step sent to an agent that has handed its job back may take to answer.
HAND_BACK_GRACE = timedelta(seconds=30)


def log_key(context: JobContext, index: int, task: Task, try_number: int, job_try: int = 1) -> str:
    """Where a task's log lives in the log store: one key per try, a job moved to
    another agent (`.job2`) and a task retried (`.try2`) each get their own."""
    suffix = (f".job{job_try}" if job_try > 1 else "") + (
        f".try{try_number}" if try_number > 1 else ""
    )
    return f"{log_stem(context.log_prefix, index, task.name)}{suffix}.log"


def log_stem(prefix: str, index: int, task_name: str) -> str:
    """The key of a task's logs without the try suffix: `<job prefix>/01-deploy-db`."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", task_name).strip("-").lower() or "task"
    return f"{prefix}/{index:02d}-{slug}"


def task_segments(tasks: list[Task]) -> list[tuple[bool, list[int]]]:
    """Split a job's tasks into runs of agent tasks and server tasks (interventions)."""
    segments: list[tuple[bool, list[int]]] = []
    for index, task in enumerate(tasks):
        if segments and segments[-1][0] == task.runs_on_agent:
            segments[-1][1].append(index)
        else:
            segments.append((task.runs_on_agent, [index]))
    return segments


def lease_time(d: Deployment, job: Job) -> timedelta:
    """How long a lease may last: the job's timeout and a margin, and, on a stage with
    `on_failure`, one person's wait per agent task (the agent stays leased meanwhile, so
    a retry runs in the same work dir; a lease that outlives even that ends as lost)."""
    waits = timedelta(0)
    if d.stage.on_failure is not None:
        asked = [t for t in job.tasks if t.runs_on_agent and not t.continue_on_error]
        waits = d.stage.on_failure.timeout * len(asked)
    return job.timeout + timedelta(minutes=10) + waits


class AgentLease:
    """One agent of a pool held for one try of a job, for as long as the block runs."""

    def __init__(
        self,
        d: Deployment,
        grants: dict[str, LeaseGranted],
        job: Job,
        context: JobContext,
        job_try: int,
    ) -> None:
        self.d, self.grants, self.job, self.context = d, grants, job, context
        self.job_try = job_try
        self.ended_by_agent = False
        self.renewals = 0

    async def __aenter__(self) -> AgentLease:
        job, context = self.job, self.context
        assert job.pool is not None, "a job with agent tasks has a pool (validated)"
        self.handle = LEASE_AGENT.start(
            LeaseRequest(context=context),
            task_queue=pool_queue(job.pool),
            summary=f"lease an agent from pool {job.pool!r} for job {job.name!r}",
            start_to_close=lease_time(self.d, job),
        )
        try:
            await workflow.wait_condition(
                lambda: context.lease_id in self.grants or self.handle.done()
            )
        except asyncio.CancelledError:
            self.handle.cancel()
            raise
        grant = self.grants.get(context.lease_id)
        if grant is None:
            # The lease ended before its agent said where to go: take another agent.
            try:
                await self.handle
            except ActivityError as err:
                raise AgentLost(
                    f"leasing an agent from pool {job.pool!r} failed: {err.cause or err}"
                ) from err
            raise AgentLost("the lease ended before the agent took the job")
        self.granted = grant
        self.session = AgentSession(
            job=job.name,
            try_number=self.job_try,
            agent=grant.agent_name,
            leased_at=workflow.now(),
        )
        self.d.attempt.agents.append(self.session)
        self.d.set_status(StageStatus.IN_PROGRESS)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Clean the work dir; the agent ends the lease in-process so it is free at once."""
        self.session.ended_at = workflow.now()
        if not self.handle.done() and not self.session.lost and not self.ended_by_agent:
            try:
                await self.run(
                    CLEANUP,
                    CleanupRequest(context=self.context),
                    summary="clean up and release the agent",
                )
            except (ActivityError, AgentLost):
                pass
        if not self.handle.done():
            self.handle.cancel()
        try:
            await self.handle
        except (ActivityError, asyncio.CancelledError):
            pass

    async def run(
        self,
        ref: ActivityRef[I, R],
        arg: I,
        *,
        summary: str,
        start_to_close: timedelta | None = None,
    ) -> R:
        """Run one step on the leased agent's own queue, watching the lease.

        If the lease ends first (its heartbeat timed out), the agent is gone:
        the step is abandoned and AgentLost raised.
        """
        if self.handed_back:
            raise HandedBack()
        handle = ref.start(
            arg,
            task_queue=self.granted.task_queue,
            summary=summary,
            start_to_close=start_to_close,
        )
        try:
            while True:
                await workflow.wait([handle, self.handle], return_when=asyncio.FIRST_COMPLETED)
                if handle.done() or _ended_well(self.handle) or not self._renew():
                    break
        except asyncio.CancelledError:
            handle.cancel()
            try:
                await handle
            except BaseException:
                pass
            raise
        if not handle.done() and self.handed_back:
            # A draining agent hands the job back once its running step is done, so that
            # step's result is on its way; a step sent after the hand-back is refused or
            # never picked up: it is not waited for longer than the grace.
            try:
                await workflow.wait_condition(handle.done, timeout=HAND_BACK_GRACE)
            except TimeoutError:
                handle.cancel()
                raise HandedBack() from None
        elif not handle.done() and _ended_well(self.handle):
            # The agent ended the lease itself with this step (the job's last task):
            # the step's own result is on its way.
            await workflow.wait([handle])
        if not handle.done():
            handle.cancel()
            raise AgentLost()
        try:
            result = handle.result()
        except ActivityError as err:
            cause = err.cause
            if isinstance(cause, ApplicationError) and cause.type == "LeaseHandedBack":
                raise HandedBack() from err
            if isinstance(cause, ActivityTimeout) or (
                self.handle.done() and not _ended_well(self.handle)
            ):
                raise AgentLost() from err
            raise
        if getattr(result, "interrupted", False):
            raise HandedBack()
        return result

    @property
    def handed_back(self) -> bool:
        return _ended_well(self.handle) and self.handle.result().ended == "handed_back"

    def _renew(self) -> bool:
        """The lease ended badly. If only its heartbeat timed out — the agent may be fine
        and the Temporal server was away — ask the agent to go on holding it: an agent
        that still has the lease picks the renewal up when it polls again; a dead one
        never does, and the renewal's schedule-to-start timeout says so."""
        error = self.handle.exception() if not self.handle.cancelled() else None
        cause = error.cause if isinstance(error, ActivityError) else None
        if (
            not isinstance(cause, ActivityTimeout)
            or cause.type != TimeoutType.HEARTBEAT
            or self.renewals >= MAX_RENEWALS
            or not workflow.patched("lease-renewal")
        ):
            return False
        self.renewals += 1
        self.handle = RENEW_LEASE.start(
            LeaseRequest(context=self.context),
            task_queue=self.granted.task_queue,
            summary=f"renew the lease on {self.granted.agent_name} (after losing sight of it)",
            start_to_close=lease_time(self.d, self.job),
        )
        return True


def _try_words(try_number: int, tries: int) -> str:
    """` (try 2 of 3)` in a step's summary; past `tries`, a person chose retry."""
    if try_number == 1:
        return ""
    if try_number <= tries:
        return f" (try {try_number} of {tries})"
    return f" (try {try_number}: retry chosen after the task failed)"


def _ended_well(handle: workflow.ActivityHandle[LeaseResult]) -> bool:
    return handle.done() and not handle.cancelled() and handle.exception() is None


class Jobs:
    """Runs a deployment's jobs in order and keeps what happened in its TaskRuns."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.grants: dict[str, LeaseGranted] = {}
        self.error: str | None = None  # the job's own failure (not a task's)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(
            task_counts_as_failure(r) for r in self.d.attempt.tasks
        )

    async def run(self) -> None:
        tasks = self.d.attempt.tasks
        for job in self.d.stage.all_jobs():
            runs = [run for run in tasks if run.job == job.name]
            earlier_failed = any(task_counts_as_failure(r) for r in tasks if r not in runs)
            if earlier_failed or self.error:
                for run in runs:
                    run.status = TaskStatus.SKIPPED
                continue
            await self._run_job(job, runs)

    async def _run_job(self, job: Job, runs: list[TaskRun]) -> None:
        """Run a job's tasks; a manual intervention splits it into segments.

        The agent is not held while a person decides: the tasks after an
        intervention lease an agent again (a fresh work dir, artifacts again).
        """
        for segment, (on_agent, indexes) in enumerate(task_segments(job.tasks)):
            if self.error:
                for index in indexes:
                    runs[index].status = TaskStatus.SKIPPED
                continue
            failed = any(task_counts_as_failure(run) for run in runs)
            if not any(
                should_run(job.tasks[i].condition, job.tasks[i].enabled, failed, canceled=False)
                for i in indexes
            ):
                for index in indexes:
                    runs[index].status = TaskStatus.SKIPPED
                    runs[index].message = f"condition: {job.tasks[index].condition}"
                continue
            if on_agent:
                await self._run_on_agent(job, runs, indexes, segment)
            else:
                self.d.set_status(StageStatus.IN_PROGRESS)
                await self._run_tasks(None, self._context(job, 1), job, runs, indexes)

    async def _run_on_agent(
        self, job: Job, runs: list[TaskRun], indexes: list[int], segment: int
    ) -> None:
        """The segment's tasks on one leased agent; on another if it is lost (up to
        `agent_lost_retries` times) or hands the job back (a drain: not counted)."""
        tries, lost, job_try = 1 + self.d.stage.agent_lost_retries, 0, 0
        pending = list(indexes)
        while lost < tries:
            job_try += 1
            context = self._context(job, job_try, segment)
            try:
                async with AgentLease(self.d, self.grants, job, context, job_try) as lease:
                    try:
                        await self._download(lease, context)
                        await self._run_tasks(lease, context, job, runs, pending)
                        return
                    except ActivityError as err:
                        # Not the task's failure but the job's: e.g. an artifact that cannot be had.
                        cause = (
                            err.cause.message if isinstance(err.cause, ApplicationError) else err
                        )
                        self.error = (
                            f"job {job.name!r} failed on {lease.granted.agent_name}: {cause}"
                        )
                        self.d.attempt.message = self.error
                        return
                    except AgentLost:
                        lease.session.lost = True
                        lost += 1
                        self._lost(lease, job, [runs[i] for i in indexes], lost, tries)
                        pending = list(indexes)
                    except HandedBack:
                        lease.session.handed_back = True
                        pending = self._handed_back(lease, job, runs, pending)
                        if not pending:
                            return
            except AgentLost as gone:
                self.d.attempt.message = str(gone)
                lost += 1
        self.error = f"job {job.name!r}: the agent was lost {tries} times"
        self.d.attempt.message = self.error

    def _handed_back(
        self, lease: AgentLease, job: Job, runs: list[TaskRun], pending: list[int]
    ) -> list[int]:
        """A draining agent gave the job back: what it finished stays finished, the task
        it stopped (if any) and the rest run on another agent."""
        left = []
        for index in pending:
            run = runs[index]
            if run.status in (TaskStatus.PENDING, TaskStatus.IN_PROGRESS):
                run.status, run.exit_code, run.message = TaskStatus.PENDING, None, ""
                left.append(index)
        self.d.attempt.message = (
            f"agent {lease.granted.agent_name} handed job {job.name!r} back (draining)"
            + (f"; {len(left)} task(s) go to another agent" if left else "")
        )
        return left

    def _lost(
        self, lease: AgentLease, job: Job, runs: list[TaskRun], lost: int, tries: int
    ) -> None:
        """The job goes back to pending; each try's log so far stays listed."""
        for run in runs:
            run.status, run.tries, run.exit_code, run.message = TaskStatus.PENDING, 0, None, ""
        self.d.attempt.message = (
            f"agent {lease.granted.agent_name} was lost during job {job.name!r}"
            + (
                f"; moving the job to another agent (try {lost + 1} of {tries})"
                if lost < tries
                else "; no tries left"
            )
        )

    async def _download(self, lease: AgentLease, context: JobContext) -> None:
        artifacts = self.d.spec.artifacts
        if not artifacts:
            return
        versions = ", ".join(f"{a.alias} {a.version}" for a in artifacts)
        await lease.run(
            DOWNLOAD_ARTIFACTS,
            DownloadRequest(context=context, artifacts=artifacts),
            summary=f"download artifacts: {versions}",
        )

    async def _run_tasks(
        self,
        lease: AgentLease | None,
        context: JobContext,
        job: Job,
        runs: list[TaskRun],
        indexes: list[int],
    ) -> None:
        plain, secrets = split_secrets(merged_variables(self.d.spec, self.d.stage))
        for position in indexes:
            task, run, index = job.tasks[position], runs[position], position + 1
            job_failed = any(task_counts_as_failure(r) for r in runs)
            if not should_run(task.condition, task.enabled, job_failed, canceled=False):
                run.status = TaskStatus.SKIPPED
                run.message = "disabled" if not task.enabled else f"condition: {task.condition}"
                continue
            if task.manual_intervention is not None:
                await intervention(self.d, task, run)
                continue
            assert lease is not None, "a job with agent tasks holds a lease"
            run.status, run.started_at, run.agent = (
                TaskStatus.IN_PROGRESS,
                workflow.now(),
                lease.granted.agent_name,
            )
            # Tries: 1 + `retries`, and one more each time a person chooses retry after
            # the last failed (guided failure: the stage's `on_failure`).
            guided = self.d.stage.on_failure is not None and not task.continue_on_error
            last_try, try_number = task.retries + 1, 0
            while try_number < last_try:
                try_number += 1
                run.tries = try_number
                key = log_key(context, index, task, try_number, lease.job_try)
                # Newer agents ship the log at the end of run_task: one round trip less.
                ships_itself = workflow.patched("run-task-ships-log")
                # The segment's last task ends the lease on the agent when it is done
                # (on its last try, or once it succeeds): no separate cleanup step.
                # Guided, only once it succeeds: after a failure a person may choose
                # retry on this agent; after skip or fail, leaving the lease cleans up.
                end_lease: Literal["never", "always", "if_succeeded"] = "never"
                if position == indexes[-1] and workflow.patched("run-task-ends-lease"):
                    final = try_number == last_try and not guided
                    end_lease = "always" if final else "if_succeeded"
                if ships_itself:
                    run.logs.append(key)
                result = await self._try_task(
                    lease,
                    RunTaskRequest(
                        context=context,
                        task=task,
                        index=index,
                        try_number=try_number,
                        variables=plain,
                        secrets=secrets,
                        log_key=key if ships_itself else None,
                        end_lease=end_lease,
                    ),
                )
                if result.lease_ended:
                    lease.ended_by_agent = True
                if result.log_key:
                    run.log = result.log_key
                elif result.log_path:
                    await lease.run(
                        SHIP_LOGS,
                        ShipLogsRequest(context=context, log_path=result.log_path, key=key),
                        summary=f"ship log of {task.name!r}",
                    )
                    run.log = key
                    if key not in run.logs:
                        run.logs.append(key)
                run.exit_code, run.message = result.exit_code, result.message
                if result.succeeded:
                    break
                if guided and try_number == last_try:
                    run.status = TaskStatus.FAILED
                    if await failure_choice(self.d, task, run) == "retry":
                        last_try += 1
                        run.status = TaskStatus.IN_PROGRESS
            run.status = TaskStatus.SUCCEEDED if result.succeeded else TaskStatus.FAILED
            assert run.started_at is not None
            run.duration = workflow.now() - run.started_at

    async def _try_task(self, lease: AgentLease, request: RunTaskRequest) -> RunTaskResult:
        """One try of a task; an error of the agent's own (not the task's) fails the try."""
        task, try_number = request.task, request.try_number
        try:
            return await lease.run(
                RUN_TASK,
                request,
                summary=f"run task {task.name!r}" + _try_words(try_number, task.retries + 1),
            )
        except ActivityError as err:
            cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            return RunTaskResult(succeeded=False, duration=timedelta(0), log_path="", message=cause)

    def _context(self, job: Job, try_number: int, segment: int = 0) -> JobContext:
        spec = self.d.spec
        return JobContext(
            pipeline=spec.pipeline.name,
            release=spec.name,
            number=spec.number,
            stage=self.d.stage.name,
            attempt=self.d.input.attempt,
            job=job.name,
            lease_id=f"{workflow.info().workflow_id}#{job.name}#{try_number}"
            + (f"@{segment}" if segment else ""),
        )
