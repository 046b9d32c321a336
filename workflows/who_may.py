"""Who may make which decision on a deployment, in one pure place. No Temporal, no I/O.

One rule for every decision: the people the pipeline names for it decide
(an approval's approvers, an intervention's approvers); where it names nobody
for that decision, the stage's approvers (pre- and post-deployment) decide;
where the stage names none either, the release's creator does. Approvals add
their own rules (ApprovalPolicy: the creator, the turn under `sequence`).

Each function answers None when the decision may go ahead, else the reason it
is refused, in words that tell the person what would work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from workflows.approval_policy import ApprovalPolicy, ApprovalState
from workflows.gates import GateState
from workflows.pipeline import Pipeline, Stage

Phase = Literal["pre", "post"]


@dataclass(frozen=True)
class Deciders:
    """Who decides on one stage of one release."""

    pipeline: Pipeline
    stage: Stage
    creator: str

    def stage_approvers(self) -> list[str]:
        """The approver entries of the stage's approvals, pre then post."""
        entries: list[str] = []
        for conditions in (self.stage.pre_deployment, self.stage.post_deployment):
            if conditions and conditions.approvals:
                entries += [e for e in conditions.approvals.approvers if e not in entries]
        return entries

    def entries_for(self, named: list[str]) -> list[str]:
        """The approver entries that decide something the pipeline names `named` for:
        those, else the stage's approvers, else the release's creator (the rule above)."""
        for entries in (named, self.stage_approvers()):
            if self.pipeline.names_anyone(entries):
                return entries
        return [self.creator]

    def of(self, named: list[str]) -> list[str]:
        """The users, by name, who decide something the pipeline names `named` for
        (members of an identity-provider group are known only when they sign in)."""
        return self.pipeline.people(self.entries_for(named))

    def who(self, named: list[str]) -> list[str]:
        """Who decides it, in words: the users, then the identity-provider groups."""
        entries = self.entries_for(named)
        return self.pipeline.people(entries) + self.pipeline.idp_groups(entries)

    def allows(self, named: list[str], user: str, groups: Sequence[str] = ()) -> bool:
        """Whether this person decides something the pipeline names `named` for."""
        return any(self.pipeline.stands_for(e, user, groups) for e in self.entries_for(named))

    def policy(self, phase: Phase) -> ApprovalPolicy | None:
        conditions = self.stage.pre_deployment if phase == "pre" else self.stage.post_deployment
        if conditions is None or conditions.approvals is None:
            return None
        return ApprovalPolicy(conditions.approvals, self.pipeline, self.creator)


def judge_approval(
    deciders: Deciders,
    approvals: list[ApprovalState],
    phase: Phase,
    user: str,
    approve: bool,
    groups: Sequence[str] = (),
) -> tuple[str | None, int | None]:
    """(refusal reason or None, the approver entry the decision satisfies); `groups`,
    the identity-provider groups the person signed in with."""
    state = next((a for a in approvals if a.phase == phase), None)
    policy = deciders.policy(phase)
    other = "post" if phase == "pre" else "pre"
    hint = ""
    if any(a.phase == other and a.status == "pending" for a in approvals):
        hint = f"; the {other}-deployment approval is (use {'--post' if other == 'post' else 'no --post'})"
    if state is None or policy is None or state.status == "skipped":
        return f"no {phase}-deployment approval is pending{hint}", None
    accepted, reason, entry = policy.judge(state, user, approve, groups)
    if not accepted and state.status != "pending":
        reason += hint
    return (None, entry) if accepted else (reason, None)


def may_end_deferral(
    deciders: Deciders,
    approvals: list[ApprovalState],
    deferred: bool,
    user: str,
    groups: Sequence[str] = (),
) -> str | None:
    """`deploy --now`: whoever may approve the pre-deployment approval that deferred it."""
    policy = deciders.policy("pre")
    state = next((a for a in approvals if a.phase == "pre"), None)
    if not deferred or policy is None or state is None:
        return "the deployment is not deferred"
    if not policy.is_approver(user, groups):
        return f"{user} is not an approver (approvers: {', '.join(policy.approvals.approvers)})"
    if user == deciders.creator and not policy.approvals.creator_can_approve:
        return f"{user} created the release and may not approve it"
    return None


def may_ignore_gate(
    deciders: Deciders,
    gates: list[GateState],
    phase: Phase,
    check: str,
    user: str,
    groups: Sequence[str] = (),
) -> str | None:
    """Letting a gate check count as healthy: the phase's approvers, by the rule above."""
    conditions = deciders.stage.pre_deployment if phase == "pre" else deciders.stage.post_deployment
    labels = [c.label for c in conditions.gates.checks] if conditions and conditions.gates else []
    if check not in labels:
        return f"no {phase}-deployment gate check {check!r}" + (
            f" (checks: {', '.join(labels)})" if labels else ""
        )
    named = conditions.approvals.approvers if conditions and conditions.approvals else []
    if not deciders.allows(named, user, groups):
        who = ", ".join(deciders.who(named))
        return f"{user} may not ignore {phase}-deployment gates (who may: {who})"
    state = next((g for g in reversed(gates) if g.phase == phase), None)
    if state is None or state.status not in ("waiting", "evaluating"):
        return f"the {phase}-deployment gates are not being evaluated"
    return None


def may_decide_intervention(
    deciders: Deciders, approvers: list[str] | None, user: str, groups: Sequence[str] = ()
) -> str | None:
    """Resume or reject a manual intervention (`approvers` None: none is pending)."""
    if approvers is None:
        return "no manual intervention is pending"
    if not deciders.allows(approvers, user, groups):
        who = ", ".join(deciders.who(approvers))
        return f"{user} may not decide this intervention (who may: {who})"
    return None
