"""The mails of a release, composed in one place: who gets which mail, with the
exact command that acts on it. Pure: no Temporal, no I/O.

A mail that asks for a decision goes only to people who can make it now: an
approval's approvers (under `sequence`, the one whose turn it is), never the
creator who may not approve; an intervention's deciders (workflows/who_may.py).
`notify` subscribers hear that a deployment waits, without the commands.
The workflows start `send_notification` with what these functions return.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from workflows.approval_policy import ApprovalPolicy, ApprovalState
from workflows.control_api import NotificationRequest, Recipient, ReleaseSummary
from workflows.pipeline import ManualIntervention
from workflows.release import ReleaseSpec

Kind = Literal["approval_pending", "intervention_pending", "outcome"]


def approve_command(reference: str, stage: str, post: bool) -> str:
    """The command that approves a pending approval, e.g. `stageflow approve webapp/7 prod`
    (`--post` for post-deployment). Whoever runs it decides as the person they are
    signed in as (`stageflow login`): the command names no one."""
    return _decision_command("approve", reference, stage, post)


def reject_command(reference: str, stage: str, post: bool, comment: str = "why") -> str:
    """The command that rejects a pending approval or intervention, with a comment for the
    reader to fill in, e.g. `stageflow reject webapp/7 prod --comment 'why'`."""
    return _decision_command("reject", reference, stage, post, comment=comment)


def resume_command(reference: str, stage: str) -> str:
    """The command that goes on after a manual intervention."""
    return _decision_command("resume", reference, stage, post=False)


def _decision_command(
    verb: str, reference: str, stage: str, post: bool, comment: str | None = None
) -> str:
    # Everything a user or pipeline author named is shell-quoted, so the line can be
    # pasted into a shell as it is (quote leaves plain words such as webapp/7 alone).
    words = ["stageflow", verb, shlex.quote(reference), shlex.quote(stage)]
    if post:
        words.append("--post")
    if comment is not None:
        # Always quoted, even a single word: it reads as text to replace.
        words += ["--comment", "'" + comment.replace("'", "'\"'\"'") + "'"]
    return " ".join(words)


def mail(
    spec: ReleaseSpec, stage: str, attempt: int, kind: Kind, users: list[str], **fields: object
) -> NotificationRequest | None:
    """One mail to those of `users` who have an address in the pipeline's `users:`."""
    recipients = [
        Recipient(user=user, email=spec.pipeline.users[user].email)
        for user in users
        if user in spec.pipeline.users
    ]
    if not recipients:
        return None
    summary = ReleaseSummary(
        pipeline=spec.pipeline.name,
        number=spec.number,
        name=spec.name,
        description=spec.description,
        created_by=spec.created_by,
        artifacts=spec.artifacts,
        changes=spec.changes if spec.changes and spec.changes.artifacts else None,
    )
    return NotificationRequest(
        kind=kind,
        recipients=recipients,
        release=summary,
        stage=stage,
        attempt=attempt,
        **fields,  # type: ignore[arg-type]
    )


def approvers_to_mail(policy: ApprovalPolicy, state: ApprovalState) -> list[str]:
    """Who can decide this approval now: the open entries (under `sequence`, only the
    next), without the creator when the creator may not approve."""
    users = policy.pipeline.people(state.waiting_for)
    if not policy.approvals.creator_can_approve:
        users = [u for u in users if u != policy.creator]
    return users


def approval_mails(
    spec: ReleaseSpec, stage: str, attempt: int, state: ApprovalState, users: list[str]
) -> list[NotificationRequest]:
    """One mail per approver, with the commands that decide the approval."""
    post = state.phase == "post"
    return _one_each(
        spec,
        stage,
        attempt,
        "approval_pending",
        users,
        lambda _user: {
            "phase": state.phase,
            "deadline": state.deadline,
            "approvers": state.approvers,
            "command": approve_command(spec.reference, stage, post),
            "reject_command": reject_command(spec.reference, stage, post),
        },
    )


def waiting_notice(
    spec: ReleaseSpec, stage: str, attempt: int, state: ApprovalState, watchers: list[str]
) -> NotificationRequest | None:
    """For `notify` subscribers with `on: [waiting_for_approval]`: news, not a request."""
    return mail(
        spec,
        stage,
        attempt,
        "outcome",
        watchers,
        status="waiting for approval",
        message=f"The {state.phase}-deployment approval waits for "
        f"{', '.join(state.waiting_for)}"
        + (f" until {utc(state.deadline)}." if state.deadline else "."),
    )


def intervention_mails(
    spec: ReleaseSpec,
    stage: str,
    attempt: int,
    intervention: ManualIntervention,
    deadline: datetime,
    users: list[str],
) -> list[NotificationRequest]:
    """One mail per person who may decide the intervention, with the commands that do."""
    return _one_each(
        spec,
        stage,
        attempt,
        "intervention_pending",
        users,
        lambda _user: {
            "deadline": deadline,
            "approvers": intervention.approvers,
            "command": resume_command(spec.reference, stage),
            "instructions": intervention.instructions,
            "reject_command": reject_command(spec.reference, stage, post=False),
        },
    )


def choice_command(reference: str, stage: str) -> str:
    """The commands that choose after a failed task (guided failure), in one line:
    `stageflow resume webapp/7 prod --retry | --skip | --fail`."""
    return f"{resume_command(reference, stage)} --retry | --skip | --fail"


def failure_mails(
    spec: ReleaseSpec,
    stage: str,
    attempt: int,
    failed: str,
    deadline: datetime,
    approvers: list[str],
    users: list[str],
) -> list[NotificationRequest]:
    """One mail per person who may choose after a failed task (guided failure): what
    failed and the commands that retry, skip or fail it. No reject command: the three
    choices say it all (a reject would be fail)."""
    return _one_each(
        spec,
        stage,
        attempt,
        "intervention_pending",
        users,
        lambda _user: {
            "deadline": deadline,
            "approvers": approvers,
            "instructions": f"{failed}. Retry it (on the same agent), skip it (the stage "
            "goes on and ends partially succeeded) or fail the stage.",
            "command": choice_command(spec.reference, stage),
        },
    )


def _one_each(
    spec: ReleaseSpec,
    stage: str,
    attempt: int,
    kind: Kind,
    users: list[str],
    fields: Callable[[str], dict[str, object]],
) -> list[NotificationRequest]:
    """A mail of its own per user (each names that user's commands); none without an address."""
    found = (mail(spec, stage, attempt, kind, [user], **fields(user)) for user in users)
    return [request for request in found if request is not None]


def mail_summary(request: NotificationRequest) -> str:
    """What the Web UI shows for the mail activity."""
    users = ", ".join(r.user for r in request.recipients)
    return f"mail {users}: {request.kind.replace('_', ' ')}"


def utc(moment: datetime) -> str:
    """A time as mails and summaries write it: `2026-12-01 03:00 UTC`."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")
