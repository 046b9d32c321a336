"""StageWorkflow: one deployment of one stage of a release (a child of the release).

Reads like the process it runs (DESIGN.md, "StageWorkflow"): wait for the
stage's schedule window and outside its freezes; pre-deployment approvals and
gates; a deferral an approver asked for; the jobs — lease an agent from the
pool, download the release's artifacts there, run the tasks by their
conditions and ship each task's log, end the lease (a job whose agent dies
moves to another agent); post-deployment gates and approvals; the outcome.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import Field
from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout

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
    from workflows.approval_policy import ApprovalPolicy, ApprovalState, Decision, DecisionRecord
    from workflows.control_api import (
        CheckRequest,
        CheckResult,
        NotificationRequest,
        NotificationResult,
        Recipient,
        ReleaseSummary,
        StartPlan,
        StartPlanRequest,
    )
    from workflows.gates import CheckOutcome, GateEvaluation, GateState, GateWindow
    from workflows.names import (
        SA_CREATED_BY,
        SA_PIPELINE,
        SA_RELEASE,
        SA_STAGE,
        SA_STATUS,
        pool_queue,
    )
    from workflows.pipeline import (
        Approvals,
        Conditions,
        GateCheck,
        Gates,
        Job,
        Model,
        Task,
        format_duration,
    )
    from workflows.release import (
        AgentSession,
        AuditEvent,
        CancelRequest,
        DeployNow,
        GateIgnore,
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
# A mail is retried for a while, in the background: it never holds up a deployment.
MAIL_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=10,
)


class StageInput(Model):
    """Input of a StageWorkflow: which stage of which release, and why it runs."""

    spec: ReleaseSpec
    stage: str
    attempt: int
    triggered_by: str
    reason: str
    approved_upstream: list[str] = Field(
        [], description="who approved the upstream stages (skip_if_approved_previous_stage)"
    )


class Rejected(Exception):
    """A person or a gate said no (or time ran out): the deployment is rejected."""


@dataclass
class PendingIntervention:
    task: str
    approvers: list[str]
    decision: Literal["resume", "reject"] | None = None
    by: str = ""
    comment: str = ""


class AgentLost(Exception):
    """The agent holding the job's lease stopped heartbeating (crashed or was killed)."""


