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

    def of(self, named: list[str]) -> list[str]:
        """The users who decide something the pipeline names `named` for."""
        return (
            self.pipeline.people(named)
            or self.pipeline.people(self.stage_approvers())
            or [self.creator]
        )

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
) -> tuple[str | None, int | None]:
    """(refusal reason or None, the approver entry the decision satisfies)."""
    state = next((a for a in approvals if a.phase == phase), None)
    policy = deciders.policy(phase)
    other = "post" if phase == "pre" else "pre"
    hint = ""
    if any(a.phase == other and a.status == "pending" for a in approvals):
        hint = f"; the {other}-deployment approval is (use {'--post' if other == 'post' else 'no --post'})"
    if state is None or policy is None or state.status == "skipped":
        return f"no {phase}-deployment approval is pending{hint}", None
    accepted, reason, entry = policy.judge(state, user, approve)
    if not accepted and state.status != "pending":
        reason += hint
    return (None, entry) if accepted else (reason, None)


def may_end_deferral(
    deciders: Deciders, approvals: list[ApprovalState], deferred: bool, user: str
) -> str | None:
    """`deploy --now`: whoever may approve the pre-deployment approval that deferred it."""
    policy = deciders.policy("pre")
    state = next((a for a in approvals if a.phase == "pre"), None)
    if not deferred or policy is None or state is None:
        return "the deployment is not deferred"
    if not policy.is_approver(user):
        return f"{user} is not an approver (approvers: {', '.join(policy.approvals.approvers)})"
    if user == deciders.creator and not policy.approvals.creator_can_approve:
        return f"{user} created the release and may not approve it"
    return None


def may_ignore_gate(
    deciders: Deciders, gates: list[GateState], phase: Phase, check: str, user: str
) -> str | None:
    """Letting a gate check count as healthy: the phase's approvers, by the rule above."""
    conditions = deciders.stage.pre_deployment if phase == "pre" else deciders.stage.post_deployment
    labels = [c.label for c in conditions.gates.checks] if conditions and conditions.gates else []
    if check not in labels:
        return f"no {phase}-deployment gate check {check!r}" + (
            f" (checks: {', '.join(labels)})" if labels else ""
        )
    named = conditions.approvals.approvers if conditions and conditions.approvals else []
    allowed = deciders.of(named)
    if user not in allowed:
        return f"{user} may not ignore {phase}-deployment gates (who may: {', '.join(allowed)})"
    state = next((g for g in reversed(gates) if g.phase == phase), None)
    if state is None or state.status not in ("waiting", "evaluating"):
        return f"the {phase}-deployment gates are not being evaluated"
    return None


def may_decide_intervention(
    deciders: Deciders, approvers: list[str] | None, user: str
) -> str | None:
    """Resume or reject a manual intervention (`approvers` None: none is pending)."""
    if approvers is None:
        return "no manual intervention is pending"
    allowed = deciders.of(approvers)
    if user not in allowed:
        return f"{user} may not decide this intervention (who may: {', '.join(allowed)})"
    return None
