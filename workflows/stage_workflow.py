"""StageWorkflow: one deployment of one stage of a release (a child of the release).

`run` reads as the process (DESIGN.md, "StageWorkflow"): wait for the stage's
schedule window and outside its freezes; the pre-deployment approvals and
gates; an approver's deferral; the jobs; the post-deployment gates and
approvals; the outcome. The steps live beside this file: stage_conditions.py
(schedule, approvals, gates, deferral), stage_jobs.py (agent leases, tasks,
logs), interventions.py; who may decide what is workflows/who_may.py.

People act through updates that return the audit event they recorded
(accepted, or refused with the reason). The signals of the same names stay for
releases started before, and do the same without an answer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes

with workflow.unsafe.imports_passed_through():
    from workflows.agent_api import LEASE_GRANTED_SIGNAL, LeaseGranted
    from workflows.approval_policy import Decision
    from workflows.audit import AuditEvent
    from workflows.deployment import Deployment, Rejected, StageInput
    from workflows.interventions import decide_intervention, intervention_pending
    from workflows.names import SA_CREATED_BY, SA_PIPELINE, SA_RELEASE, SA_STAGE, SA_STATUS
    from workflows.queues import QueueNews
    from workflows.record_api import AttemptWrite, RecordWrite
    from workflows.recording import RECORD_PATCH, RecordWriter
    from workflows.release import (
        CancelRequest,
        DeployNow,
        GateIgnore,
        ReleaseSpec,
        StageAttempt,
        StageStatus,
        TaskRun,
        TaskStatus,
    )
    from workflows.stage_conditions import (
        approvals_and_gates,
        decide_approval,
        deferral,
        end_deferral,
        ignore_gate,
        wait_for_start,
    )
    from workflows.stage_jobs import Jobs
    from workflows.stage_queue import StageSlot
    from workflows.task_conditions import stage_outcome

__all__ = ["StageInput", "StageWorkflow", "stage_search_attributes"]


@workflow.defn(name="StageWorkflow")
class StageWorkflow:
    """One deployment of a stage: schedule, approvals, gates, agent jobs, outcome."""

    @workflow.init
    def __init__(self, input: StageInput) -> None:
        stage = input.spec.pipeline.stage(input.stage)
        attempt = StageAttempt(
            attempt=input.attempt,
            status=StageStatus.QUEUED,
            workflow_id=workflow.info().workflow_id,
            triggered_by=input.triggered_by,
            reason=input.reason,
            started_at=workflow.now(),
            tasks=[
                TaskRun(job=job.name, task=task.name, continue_on_error=task.continue_on_error)
                for job in stage.all_jobs()
                for task in job.tasks
            ],
        )
        self._d = Deployment(input, attempt)
        self._jobs = Jobs(self._d)
        self._slot = StageSlot(self._d)
        self._steps: asyncio.Task[None] | None = None
        # What the record last had of this deployment, as people see it: the release
        # wrote it queued, and writes its outcome.
        self._recorded = _as_people_see_it(attempt)
        self._record = RecordWriter(self._unrecorded, self._take_record)
        self._recorder: asyncio.Task[None] | None = None

    @workflow.run
    async def run(self, input: StageInput) -> StageAttempt:
        if workflow.patched(RECORD_PATCH):
            self._recorder = asyncio.create_task(self._record.run())
        self._steps = asyncio.create_task(self._deploy())
        rejected: str | None = None
        try:
            await self._steps
        except asyncio.CancelledError:
            # Canceled by the `cancel` update, superseded in the stage's queue, or the
            # workflow itself was canceled.
            if self._d.cancel is None and self._slot.superseded_by is None:
                self._d.cancel = CancelRequest(by="temporal", reason="workflow canceled")
        except Rejected as no:
            rejected = str(no)
        outcome = self._outcome(rejected)
        await self._slot.report_end(outcome)
        return outcome

    async def _deploy(self) -> None:
        d = self._d
        await self._slot.take()
        await wait_for_start(d)
        await approvals_and_gates(d, "pre")
        await deferral(d)
        await self._slot.begin_jobs()
        await self._jobs.run()
        if not self._jobs.failed:
            await approvals_and_gates(d, "post")

    def _outcome(self, rejected: str | None) -> StageAttempt:
        d, attempt, cancel = self._d, self._d.attempt, self._d.cancel
        for run in attempt.tasks:
            if run.status in (TaskStatus.PENDING, TaskStatus.IN_PROGRESS):
                run.status = TaskStatus.CANCELED if cancel else TaskStatus.SKIPPED
        status = stage_outcome(
            attempt.tasks, canceled=cancel is not None, job_failed=self._jobs.error is not None
        )
        if rejected is not None and cancel is None:
            status = StageStatus.REJECTED
            attempt.message = rejected
        superseded = self._slot.superseded_by
        if superseded is not None and cancel is None:
            status = StageStatus.SKIPPED
            attempt.message = f"superseded by {superseded}"
            for approval in attempt.approvals:
                if approval.status == "pending":
                    approval.status = "skipped"
        d.wait(None)
        if cancel is not None:
            attempt.message = f"canceled by {cancel.by}" + (
                f": {cancel.reason}" if cancel.reason else ""
            )
        attempt.ended_at = workflow.now()
        d.set_status(status)
        return attempt

    # --- the record -------------------------------------------------------------------

    def _unrecorded(self) -> bool:
        attempt = self._d.attempt
        return not attempt.status.is_final and _as_people_see_it(attempt) != self._recorded

    def _take_record(self) -> RecordWrite:
        """The deployment as it stands now, for the record."""
        d = self._d
        self._recorded = _as_people_see_it(d.attempt)
        return RecordWrite(
            pipeline=d.spec.pipeline.name,
            number=d.spec.number,
            attempts=[
                AttemptWrite(
                    stage=d.stage.name,
                    attempt=d.attempt.model_copy(deep=True),
                    version=self._record.version(),
                )
            ],
        )

    # --- people's actions: updates that answer with the audit event ---------------

    @workflow.update
    def approve(self, decision: Decision) -> AuditEvent:
        """An approver's yes (optionally `defer_until`) for the pending approval of a phase."""
        return self._act("approve", decision)

    @workflow.update
    def reject(self, decision: Decision) -> AuditEvent:
        """No: rejects the pending manual intervention, else the pending approval."""
        return self._act("reject", decision)

    @workflow.update
    def resume(self, decision: Decision) -> AuditEvent:
        """Go on after a manual intervention."""
        return self._act("resume", decision)

    @workflow.update
    def deploy_now(self, request: DeployNow) -> AuditEvent:
        """End an approver's deferral early; only who may approve the stage may."""
        return self._act("deploy_now", request)

    @workflow.update
    def ignore_gate(self, request: GateIgnore) -> AuditEvent:
        """Let one gate check count as healthy from now on; only the stage's deciders may."""
        return self._act("ignore_gate", request)

    @workflow.update
    def cancel(self, request: CancelRequest) -> AuditEvent:
        """Stop this deployment: running tasks are killed, the rest do not run."""
        return self._act("cancel", request)

    # The signals releases started before this change were sent; same effect, no answer.

    @workflow.signal(name="approve")
    def approve_signal(self, decision: Decision) -> None:
        self._act("approve", decision)

    @workflow.signal(name="reject")
    def reject_signal(self, decision: Decision) -> None:
        self._act("reject", decision)

    @workflow.signal(name="resume")
    def resume_signal(self, decision: Decision) -> None:
        self._act("resume", decision)

    @workflow.signal(name="deploy_now")
    def deploy_now_signal(self, request: DeployNow) -> None:
        self._act("deploy_now", request)

    @workflow.signal(name="ignore_gate")
    def ignore_gate_signal(self, request: GateIgnore) -> None:
        self._act("ignore_gate", request)

    @workflow.signal(name="cancel")
    def cancel_signal(self, request: CancelRequest) -> None:
        if self._d.cancel is None and not self._d.attempt.status.is_final:
            self._act("cancel", request)

    @workflow.signal(name="queue")
    def queue_news(self, news: QueueNews) -> None:
        """The PipelineWorkflow's news of this deployment's place in the stage's queue."""
        if self._d.attempt.status.is_final or self._d.cancel is not None:
            return
        if self._slot.hear(news) and self._steps is not None:
            self._steps.cancel()

    @workflow.signal(name=LEASE_GRANTED_SIGNAL)
    def lease_granted(self, grant: LeaseGranted) -> None:
        """Sent by the agent that took the lease: run this job's steps on my queue."""
        self._jobs.grants[grant.lease_id] = grant

    @workflow.query
    def progress(self) -> StageAttempt:
        """This deployment as it stands: status, agents, every task's state and log."""
        return self._d.attempt

    def _act(self, action: str, request: Any) -> AuditEvent:
        """Judge and apply one person's action. A retried request (same id) gets the
        first answer again: it is never decided twice."""
        d = self._d
        answered = d.trail.answered(request.request_id)
        if answered is not None:
            return answered
        if action == "approve":
            return decide_approval(d, request, approve=True)
        if action == "reject" and intervention_pending(d):
            return decide_intervention(d, request, "reject")
        if action == "reject":
            return decide_approval(d, request, approve=False)
        if action == "resume":
            return decide_intervention(d, request, "resume")
        if action == "deploy_now":
            return end_deferral(d, request)
        if action == "ignore_gate":
            return ignore_gate(d, request)
        return self._cancel(request)

    def _cancel(self, request: CancelRequest) -> AuditEvent:
        d = self._d
        if d.attempt.status.is_final:
            return d.trail.refuse(
                request.by,
                "cancel",
                f"the deployment has ended ({d.attempt.status.value})",
                request_id=request.request_id,
            )
        if d.cancel is not None:
            return d.trail.refuse(
                request.by,
                "cancel",
                f"the deployment is being canceled already (by {d.cancel.by})",
                request_id=request.request_id,
            )
        d.cancel = request
        if self._steps is not None:
            self._steps.cancel()
        return d.trail.accept(
            request.by,
            "cancel",
            f"attempt {d.attempt.attempt}" + (f": {request.reason}" if request.reason else ""),
            request_id=request.request_id,
        )


def _as_people_see_it(attempt: StageAttempt) -> tuple[Any, ...]:
    """What of a running deployment the record is written for: its status, what it waits
    for and until when, its approvals and decisions, its gates, its agents. A task
    starting or ending alone is not (the live view shows it, and every write, the
    outcome's included, carries all the tasks): one write less per task keeps the
    record's cost on the control worker small. So are a queued deployment's moves in
    line (its place is in the live view)."""
    # A queued deployment's place in line moves often: the record gets it when it joins
    # the line and when it leaves it; `release show` asks the running stage for the rest.
    reason = attempt.waiting_reason
    if reason.startswith("queued:"):
        reason = "queued"
    return (
        attempt.status,
        attempt.waiting_until,
        reason,
        attempt.message,
        len(attempt.events),
        len(attempt.agents),
        [(a.phase, a.status, len(a.decisions), a.defer_until) for a in attempt.approvals],
        [(g.phase, g.status, tuple(g.ignored)) for g in attempt.gates],
    )


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
