"""What a deployment waits for before and after its jobs: the schedule window and
freezes, approvals, gates, and an approver's deferral (DESIGN.md steps 2, 3, 4, 6).

Functions of a Deployment. The decisions people send (approve, reject, deploy
now, ignore a gate) are judged by workflows/who_may.py and applied here; each
returns the audit event it recorded.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import CHECK_HTTP, PLAN_START, RUN_CHECK, send_in_background
    from workflows.approval_policy import ApprovalPolicy, ApprovalState, Decision, DecisionRecord
    from workflows.audit import SYSTEM, AuditEvent
    from workflows.control_api import CheckRequest, NotificationRequest, StartPlanRequest
    from workflows.deployment import Deployment, Rejected
    from workflows.gates import CheckOutcome, GateEvaluation, GateState, GateWindow
    from workflows.mail import (
        approval_mails,
        approvers_to_mail,
        mail,
        mail_summary,
        utc,
        waiting_notice,
    )
    from workflows.names import pool_queue
    from workflows.pipeline import Approvals, GateCheck, Gates, format_duration
    from workflows.release import (
        DeployNow,
        GateIgnore,
        StageStatus,
        merged_variables,
        split_secrets,
    )
    from workflows.who_may import judge_approval, may_end_deferral, may_ignore_gate

Phase = Literal["pre", "post"]


async def wait_for_start(d: Deployment) -> None:
    """The schedule window and the freezes; the activity computes it, history keeps it."""
    if d.stage.schedule is None and not d.stage.freezes:
        return
    plan = await PLAN_START.execute(
        StartPlanRequest(schedule=d.stage.schedule, freezes=d.stage.freezes, now=workflow.now()),
        task_queue=d.task_queue,
        summary="plan the start: schedule window and freezes",
    )
    wait = plan.start_at - workflow.now()
    if wait <= timedelta(0):
        return
    d.wait(plan.start_at, "; ".join(w.detail for w in plan.waits))
    d.set_status(StageStatus.SCHEDULED)
    await workflow.sleep(
        wait, summary=f"scheduled until {utc(plan.start_at)}: {d.attempt.waiting_reason}"
    )
    d.wait(None)
    d.set_status(StageStatus.QUEUED)


async def approvals_and_gates(d: Deployment, phase: Phase) -> None:
    """A phase's approvals and gates, in the order the stage gives."""
    conditions = d.stage.pre_deployment if phase == "pre" else d.stage.post_deployment
    if conditions is None:
        return
    steps = [conditions.approvals and "approvals", conditions.gates and "gates"]
    if conditions.order == "gates_then_approvals":
        steps.reverse()
    for step in steps:
        if step == "approvals" and conditions.approvals:
            await approval(d, phase, conditions.approvals)
        elif step == "gates" and conditions.gates:
            await gates(d, phase, conditions.gates)
    d.set_status(StageStatus.QUEUED if phase == "pre" else StageStatus.IN_PROGRESS)