@dataclass
class Lease:
    context: JobContext
    handle: workflow.ActivityHandle[LeaseResult]
    granted: LeaseGranted
    session: AgentSession
    ended_by_agent: bool = False


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
        self._policies: dict[str, ApprovalPolicy] = {}
        self._pending_intervention: PendingIntervention | None = None
        self._deploy_now: DeployNow | None = None

    @workflow.run
    async def run(self, input: StageInput) -> StageAttempt:
        rejected: str | None = None
        self._jobs_task = asyncio.create_task(self._deploy())
        try:
            await self._jobs_task
        except asyncio.CancelledError:
            # Canceled by the `cancel` signal, or the workflow itself was canceled.
            if self._cancel is None:
                self._cancel = CancelRequest(by="temporal", reason="workflow canceled")
        except Rejected as no:
            rejected = str(no)
        for run in self._attempt.tasks:
            if run.status in (TaskStatus.PENDING, TaskStatus.IN_PROGRESS):
                run.status = TaskStatus.CANCELED if self._cancel else TaskStatus.SKIPPED
        status = stage_outcome(
            self._attempt.tasks,
            canceled=self._cancel is not None,
            job_failed=self._job_error is not None,
        )
        if rejected is not None and self._cancel is None:
            status = StageStatus.REJECTED
            self._attempt.message = rejected
        self._attempt.waiting_until, self._attempt.waiting_reason = None, ""
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

    @workflow.signal
    def approve(self, decision: Decision) -> None:
        """An approver's yes (optionally `defer_until`) for the pending approval of a phase."""
        self._decide(decision, approve=True)

    @workflow.signal
    def reject(self, decision: Decision) -> None:
        """No: rejects the pending manual intervention, else the pending approval."""
        if self._pending_intervention is not None and self._pending_intervention.decision is None:
            self._decide_intervention(decision, "reject")
        else:
            self._decide(decision, approve=False)

    @workflow.signal
    def resume(self, decision: Decision) -> None:
        """Go on after a manual intervention."""
        self._decide_intervention(decision, "resume")

    @workflow.signal
    def deploy_now(self, request: DeployNow) -> None:
        """End a deferral early; only an approver of the stage may."""
        approval = self._attempt.approval("pre")
        policy = self._policies.get("pre")
        if self._attempt.status != StageStatus.DEFERRED or approval is None or policy is None:
            self._refuse(
                request.by, "deploy_now", "the deployment is not deferred", request.request_id
            )
        elif not policy.is_approver(request.by):
            self._refuse(
                request.by, "deploy_now", f"{request.by} is not an approver", request.request_id
            )
        elif self._deploy_now is None:
            self._deploy_now = request
            self._accept(request.by, "deploy_now", "deferral ended early", request.request_id)

    @workflow.signal
    def ignore_gate(self, request: GateIgnore) -> None:
        """Let one gate check count as healthy from now on; only an approver may."""
        gates = next((g for g in reversed(self._attempt.gates) if g.phase == request.phase), None)
        conditions = self._conditions_of(request.phase)
        labels = (
            [c.label for c in conditions.gates.checks] if conditions and conditions.gates else []
        )
        approvers = {
            user
            for c in (self._stage.pre_deployment, self._stage.post_deployment)
            if c and c.approvals
            for entry in c.approvals.approvers
            for user in self._input.spec.pipeline.members(entry)
        }
        if request.check not in labels:
            reason = f"no {request.phase}-deployment gate check {request.check!r}" + (
                f" (checks: {', '.join(labels)})" if labels else ""
            )
            self._refuse(request.by, "ignore_gate", reason, request.request_id)
        elif approvers and request.by not in approvers:
            self._refuse(
                request.by, "ignore_gate", f"{request.by} is not an approver", request.request_id
            )
        elif gates is None or gates.status not in ("waiting", "evaluating"):
            self._refuse(
                request.by,
                "ignore_gate",
                f"the {request.phase}-deployment gates are not being evaluated",
                request.request_id,
            )
        else:
            gates.ignored = sorted({*gates.ignored, request.check})
            self._accept(
                request.by, "ignore_gate", f"check {request.check!r} ignored", request.request_id
            )

    @workflow.signal(name=LEASE_GRANTED_SIGNAL)
    def lease_granted(self, grant: LeaseGranted) -> None:
        """Sent by the agent that took the lease: run this job's steps on my queue."""
        self._grants[grant.lease_id] = grant

    @workflow.query
    def progress(self) -> StageAttempt:
        """This deployment as it stands: status, agents, every task's state and log."""
        return self._attempt

    # --- the steps --------------------------------------------------------------

    async def _deploy(self) -> None:
        await self._wait_for_start()
        await self._conditions("pre")
        await self._deferral()
        await self._run_jobs()
        if not any(task_counts_as_failure(r) for r in self._attempt.tasks) and not self._job_error:
            await self._conditions("post")

    async def _wait_for_start(self) -> None:
        """The schedule window and the freezes; the activity computes it, history keeps it."""
        if self._stage.schedule is None and not self._stage.freezes:
            return
        plan = await workflow.execute_activity(
            "plan_start",
            StartPlanRequest(
                schedule=self._stage.schedule, freezes=self._stage.freezes, now=workflow.now()
            ),
            result_type=StartPlan,
            task_queue=workflow.info().task_queue,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=FEW_RETRIES,
            summary="plan the start: schedule window and freezes",
        )
        wait = plan.start_at - workflow.now()
        if wait <= timedelta(0):
            return
        self._attempt.waiting_until = plan.start_at
        self._attempt.waiting_reason = "; ".join(w.detail for w in plan.waits)
        self._set_status(StageStatus.SCHEDULED)
        await workflow.sleep(
            wait, summary=f"scheduled until {_utc(plan.start_at)}: {self._attempt.waiting_reason}"
        )
        self._attempt.waiting_until, self._attempt.waiting_reason = None, ""
        self._set_status(StageStatus.QUEUED)

    async def _conditions(self, phase: Literal["pre", "post"]) -> None:
        conditions = self._conditions_of(phase)
        if conditions is None:
            return
        steps = [conditions.approvals and "approvals", conditions.gates and "gates"]
        if conditions.order == "gates_then_approvals":
            steps.reverse()
        for step in steps:
            if step == "approvals" and conditions.approvals:
                await self._approval(phase, conditions.approvals)
            elif step == "gates" and conditions.gates:
                await self._gates(phase, conditions.gates)
        self._set_status(StageStatus.QUEUED if phase == "pre" else StageStatus.IN_PROGRESS)

    async def _approval(self, phase: Literal["pre", "post"], approvals: Approvals) -> None:
        """Wait for people: policy any/all/sequence; a timeout rejects."""
        spec = self._input.spec
        policy = ApprovalPolicy(approvals, spec.pipeline, spec.created_by)
        state = ApprovalState(
            phase=phase,
            policy=approvals.policy,
            approvers=approvals.approvers,
            deadline=workflow.now() + approvals.timeout,
        )
        self._attempt.approvals.append(state)
        if approvals.skip_if_approved_previous_stage and policy.covered_by(
            set(self._input.approved_upstream)
        ):
            state.status = "skipped"
            self._accept(
                "stageflow",
                "approve",
                f"{phase}-deployment approval skipped: "
                f"{', '.join(self._input.approved_upstream)} approved the previous stage",
            )
            return
        self._policies[phase] = policy
        self._set_status(StageStatus.WAITING_FOR_APPROVAL)
        ref = spec.reference
        for user in policy.users():
            command = (
                f"stageflow approve {ref} {self._stage.name}"
                + (" --post" if phase == "post" else "")
                + f" --as {shlex.quote(user)}"
            )
            self._notify(
                "approval_pending",
                [user],
                phase=phase,
                deadline=state.deadline,
                approvers=approvals.approvers,
                command=command,
                reject_command=command.replace("stageflow approve", "stageflow reject", 1)
                + " --comment 'why'",
            )
        if self._stage.notify and "waiting_for_approval" in self._stage.notify.on:
            watchers = [u for u in self._people(self._stage.notify.to) if u not in policy.users()]
            if watchers:
                self._notify(
                    "approval_pending",
                    watchers,
                    phase=phase,
                    deadline=state.deadline,
                    approvers=approvals.approvers,
                )
        try:
            await workflow.wait_condition(
                lambda: state.status != "pending",
                timeout=approvals.timeout,
                timeout_summary=f"{phase}-deployment approval expires after "
                f"{format_duration(approvals.timeout)}",
            )
        except TimeoutError:
            state.status = "timed_out"
            self._accept(
                "stageflow",
                "reject",
                f"{phase}-deployment approval timed out after {format_duration(approvals.timeout)}",
            )
            raise Rejected(
                f"{phase}-deployment approval timed out after {format_duration(approvals.timeout)}"
            ) from None
        if state.status == "rejected":
            last = state.decisions[-1]
            raise Rejected(
                f"{phase}-deployment approval rejected by {last.by}"
                + (f": {last.comment}" if last.comment else "")
            )

    async def _deferral(self) -> None:
        """An approver asked for a later start: a durable timer; `deploy_now` ends it."""
        approval = self._attempt.approval("pre")
        if approval is None or approval.defer_until is None:
            return
        wait = approval.defer_until - workflow.now()
        if wait <= timedelta(0):
            return
        self._attempt.waiting_until = approval.defer_until
        self._attempt.waiting_reason = "deferred by an approver"
        self._set_status(StageStatus.DEFERRED)
        try:
            await workflow.wait_condition(
                lambda: self._deploy_now is not None,
                timeout=wait,
                timeout_summary=f"deferred until {_utc(approval.defer_until)}",
            )
        except TimeoutError:
            pass
        self._attempt.waiting_until, self._attempt.waiting_reason = None, ""
        self._set_status(StageStatus.QUEUED)

    async def _gates(self, phase: Literal["pre", "post"], gates: Gates) -> None:
        """Sample every check each interval until all pass long enough; a timeout rejects."""
        now = workflow.now()
        state = GateState(phase=phase, started_at=now, deadline=GateWindow.deadline(gates, now))
        self._attempt.gates.append(state)
        self._set_status(StageStatus.EVALUATING_GATES)
        window = GateWindow(gates, state)
        if gates.delay > timedelta(0):
            await workflow.sleep(
                gates.delay,
                summary=f"{phase}-deployment gates: delay "
                f"{format_duration(gates.delay)} before the first evaluation",
            )
        state.status = "evaluating"
        while True:
            evaluation = await self._evaluate(gates.checks, state)
            if window.record(evaluation):
                return
            now = workflow.now()
            if window.timed_out(now):
                state.status = "timed_out"
                unhealthy = [r.check for r in evaluation.results if not (r.healthy or r.ignored)]
                raise Rejected(
                    f"{phase}-deployment gates timed out after {format_duration(gates.timeout)}"
                    + (
                        f" (unhealthy: {', '.join(unhealthy)})"
                        if unhealthy
                        else " (healthy, but not for min_success_duration)"
                    )
                )
            wait = min(gates.interval, state.deadline - now)
            await workflow.sleep(
                max(wait, timedelta(seconds=1)),
                summary=f"{phase}-deployment gates: next evaluation in {format_duration(wait)}",
            )

    async def _evaluate(self, checks: list[GateCheck], state: GateState) -> GateEvaluation:
        """All checks at once; an error or a missing agent counts as unhealthy."""
        variables, _ = split_secrets(merged_variables(self._input.spec, self._stage))

        async def one(check: GateCheck) -> CheckOutcome:
            if check.label in state.ignored:
                return CheckOutcome(check=check.label, healthy=True, reason="ignored", ignored=True)
            if check.http is not None:
                name, queue, timeout = "check_http", workflow.info().task_queue, check.http.timeout
            else:
                assert check.script is not None
                name, queue, timeout = (
                    "run_check",
                    pool_queue(check.script.pool),
                    check.script.timeout,
                )
            try:
                result = await workflow.execute_activity(
                    name,
                    CheckRequest(check=check, variables=variables),
                    result_type=CheckResult,
                    task_queue=queue,
                    schedule_to_close_timeout=timeout + timedelta(seconds=30),
                    retry_policy=NO_RETRY,
                    summary=f"gate check {check.label!r}",
                )
            except ActivityError as err:
                cause = err.cause
                reason = (
                    f"no agent of pool {check.script.pool!r} ran the check in time"
                    if isinstance(cause, ActivityTimeout) and check.script is not None
                    else str(cause.message if isinstance(cause, ApplicationError) else cause or err)
                )
                return CheckOutcome(check=check.label, healthy=False, reason=reason)
            return CheckOutcome(check=check.label, healthy=result.healthy, reason=result.reason)

        results = await asyncio.gather(*(one(check) for check in checks))
        return GateEvaluation(time=workflow.now(), results=list(results))

    async def _intervention(self, task: Task, run: TaskRun) -> None:
        """A manual intervention: wait for `resume` or `reject`; on timeout, as configured."""
        spec = task.manual_intervention
        assert spec is not None
        pending = PendingIntervention(task=task.name, approvers=spec.approvers)
        self._pending_intervention = pending
        previous = self._attempt.status
        deadline = workflow.now() + spec.timeout
        self._attempt.waiting_until, self._attempt.waiting_reason = deadline, spec.instructions
        run.status, run.started_at, run.message = (
            TaskStatus.IN_PROGRESS,
            workflow.now(),
            spec.instructions,
        )
        self._set_status(StageStatus.WAITING_FOR_INTERVENTION)
        ref = self._input.spec.reference
        people = self._people(spec.approvers) or (
            self._people(self._stage.notify.to) if self._stage.notify else []
        )
        for user in people:
            command = f"stageflow resume {ref} {self._stage.name} --as {shlex.quote(user)}"
            self._notify(
                "intervention_pending",
                [user],
                deadline=deadline,
                approvers=spec.approvers,
                command=command,
                instructions=spec.instructions,
                reject_command=f"stageflow reject {ref} {self._stage.name} --as "
                f"{shlex.quote(user)} --comment 'why'",
            )
        try:
            await workflow.wait_condition(
                lambda: pending.decision is not None,
                timeout=spec.timeout,
                timeout_summary=f"manual intervention {task.name!r} times out "
                f"({spec.on_timeout} after {format_duration(spec.timeout)})",
            )
        except TimeoutError:
            pending.decision, pending.by = spec.on_timeout, "stageflow"
            pending.comment = f"timed out after {format_duration(spec.timeout)}"
            self._accept(
                "stageflow",
                spec.on_timeout,
                f"manual intervention {task.name!r} {pending.comment}: {spec.on_timeout}",
            )
        finally:
            self._pending_intervention = None
            self._attempt.waiting_until, self._attempt.waiting_reason = None, ""
        run.duration = workflow.now() - (run.started_at or workflow.now())
        run.message = f"{pending.decision} by {pending.by}" + (
            f": {pending.comment}" if pending.comment else ""
        )
        if pending.decision == "reject":
            run.status = TaskStatus.FAILED
            raise Rejected(
                f"manual intervention {task.name!r} rejected by {pending.by}"
                + (f": {pending.comment}" if pending.comment else "")
            )
        run.status = TaskStatus.SUCCEEDED
        self._set_status(previous)

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
        """Run a job's tasks; a manual intervention splits it into segments.

        The agent is not held while a person decides: the tasks after an
        intervention lease an agent again (a fresh work dir, artifacts again).
        """
        for segment, (on_agent, indexes) in enumerate(task_segments(job.tasks)):
            if self._job_error:
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
                self._set_status(StageStatus.IN_PROGRESS)
                await self._run_tasks(None, self._job_context(job, 1), job, runs, indexes)

    async def _run_on_agent(
        self, job: Job, runs: list[TaskRun], indexes: list[int], segment: int
    ) -> None:
        tries = 1 + self._stage.agent_lost_retries
        for try_number in range(1, tries + 1):
            context = self._job_context(job, try_number, segment)
            try:
                lease = await self._lease(job, context, try_number)
            except AgentLost as lost:
                self._attempt.message = str(lost)
                continue
            try:
                await self._download(lease, context)
                await self._run_tasks(lease, context, job, runs, indexes)
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
                for index in indexes:
                    run = runs[index]
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

    async def _lease(self, job: Job, context: JobContext, try_number: int) -> Lease:
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
            try_number=try_number,
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
        self,
        lease: Lease | None,
        context: JobContext,
        job: Job,
        runs: list[TaskRun],
        indexes: list[int],
    ) -> None:
        variables = merged_variables(self._input.spec, self._stage)
        plain, secrets = split_secrets(variables)
        for position in indexes:
            task, run, index = job.tasks[position], runs[position], position + 1
            job_failed = any(task_counts_as_failure(r) for r in runs)
            if not should_run(task.condition, task.enabled, job_failed, canceled=False):
                run.status = TaskStatus.SKIPPED
                run.message = "disabled" if not task.enabled else f"condition: {task.condition}"
                continue
            if task.manual_intervention is not None:
                await self._intervention(task, run)
                continue
            assert lease is not None, "a job with agent tasks holds a lease"
            run.status, run.started_at, run.agent = (
                TaskStatus.IN_PROGRESS,
                workflow.now(),
                lease.granted.agent_name,
            )
            for try_number in range(1, task.retries + 2):
                run.tries = try_number
                key = log_key(context, index, task, try_number)
                # Newer agents ship the log at the end of run_task: one round trip less.
                ships_itself = workflow.patched("run-task-ships-log")
                # The segment's last task ends the lease on the agent when it is done
                # (on its last try, or once it succeeds): no separate cleanup step.
                end_lease: Literal["never", "always", "if_succeeded"] = "never"
                if position == indexes[-1] and workflow.patched("run-task-ends-lease"):
                    end_lease = "always" if try_number == task.retries + 1 else "if_succeeded"
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
        if not lease.handle.done() and not lease.session.lost and not lease.ended_by_agent:
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
        if not handle.done() and _ended_well(lease.handle):
            # The agent ended the lease itself with this step (the job's last task):
            # the step's own result is on its way.
            await workflow.wait([handle])
        if not handle.done():
            handle.cancel()
            raise AgentLost()
        try:
            return handle.result()
        except ActivityError as err:
            if isinstance(err.cause, ActivityTimeout) or (
                lease.handle.done() and not _ended_well(lease.handle)
            ):
                raise AgentLost() from err
            raise

    # --- decisions ---------------------------------------------------------------

    def _decide(self, decision: Decision, approve: bool) -> None:
        action = "approve" if approve else "reject"
        state = self._attempt.approval(decision.phase)
        policy = self._policies.get(decision.phase)
        if state is None or policy is None:
            self._refuse(
                decision.by,
                action,
                f"no {decision.phase}-deployment approval is pending",
                decision.request_id,
                decision.comment,
            )
            return
        accepted, reason, entry = policy.judge(state, decision.by, approve)
        record = DecisionRecord(
            time=workflow.now(),
            by=decision.by,
            action=action,
            comment=decision.comment,
            defer_until=decision.defer_until if approve else None,
            outcome="accepted" if accepted else "refused",
            reason=reason,
            request_id=decision.request_id,
        )
        state.decisions.append(record)
        if not accepted:
            self._refuse(decision.by, action, reason, decision.request_id, decision.comment)
            return
        assert entry is not None
        policy.apply(state, entry, approve)
        if approve and decision.defer_until is not None and decision.phase == "pre":
            state.defer_until = max(filter(None, [state.defer_until, decision.defer_until]))
        detail = (
            f"{decision.phase}-deployment"
            + (
                f", deferred until {_utc(decision.defer_until)}"
                if approve and decision.defer_until
                else ""
            )
            + (f": {decision.comment}" if decision.comment else "")
        )
        self._accept(decision.by, action, detail, decision.request_id)

    def _decide_intervention(self, decision: Decision, action: Literal["resume", "reject"]) -> None:
        pending = self._pending_intervention
        if pending is None or pending.decision is not None:
            self._refuse(
                decision.by, action, "no manual intervention is pending", decision.request_id
            )
            return
        allowed = self._people(pending.approvers)
        if allowed and decision.by not in allowed:
            self._refuse(
                decision.by,
                action,
                f"{decision.by} may not decide this intervention "
                f"(approvers: {', '.join(pending.approvers)})",
                decision.request_id,
            )
            return
        pending.decision, pending.by, pending.comment = action, decision.by, decision.comment
        self._accept(
            decision.by,
            action,
            f"manual intervention {pending.task!r}"
            + (f": {decision.comment}" if decision.comment else ""),
            decision.request_id,
        )

    def _accept(self, by: str, action: str, detail: str, request_id: str | None = None) -> None:
        self._event(by, action, "accepted", detail, request_id)

    def _refuse(
        self, by: str, action: str, reason: str, request_id: str | None = None, comment: str = ""
    ) -> None:
        self._event(by, action, "refused", reason, request_id)

    def _event(
        self, by: str, action: str, outcome: str, detail: str, request_id: str | None
    ) -> None:
        self._attempt.events.append(
            AuditEvent(
                time=workflow.now(),
                actor=by,
                action=action,
                stage=self._stage.name,
                outcome=outcome,
                detail=detail,
                request_id=request_id,
            )
        )

    # --- notifications --------------------------------------------------------------

    def _people(self, entries: list[str]) -> list[str]:
        return self._input.spec.pipeline.people(entries)

    def _notify(
        self,
        kind: Literal["approval_pending", "intervention_pending", "outcome"],
        users: list[str],
        **fields: Any,
    ) -> None:
        """Send mail in the background: retried for a while, never awaited by the deployment."""
        notify_mail(self._input.spec, self._stage.name, self._input.attempt, kind, users, **fields)

    def _conditions_of(self, phase: str) -> Conditions | None:
        return self._stage.pre_deployment if phase == "pre" else self._stage.post_deployment

    # --- bookkeeping --------------------------------------------------------------

    def _job_context(self, job: Job, try_number: int, segment: int = 0) -> JobContext:
        spec = self._input.spec
        return JobContext(
            pipeline=spec.pipeline.name,
            release=spec.name,
            number=spec.number,
            stage=self._stage.name,
            attempt=self._input.attempt,
            job=job.name,
            lease_id=f"{workflow.info().workflow_id}#{job.name}#{try_number}"
            + (f"@{segment}" if segment else ""),
        )

    def _set_status(self, status: StageStatus) -> None:
        if self._attempt.status == status:
            return  # the parent started us with this status already
        self._attempt.status = status
        workflow.upsert_search_attributes([SA_STATUS.value_set(status.value)])


