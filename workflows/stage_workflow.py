"""StageWorkflow: one deployment of one stage of a release (a child of the release).

Reads like the process it runs: lease an agent from the stage's pool, download
the release's artifacts there, run the tasks in order by their conditions and
ship each task's log, end the lease, report the outcome. A job whose agent dies
moves to another agent of the pool.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from workflows.agent_api import (
        LEASE_GRANTED_SIGNAL,
        CleanupRequest,
        DownloadRequest,
        DownloadResult,
        JobContext,
        LeaseGranted,
        LeaseRequest,
        LeaseResult,
        RunTaskRequest,
        RunTaskResult,
        ShipLogsRequest,
        ShipLogsResult,
    )
    from workflows.names import (
        SA_CREATED_BY,
        SA_PIPELINE,
        SA_RELEASE,
        SA_STAGE,
        SA_STATUS,
        pool_queue,
    )
    from workflows.pipeline import Job, Model, Task
    from workflows.release import (
        AgentSession,
        CancelRequest,
        ReleaseSpec,
        StageAttempt,
        StageStatus,
        TaskRun,
        TaskStatus,
        merged_variables,
        split_secrets,
    )
    from workflows.task_conditions import should_run, stage_outcome, task_counts_as_failure

R = TypeVar("R")

# The lease heartbeats while the agent lives; this is how fast a dead agent is noticed.
LEASE_HEARTBEAT_TIMEOUT = timedelta(seconds=5)
TASK_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
NO_RETRY = RetryPolicy(maximum_attempts=1)
# Bookkeeping on the agent (ship a log, clean up) is idempotent: retry it a little.
FEW_RETRIES = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=200))


class StageInput(Model):
    """Input of a StageWorkflow: which stage of which release, and why it runs."""

    spec: ReleaseSpec
    stage: str
    attempt: int
    triggered_by: str
    reason: str


class AgentLost(Exception):
    """The agent holding the job's lease stopped heartbeating (crashed or was killed)."""


@dataclass
class Lease:
    context: JobContext
    handle: workflow.ActivityHandle[LeaseResult]
    granted: LeaseGranted
    session: AgentSession