async def approval(d: Deployment, phase: Phase, approvals: Approvals) -> None:
    """Wait for people: policy any/all/sequence; a timeout rejects."""
    policy = ApprovalPolicy(approvals, d.spec.pipeline, d.spec.created_by)
    state = ApprovalState(
        phase=phase,
        policy=approvals.policy,
        approvers=approvals.approvers,
        deadline=workflow.now() + approvals.timeout,
    )
    d.attempt.approvals.append(state)
    upstream = d.input.approved_upstream
    if approvals.skip_if_approved_previous_stage and policy.covered_by(set(upstream)):
        state.status = "skipped"
        d.trail.accept(
            SYSTEM,
            "approve",
            f"{phase}-deployment approval skipped: {', '.join(upstream)} approved the previous stage",
        )
        return
    d.set_status(StageStatus.WAITING_FOR_APPROVAL)
    # Releases started before mail went only to who can decide now mailed every approver.
    to_deciders = workflow.patched("mail-to-deciders")
    _mail_approvers(d, state, approvers_to_mail(policy, state) if to_deciders else policy.users())
    if d.stage.notify and "waiting_for_approval" in d.stage.notify.on:
        watchers = [u for u in d.spec.pipeline.people(d.stage.notify.to) if u not in policy.users()]
        if watchers:
            if to_deciders:
                _send(d, waiting_notice(d.spec, d.stage.name, d.input.attempt, state, watchers))
            else:
                _send(
                    d,
                    mail(
                        d.spec,
                        d.stage.name,
                        d.input.attempt,
                        "approval_pending",
                        watchers,
                        phase=phase,
                        deadline=state.deadline,
                        approvers=approvals.approvers,
                    ),
                )
    expires = f"{phase}-deployment approval expires after {format_duration(approvals.timeout)}"
    try:
        if not to_deciders:
            await workflow.wait_condition(
                lambda: state.status != "pending",
                timeout=approvals.timeout,
                timeout_summary=expires,
            )
        while to_deciders and state.status == "pending":
            # Under `sequence`, each approver is mailed when their turn comes.
            turn = list(state.waiting_for)
            assert state.deadline is not None
            await workflow.wait_condition(
                lambda turn=turn: state.status != "pending" or state.waiting_for != turn,  # type: ignore[misc]
                timeout=max(state.deadline - workflow.now(), timedelta(seconds=1)),
                timeout_summary=expires,
            )
            if state.status == "pending":
                next_users = approvers_to_mail(policy, state)
                _mail_approvers(
                    d, state, [u for u in next_users if u not in policy.pipeline.people(turn)]
                )
    except TimeoutError:
        state.status = "timed_out"
        reason = f"{phase}-deployment approval timed out after {format_duration(approvals.timeout)}"
        d.trail.accept(SYSTEM, "reject", reason)
        raise Rejected(reason) from None
    if state.status == "rejected":
        last = state.decisions[-1]
        raise Rejected(
            f"{phase}-deployment approval rejected by {last.by}"
            + (f": {last.comment}" if last.comment else "")
        )


def _mail_approvers(d: Deployment, state: ApprovalState, users: list[str]) -> None:
    for request in approval_mails(d.spec, d.stage.name, d.input.attempt, state, users):
        _send(d, request)


def _send(d: Deployment, request: NotificationRequest | None) -> None:
    if request is not None:
        send_in_background(request, d.task_queue, mail_summary(request))


def decide_approval(d: Deployment, decision: Decision, approve: bool) -> AuditEvent:
    """approve / reject of a pending approval: judged, recorded, applied."""
    action: Literal["approve", "reject"] = "approve" if approve else "reject"
    reason, entry = judge_approval(
        d.deciders, d.attempt.approvals, decision.phase, decision.by, approve, decision.groups
    )
    state = d.attempt.approval(decision.phase)
    if state is not None and state.status != "skipped" and d.deciders.policy(decision.phase):
        state.decisions.append(
            DecisionRecord(
                time=workflow.now(),
                by=decision.by,
                action=action,
                comment=decision.comment,
                defer_until=decision.defer_until if approve else None,
                outcome="accepted" if reason is None else "refused",
                reason=reason or "",
                request_id=decision.request_id,
            )
        )
    if reason is not None or state is None or entry is None:
        return d.trail.refuse(decision.by, action, reason or "", request_id=decision.request_id)
    policy = d.deciders.policy(decision.phase)
    assert policy is not None
    policy.apply(state, entry, approve)
    deferred = approve and decision.defer_until is not None
    if deferred and decision.phase == "pre":
        state.defer_until = max(filter(None, [state.defer_until, decision.defer_until]))
    detail = (
        f"{decision.phase}-deployment"
        + (
            f", deferred until {utc(decision.defer_until)}"
            if deferred and decision.defer_until
            else ""
        )
        + (f": {decision.comment}" if decision.comment else "")
    )
    return d.trail.accept(decision.by, action, detail, request_id=decision.request_id)