def _ended_well(handle: workflow.ActivityHandle[LeaseResult]) -> bool:
    return handle.done() and not handle.cancelled() and handle.exception() is None


def task_segments(tasks: list[Task]) -> list[tuple[bool, list[int]]]:
    """Split a job's tasks into runs of agent tasks and server tasks (interventions)."""
    segments: list[tuple[bool, list[int]]] = []
    for index, task in enumerate(tasks):
        if segments and segments[-1][0] == task.runs_on_agent:
            segments[-1][1].append(index)
        else:
            segments.append((task.runs_on_agent, [index]))
    return segments


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def notify_mail(
    spec: ReleaseSpec,
    stage: str,
    attempt: int,
    kind: Literal["approval_pending", "intervention_pending", "outcome"],
    users: list[str],
    **fields: Any,
) -> None:
    """Start one `send_notification` activity per user with an address; do not wait.

    A mail that cannot be sent is retried (MAIL_RETRIES) and never fails or
    blocks the deployment. Users without an address in `users:` get no mail.
    """
    recipients = [
        Recipient(user=user, email=spec.pipeline.users[user].email)
        for user in users
        if user in spec.pipeline.users
    ]
    if not recipients:
        return
    summary = ReleaseSummary(
        pipeline=spec.pipeline.name,
        number=spec.number,
        name=spec.name,
        description=spec.description,
        created_by=spec.created_by,
        artifacts=spec.artifacts,
    )
    handle = workflow.start_activity(
        "send_notification",
        NotificationRequest(
            kind=kind,
            recipients=recipients,
            release=summary,
            stage=stage,
            attempt=attempt,
            **fields,
        ),
        result_type=NotificationResult,
        task_queue=workflow.info().task_queue,
        start_to_close_timeout=timedelta(minutes=1),
        schedule_to_close_timeout=timedelta(minutes=30),
        retry_policy=MAIL_RETRIES,
        summary=f"mail {', '.join(r.user for r in recipients)}: {kind.replace('_', ' ')}",
    )
    # Nobody awaits the mail; look at its outcome so a failure is not an unhandled error.
    handle.add_done_callback(lambda done: done.cancelled() or done.exception())


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
