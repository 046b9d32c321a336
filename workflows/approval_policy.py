"""Who may decide an approval, and when it is done. Pure: no Temporal, no I/O.

An approval lists entries, each a user or `group:NAME` (any member decides for
the group). Policies: `any` — one approval completes it; `all` — every entry
approves, in any order; `sequence` — every entry approves, in the listed order.
One rejection by someone entitled to decide rejects the deployment, at any
time (a rejection does not wait its turn under `sequence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import Field

from workflows.pipeline import Approvals, Model, Pipeline


class Decision(Model):
    """`approve` / `reject` signal of a StageWorkflow (and of a manual intervention)."""

    by: str
    # The identity-provider groups `by` signed in with (`oidc:NAME`), as the API saw them.
    groups: list[str] = []
    phase: Literal["pre", "post"] = "pre"
    comment: str = ""
    defer_until: datetime | None = Field(None, description="approve now, deploy at this time")
    choice: Literal["retry", "skip", "fail"] | None = Field(
        None, description="`resume` after a failed task (guided failure): what to do with it"
    )
    request_id: str | None = None


class DecisionRecord(Model):
    """A decision as the workflow saw it: accepted, or refused and why."""

    time: datetime
    by: str
    action: Literal["approve", "reject", "resume", "deploy_now", "ignore_gate"]
    comment: str = ""
    defer_until: datetime | None = None
    outcome: Literal["accepted", "refused"]
    reason: str = ""
    request_id: str | None = None


class ApprovalState(Model):
    """One approval (pre or post) of one deployment, as shown to people."""

    phase: Literal["pre", "post"]
    policy: str
    approvers: list[str]
    status: Literal["pending", "approved", "rejected", "timed_out", "skipped"] = "pending"
    deadline: datetime | None = None
    done_entries: list[int] = Field([], description="indexes of approvers entries satisfied")
    decisions: list[DecisionRecord] = []
    defer_until: datetime | None = None

    @property
    def waiting_for(self) -> list[str]:
        """The entries still needed (under `sequence`, only the next one can act)."""
        open_entries = [e for i, e in enumerate(self.approvers) if i not in self.done_entries]
        return open_entries[:1] if self.policy == "sequence" else open_entries


class ApprovalPolicy:
    """Judges decisions for one approval; the workflow records what it says."""

    def __init__(self, approvals: Approvals, pipeline: Pipeline, creator: str) -> None:
        self.approvals = approvals
        self.pipeline = pipeline
        self.creator = creator

    def users(self) -> list[str]:
        """Every user who may decide, in the listed order, without repeats."""
        return self.pipeline.people(self.approvals.approvers)

    def is_approver(self, user: str, groups: Sequence[str] = ()) -> bool:
        return any(self.pipeline.stands_for(e, user, groups) for e in self.approvals.approvers)

    def judge(
        self, state: ApprovalState, user: str, approve: bool, groups: Sequence[str] = ()
    ) -> tuple[bool, str, int | None]:
        """(accepted, reason when refused, entry satisfied) for a decision by `user`,
        signed in with identity-provider `groups`."""
        if state.status != "pending":
            return (
                False,
                f"the {state.phase}-deployment approval is not pending ({state.status})",
                None,
            )
        entries = self.approvals.approvers
        mine = [
            i for i, entry in enumerate(entries) if self.pipeline.stands_for(entry, user, groups)
        ]
        if not mine:
            return False, f"{user} is not an approver (approvers: {', '.join(entries)})", None
        if approve and user == self.creator and not self.approvals.creator_can_approve:
            return False, f"{user} created the release and may not approve it", None
        if (
            any(
                d.by == user and d.outcome == "accepted" and d.action == "approve"
                for d in state.decisions
            )
            and self.approvals.policy != "any"
        ):
            return False, f"{user} has approved already", None
        open_entries = [i for i in range(len(entries)) if i not in state.done_entries]
        if not approve:
            # A "no" need not wait its turn: any approver may stop the deployment.
            return True, "", mine[0]
        if self.approvals.policy == "sequence":
            turn = open_entries[0]
            if turn not in mine:
                return False, f"out of turn: waiting for {entries[turn]} first", None
            return True, "", turn
        satisfiable = [i for i in mine if i in open_entries]
        if not satisfiable:
            done = ", ".join(entries[i] for i in mine)
            return False, f"{done} approved already (for {user} too)", None
        return True, "", satisfiable[0]

    def apply(self, state: ApprovalState, entry: int, approve: bool) -> None:
        """Record an accepted decision's effect on the state."""
        if not approve:
            state.status = "rejected"
            return
        if self.approvals.policy == "any":
            state.done_entries = list(range(len(self.approvals.approvers)))
        else:
            state.done_entries = sorted({*state.done_entries, entry})
        if len(state.done_entries) == len(self.approvals.approvers):
            state.status = "approved"

    def covered_by(self, users: set[str]) -> bool:
        """Would these people's approvals complete this approval? (skip_if_approved_previous_stage)"""
        allowed = {u for u in users if self.approvals.creator_can_approve or u != self.creator}
        satisfied = [
            any(u in allowed for u in self.pipeline.members(entry))
            for entry in self.approvals.approvers
        ]
        return any(satisfied) if self.approvals.policy == "any" else all(satisfied)
