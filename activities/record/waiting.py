"""What one recorded deployment waits for, and who may act now. Pure: no I/O.

By the rules the workflow judges with (workflows/who_may.py) and mails by
(workflows/mail.py), so `approvals --mine` lists what the workflow would accept.
"""

from __future__ import annotations

from datetime import datetime

from activities.record.views import Waiting
from workflows.mail import approvers_to_mail
from workflows.release import ReleaseSpec, StageAttempt, StageStatus, TaskStatus
from workflows.who_may import Deciders


def waits_of(spec: ReleaseSpec, stage: str, attempt: StageAttempt) -> list[Waiting]:
    """Each thing the deployment waits on a person for: pending approvals, a manual
    intervention (or guided failure), a deferral an approver may end early."""
    deciders = Deciders(spec.pipeline, spec.pipeline.stage(stage), spec.created_by)

    def waiting(
        kind: str,
        phase: str,
        entries: list[str],
        users: list[str],
        deadline: datetime | None,
        deciding: list[str] | None = None,
    ) -> Waiting:
        """`deciding`: the entries that decide it, where not `entries` themselves."""
        return Waiting(
            pipeline=spec.pipeline.name,
            number=spec.number,
            release=spec.name,
            stage=stage,
            attempt=attempt,
            kind=kind,
            phase=phase,
            approvers=entries,
            users=users,
            groups=[
                g.removeprefix("group:")
                for g in spec.pipeline.idp_groups(entries if deciding is None else deciding)
            ],
            deadline=deadline,
        )

    waits = []
    for approval in attempt.approvals:
        policy = deciders.policy(approval.phase)
        if approval.status == "pending" and policy is not None:
            users = approvers_to_mail(policy, approval)
            waits.append(
                waiting("approval", approval.phase, approval.waiting_for, users, approval.deadline)
            )
    if attempt.status == StageStatus.WAITING_FOR_INTERVENTION:
        task = next((t for t in attempt.tasks if t.status == TaskStatus.IN_PROGRESS), None)
        entries: list[str] = []
        for job in spec.pipeline.stage(stage).all_jobs():
            for candidate in job.tasks:
                if task and candidate.name == task.task and candidate.manual_intervention:
                    entries = candidate.manual_intervention.approvers
        waits.append(
            waiting(
                "intervention",
                "",
                entries,
                deciders.of(entries),
                attempt.waiting_until,
                deciders.entries_for(entries),
            )
        )
    pre = deciders.policy("pre")
    if attempt.status == StageStatus.DEFERRED and pre is not None:
        users = [u for u in pre.users() if pre.approvals.creator_can_approve or u != pre.creator]
        waits.append(
            waiting("deferred", "pre", pre.approvals.approvers, users, attempt.waiting_until)
        )
    return waits