async def deferral(d: Deployment) -> None:
    """An approver asked for a later start: a durable timer; `deploy --now` ends it."""
    approval = d.attempt.approval("pre")
    if approval is None or approval.defer_until is None:
        return
    wait = approval.defer_until - workflow.now()
    if wait <= timedelta(0):
        return
    d.wait(approval.defer_until, "deferred by an approver")
    d.set_status(StageStatus.DEFERRED)
    try:
        await workflow.wait_condition(
            lambda: d.deploy_now is not None,
            timeout=wait,
            timeout_summary=f"deferred until {utc(approval.defer_until)}",
        )
    except TimeoutError:
        pass
    d.wait(None)
    d.set_status(StageStatus.QUEUED)


def end_deferral(d: Deployment, request: DeployNow) -> AuditEvent:
    deferred = d.attempt.status == StageStatus.DEFERRED
    reason = may_end_deferral(d.deciders, d.attempt.approvals, deferred, request.by, request.groups)
    if reason is not None:
        return d.trail.refuse(request.by, "deploy_now", reason, request_id=request.request_id)
    if d.deploy_now is not None:
        return d.trail.refuse(
            request.by,
            "deploy_now",
            f"the deferral is ending already ({d.deploy_now.by} asked)",
            request_id=request.request_id,
        )
    d.deploy_now = request
    return d.trail.accept(
        request.by, "deploy_now", "deferral ended early", request_id=request.request_id
    )


async def gates(d: Deployment, phase: Phase, gates: Gates) -> None:
    """Sample every check each interval until all pass long enough; a timeout rejects."""
    now = workflow.now()
    state = GateState(phase=phase, started_at=now, deadline=GateWindow.deadline(gates, now))
    d.attempt.gates.append(state)
    d.set_status(StageStatus.EVALUATING_GATES)
    window = GateWindow(gates, state)
    if gates.delay > timedelta(0):
        await workflow.sleep(
            gates.delay,
            summary=f"{phase}-deployment gates: delay "
            f"{format_duration(gates.delay)} before the first evaluation",
        )
    state.status = "evaluating"
    while True:
        evaluation = await _evaluate(d, gates.checks, state)
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


async def _evaluate(d: Deployment, checks: list[GateCheck], state: GateState) -> GateEvaluation:
    """All checks at once; an error or a missing agent counts as unhealthy."""
    variables, _ = split_secrets(merged_variables(d.spec, d.stage))

    async def one(check: GateCheck) -> CheckOutcome:
        if check.label in state.ignored:
            return CheckOutcome(check=check.label, healthy=True, reason="ignored", ignored=True)
        request = CheckRequest(check=check, variables=variables)
        summary = f"gate check {check.label!r}"
        try:
            if check.http is not None:
                result = await CHECK_HTTP.execute(request, task_queue=d.task_queue, summary=summary)
            else:
                assert check.script is not None
                queue = pool_queue(check.script.pool)
                result = await RUN_CHECK.execute(request, task_queue=queue, summary=summary)
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


def ignore_gate(d: Deployment, request: GateIgnore) -> AuditEvent:
    """An approver lets one gate check count as healthy from now on."""
    phase: Phase = "post" if request.phase == "post" else "pre"
    reason = may_ignore_gate(
        d.deciders, d.attempt.gates, phase, request.check, request.by, request.groups
    )
    if reason is not None:
        return d.trail.refuse(request.by, "ignore_gate", reason, request_id=request.request_id)
    state = next(g for g in reversed(d.attempt.gates) if g.phase == phase)
    state.ignored = sorted({*state.ignored, request.check})
    return d.trail.accept(
        request.by, "ignore_gate", f"check {request.check!r} ignored", request_id=request.request_id
    )
