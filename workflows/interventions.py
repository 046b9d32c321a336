"""Manual interventions: a job pauses for a person, who resumes it or rejects the
deployment; on timeout the task's `on_timeout` decides. Beside the jobs they split.

Guided failure is the same wait for a person, after a task failed on a stage with
`on_failure`: they choose retry, skip or fail; on timeout `default` applies."""

from __future__ import annotations

from typing import Literal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import send_in_background
    from workflows.approval_policy import Decision
    from workflows.audit import SYSTEM, AuditEvent
    from workflows.deployment import Deployment, PendingIntervention, Rejected
    from workflows.mail import choice_command, failure_mails, intervention_mails, mail_summary
    from workflows.pipeline import Task, format_duration
    from workflows.release import StageStatus, TaskRun, TaskStatus
    from workflows.who_may import may_decide_intervention


async def intervention(d: Deployment, task: Task, run: TaskRun) -> None:
    """Wait for `resume` or `reject`; on timeout, as the task says."""
    spec = task.manual_intervention
    assert spec is not None
    pending = PendingIntervention(task=task.name, approvers=spec.approvers)
    d.intervention = pending
    previous = d.attempt.status
    deadline = workflow.now() + spec.timeout
    d.wait(deadline, spec.instructions)
    run.status, run.started_at, run.message = (
        TaskStatus.IN_PROGRESS,
        workflow.now(),
        spec.instructions,
    )
    d.set_status(StageStatus.WAITING_FOR_INTERVENTION)
    if workflow.patched("mail-to-deciders"):
        people = d.deciders.of(spec.approvers)
    else:  # releases started before mailed the approvers, else the stage's `notify.to`
        people = d.spec.pipeline.people(spec.approvers) or (
            d.spec.pipeline.people(d.stage.notify.to) if d.stage.notify else []
        )
    for request in intervention_mails(
        d.spec, d.stage.name, d.input.attempt, spec, deadline, people
    ):
        send_in_background(request, d.task_queue, mail_summary(request))
    try:
        await workflow.wait_condition(
            lambda: pending.decision is not None,
            timeout=spec.timeout,
            timeout_summary=f"manual intervention {task.name!r} times out "
            f"({spec.on_timeout} after {format_duration(spec.timeout)})",
        )
    except TimeoutError:
        pending.decision, pending.by = spec.on_timeout, SYSTEM
        pending.comment = f"timed out after {format_duration(spec.timeout)}"
        d.trail.accept(
            SYSTEM,
            spec.on_timeout,
            f"manual intervention {task.name!r} {pending.comment}: {spec.on_timeout}",
        )
    finally:
        d.intervention = None
        d.wait(None)
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
    d.set_status(previous)


FailureChoice = Literal["retry", "skip", "fail"]


async def failure_choice(d: Deployment, task: Task, run: TaskRun) -> FailureChoice:
    """A task failed on a stage with `on_failure`: wait for a person's choice, or the
    timeout's `default`. The agent stays leased meanwhile (a retry runs where it failed)."""
    spec = d.stage.on_failure
    assert spec is not None
    pending = PendingIntervention(task=task.name, approvers=spec.ask, kind="failure")
    d.intervention = pending
    previous = d.attempt.status
    deadline = workflow.now() + spec.timeout
    code = f" (exit code {run.exit_code})" if run.exit_code is not None else ""
    failed = f"task {task.name!r} failed{code}"
    d.wait(deadline, f"{failed}: choose {choice_command(d.spec.reference, d.stage.name)}")
    d.set_status(StageStatus.WAITING_FOR_INTERVENTION)
    for request in failure_mails(
        d.spec,
        d.stage.name,
        d.input.attempt,
        failed,
        deadline,
        spec.ask,
        d.deciders.of(spec.ask),
    ):
        send_in_background(request, d.task_queue, mail_summary(request))
    try:
        await workflow.wait_condition(
            lambda: pending.decision is not None,
            timeout=spec.timeout,
            timeout_summary=f"failed task {task.name!r}: {spec.default} "
            f"after {format_duration(spec.timeout)} without a choice",
        )
    except TimeoutError:
        pending.decision, pending.by = spec.default, SYSTEM
        d.trail.accept(
            SYSTEM,
            spec.default,
            f"failed task {task.name!r}: no choice in {format_duration(spec.timeout)}",
        )
    finally:
        d.intervention = None
        d.wait(None)
    d.set_status(previous)
    choice = pending.decision
    assert choice in ("retry", "skip", "fail")
    if choice == "skip":
        run.continue_on_error = True  # failed, and the job goes on: partially succeeded
    run.message = f"{run.message}; {choice} by {pending.by}".lstrip("; ") + (
        f": {pending.comment}" if pending.comment else ""
    )
    return choice


def decide_intervention(
    d: Deployment, decision: Decision, action: Literal["resume", "reject"]
) -> AuditEvent:
    """`resume` or `reject` of what waits for a person: a manual intervention, or a
    failed task's choice (guided failure); the verdict is in the trail either way."""
    pending = d.intervention
    open_approvers = pending.approvers if pending and pending.decision is None else None
    reason = may_decide_intervention(d.deciders, open_approvers, decision.by, decision.groups)
    if reason is None and pending is not None and pending.kind == "failure":
        return _decide_failure(d, pending, decision, action)
    if decision.choice is not None and pending is None:
        reason = "no failed task waits for a choice (--retry, --skip or --fail)"
    elif reason is None and decision.choice is not None:
        reason = (
            "no failed task waits for a choice: a manual intervention does "
            "(resume without --retry, --skip or --fail)"
        )
    if reason is not None or pending is None:
        return d.trail.refuse(decision.by, action, reason or "", request_id=decision.request_id)
    pending.decision, pending.by, pending.comment = action, decision.by, decision.comment
    return d.trail.accept(
        decision.by,
        action,
        f"manual intervention {pending.task!r}"
        + (f": {decision.comment}" if decision.comment else ""),
        request_id=decision.request_id,
    )


def intervention_pending(d: Deployment) -> bool:
    return d.intervention is not None and d.intervention.decision is None


def _decide_failure(
    d: Deployment, pending: PendingIntervention, decision: Decision, action: str
) -> AuditEvent:
    """A person's choice after a failed task: `resume` with retry, skip or fail; `reject`
    is fail."""
    choice = "fail" if action == "reject" else decision.choice
    if choice is None:
        return d.trail.refuse(
            decision.by,
            action,
            f"task {pending.task!r} failed: choose --retry, --skip or --fail",
            request_id=decision.request_id,
        )
    pending.decision, pending.by, pending.comment = choice, decision.by, decision.comment
    return d.trail.accept(
        decision.by,
        choice,
        f"failed task {pending.task!r}" + (f": {decision.comment}" if decision.comment else ""),
        request_id=decision.request_id,
    )