def log_key(context: JobContext, index: int, task: Task, try_number: int) -> str:
    """Where a task's log lives in the log store."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task.name).strip("-").lower() or "task"
    suffix = f".try{try_number}" if try_number > 1 else ""
    return f"{context.log_prefix}/{index:02d}-{slug}{suffix}.log"


@workflow.defn(name="StageWorkflow")
class StageWorkflow:
    """One deployment of a stage: agent lease, artifacts, tasks, logs."""

    @workflow.init
    def __init__(self, input: StageInput) -> None:
        self._input = input
        self._stage = input.spec.pipeline.stage(input.stage)
        info = workflow.info()
        self._attempt = StageAttempt(
            attempt=input.attempt,
            status=StageStatus.QUEUED,
            workflow_id=info.workflow_id,
            triggered_by=input.triggered_by,
            reason=input.reason,
            started_at=workflow.now(),
            tasks=[
                TaskRun(
                    job=job.name,
                    task=task.name,
                    continue_on_error=task.continue_on_error,
                )
                for job in self._stage.all_jobs()
                for task in job.tasks
            ],
        )
        self._grants: dict[str, LeaseGranted] = {}
        self._cancel: CancelRequest | None = None
        self._jobs_task: asyncio.Task[None] | None = None
        self._job_error: str | None = None

    @workflow.run
    async def run(self, input: StageInput) -> StageAttempt:
        self._jobs_task = asyncio.create_task(self._run_jobs())
        try:
            await self._jobs_task
        except asyncio.CancelledError:
            # Canceled by the `cancel` signal, or the workflow itself was canceled.
            if self._cancel is None:
                self._cancel = CancelRequest(by="temporal", reason="workflow canceled")
        for run in self._attempt.tasks:
            if run.status in (TaskStatus.PENDING, TaskStatus.IN_PROGRESS):
                run.status = TaskStatus.CANCELED if self._cancel else TaskStatus.SKIPPED
        status = stage_outcome(
            self._attempt.tasks,
            canceled=self._cancel is not None,
            job_failed=self._job_error is not None,
        )
        if self._cancel is not None:
            self._attempt.message = f"canceled by {self._cancel.by}" + (
                f": {self._cancel.reason}" if self._cancel.reason else ""
            )
        self._attempt.ended_at = workflow.now()
        self._set_status(status)
        return self._attempt

    @workflow.signal
    def cancel(self, request: CancelRequest) -> None:
        """Stop this deployment: running tasks are killed, the rest do not run."""
        if self._cancel is None and not self._attempt.status.is_final:
            self._cancel = request
            if self._jobs_task is not None:
                self._jobs_task.cancel()

    @workflow.signal(name=LEASE_GRANTED_SIGNAL)
    def lease_granted(self, grant: LeaseGranted) -> None:
        """Sent by the agent that took the lease: run this job's steps on my queue."""
        self._grants[grant.lease_id] = grant

    @workflow.query
    def progress(self) -> StageAttempt:
        """This deployment as it stands: status, agents, every task's state and log."""
        return self._attempt

    # --- the steps --------------------------------------------------------------

    async def _run_jobs(self) -> None:
        for job in self._stage.all_jobs():
            job_runs = [run for run in self._attempt.tasks if run.job == job.name]
            earlier_failed = any(
                task_counts_as_failure(run) for run in self._attempt.tasks if run not in job_runs
            )
            if earlier_failed or self._job_error:
                for run in job_runs:
                    run.status = TaskStatus.SKIPPED
                continue
            await self._run_job(job, job_runs)

    async def _run_job(self, job: Job, runs: list[TaskRun]) -> None:
        tries = 1 + self._stage.agent_lost_retries
        for try_number in range(1, tries + 1):
            context = self._job_context(job, try_number)
            try:
                lease = await self._lease(job, context)
            except AgentLost as lost:
                self._attempt.message = str(lost)
                continue
            try:
                await self._download(lease, context)
                await self._run_tasks(lease, context, job, runs)
                return
            except ActivityError as err:
                # Not the task's failure but the job's: e.g. an artifact that cannot be had.
                self._job_error = f"job {job.name!r} failed on {lease.granted.agent_name}: " + (
                    err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
                )
                self._attempt.message = self._job_error
                return
            except AgentLost:
                lease.session.lost = True
                for run in runs:
                    run.status, run.tries, run.exit_code, run.message = (
                        TaskStatus.PENDING,
                        0,
                        None,
                        "",
                    )
                self._attempt.message = (
                    f"agent {lease.granted.agent_name} was lost during job {job.name!r}"
                    + (
                        f"; moving the job to another agent (try {try_number + 1} of {tries})"
                        if try_number < tries
                        else "; no tries left"
                    )
                )
            finally:
                await self._end_lease(lease)
        self._job_error = f"job {job.name!r}: the agent was lost {tries} times"
        self._attempt.message = self._job_error

    async def _lease(self, job: Job, context: JobContext) -> Lease:
        """Hold one agent of the pool for the job; the agent signals where to send steps."""
        assert job.pool is not None, "a job with agent tasks has a pool (validated)"
        handle = workflow.start_activity(
            "lease_agent",
            LeaseRequest(context=context),
            result_type=LeaseResult,
            task_queue=pool_queue(job.pool),
            start_to_close_timeout=job.timeout + timedelta(minutes=10),
            heartbeat_timeout=LEASE_HEARTBEAT_TIMEOUT,
            retry_policy=NO_RETRY,
            summary=f"lease an agent from pool {job.pool!r} for job {job.name!r}",
        )
        try:
            await workflow.wait_condition(lambda: context.lease_id in self._grants or handle.done())
        except asyncio.CancelledError:
            handle.cancel()
            raise
        grant = self._grants.get(context.lease_id)
        if grant is None:
            # The lease ended before its agent said where to go: take another agent.
            try:
                await handle
            except ActivityError as err:
                raise AgentLost(
                    f"leasing an agent from pool {job.pool!r} failed: {err.cause or err}"
                ) from err
            raise AgentLost("the lease ended before the agent took the job")
        session = AgentSession(
            job=job.name,
            try_number=int(context.lease_id.rsplit("#", 1)[1]),
            agent=grant.agent_name,
            leased_at=workflow.now(),
        )
        self._attempt.agents.append(session)
        self._set_status(StageStatus.IN_PROGRESS)
        return Lease(context=context, handle=handle, granted=grant, session=session)

    async def _download(self, lease: Lease, context: JobContext) -> None:
        if not self._input.spec.artifacts:
            return
        versions = ", ".join(f"{a.alias} {a.version}" for a in self._input.spec.artifacts)
        await self._on_agent(
            lease,
            "download_artifacts",
            DownloadRequest(context=context, artifacts=self._input.spec.artifacts),
            DownloadResult,
            summary=f"download artifacts: {versions}",
            timeout=timedelta(hours=2),
        )

    async def _run_tasks(
        self, lease: Lease, context: JobContext, job: Job, runs: list[TaskRun]
    ) -> None:
        variables = merged_variables(self._input.spec, self._stage)
        plain, secrets = split_secrets(variables)
        for index, (task, run) in enumerate(zip(job.tasks, runs, strict=True), start=1):
            job_failed = any(task_counts_as_failure(r) for r in runs)
            if not should_run(task.condition, task.enabled, job_failed, canceled=False):
                run.status = TaskStatus.SKIPPED
                run.message = "disabled" if not task.enabled else f"condition: {task.condition}"
                continue
            run.status, run.started_at, run.agent = (
                TaskStatus.IN_PROGRESS,
                workflow.now(),
                lease.granted.agent_name,
            )
            for try_number in range(1, task.retries + 2):
                run.tries = try_number
                result = await self._try_task(
                    lease,
                    RunTaskRequest(
                        context=context,
                        task=task,
                        index=index,
                        try_number=try_number,
                        variables=plain,
                        secrets=secrets,
                    ),
                )
                if result.log_path:
                    key = log_key(context, index, task, try_number)
                    await self._on_agent(
                        lease,
                        "ship_logs",
                        ShipLogsRequest(context=context, log_path=result.log_path, key=key),
                        ShipLogsResult,
                        summary=f"ship log of {task.name!r}",
                        timeout=timedelta(minutes=10),
                        retry=FEW_RETRIES,
                    )
                    run.log = key
                run.exit_code, run.message = result.exit_code, result.message
                if result.succeeded:
                    break
            run.status = TaskStatus.SUCCEEDED if result.succeeded else TaskStatus.FAILED
            assert run.started_at is not None
            run.duration = workflow.now() - run.started_at

    async def _try_task(self, lease: Lease, request: RunTaskRequest) -> RunTaskResult:
        """One try of a task; an error of the agent's own (not the task's) fails the try."""
        task, try_number = request.task, request.try_number
        try:
            return await self._on_agent(
                lease,
                "run_task",
                request,
                RunTaskResult,
                summary=f"run task {task.name!r}"
                + (f" (try {try_number} of {task.retries + 1})" if try_number > 1 else ""),
                timeout=task.timeout + timedelta(minutes=1),
                heartbeat=TASK_HEARTBEAT_TIMEOUT,
            )
        except ActivityError as err:
            cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err)
            return RunTaskResult(succeeded=False, duration=timedelta(0), log_path="", message=cause)

    async def _end_lease(self, lease: Lease) -> None:
        """Clean the work dir; the agent ends the lease in-process so it is free at once."""
        lease.session.ended_at = workflow.now()
        if not lease.handle.done() and not lease.session.lost:
            try:
                await self._on_agent(
                    lease,
                    "cleanup",
                    CleanupRequest(context=lease.context),
                    type(None),
                    summary="clean up and release the agent",
                    timeout=timedelta(minutes=5),
                    retry=FEW_RETRIES,
                )
            except (ActivityError, AgentLost):
                pass
        if not lease.handle.done():
            lease.handle.cancel()
        try:
            await lease.handle
        except (ActivityError, asyncio.CancelledError):
            pass

    async def _on_agent(
        self,
        lease: Lease,
        activity: str,
        arg: Any,
        result_type: type[R],
        *,
        summary: str,
        timeout: timedelta,
        heartbeat: timedelta | None = None,
        retry: RetryPolicy = NO_RETRY,
    ) -> R:
        """Run one step on the leased agent's own queue, watching the lease.

        If the lease ends first (its heartbeat timed out), the agent is gone:
        the step is abandoned and AgentLost raised.
        """
        handle = workflow.start_activity(
            activity,
            arg,
            result_type=result_type,
            task_queue=lease.granted.task_queue,
            start_to_close_timeout=timeout,
            heartbeat_timeout=heartbeat,
            retry_policy=retry,
            cancellation_type=(
                workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                if heartbeat
                else workflow.ActivityCancellationType.TRY_CANCEL
            ),
            summary=summary,
        )
        try:
            await workflow.wait([handle, lease.handle], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            handle.cancel()
            try:
                await handle
            except BaseException:
                pass
            raise
        if not handle.done():
            handle.cancel()
            raise AgentLost()
        try:
            return handle.result()
        except ActivityError as err:
            if isinstance(err.cause, TimeoutError) or lease.handle.done():
                raise AgentLost() from err
            raise

    # --- bookkeeping --------------------------------------------------------------

    def _job_context(self, job: Job, try_number: int) -> JobContext:
        spec = self._input.spec
        return JobContext(
            pipeline=spec.pipeline.name,
            release=spec.name,
            number=spec.number,
            stage=self._stage.name,
            attempt=self._input.attempt,
            job=job.name,
            lease_id=f"{workflow.info().workflow_id}#{job.name}#{try_number}",
        )

    def _set_status(self, status: StageStatus) -> None:
        if self._attempt.status == status:
            return  # the parent started us with this status already
        self._attempt.status = status
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])


def stage_search_attributes(
    spec: ReleaseSpec, stage: str, status: StageStatus
) -> TypedSearchAttributes:
    """Search attributes a StageWorkflow starts with (kept current by upserts)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(SA_PIPELINE, spec.pipeline.name),
            SearchAttributePair(SA_RELEASE, spec.name),
            SearchAttributePair(SA_STAGE, stage),
            SearchAttributePair(SA_STATUS, status.value),
            SearchAttributePair(SA_CREATED_BY, spec.created_by),
        ]
    )
