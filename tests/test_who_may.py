"""Who may decide what on a deployment (workflows/who_may.py, workflows/approval_policy.py).

Pure unit tests: real Pipeline models, the approval state the workflow keeps, and
the answers a person sees (None, or the refusal reason in words).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from workflows.approval_policy import ApprovalPolicy, ApprovalState, DecisionRecord
from workflows.gates import GateState
from workflows.pipeline import Pipeline
from workflows.who_may import (
    Deciders,
    judge_approval,
    may_decide_intervention,
    may_end_deferral,
    may_ignore_gate,
)

CREATOR = "carol"
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
Phase = Literal["pre", "post"]


def pipeline(stage: dict[str, Any], **top: Any) -> Pipeline:
    """A one-stage pipeline `webapp` with stage `prod`; `ops` is bob and dave."""
    definition = {
        "name": "webapp",
        "groups": {"ops": ["bob", "dave"]},
        "stages": [
            {
                "name": "prod",
                "pool": "web",
                "tasks": [{"name": "deploy", "script": "./deploy.sh"}],
                **stage,
            }
        ],
        **top,
    }
    return Pipeline.model_validate(definition)


def approvals(approvers: list[str], policy: str = "any", **more: Any) -> dict[str, Any]:
    return {"approvals": {"approvers": approvers, "policy": policy, **more}}


def deciders(stage: dict[str, Any], **top: Any) -> Deciders:
    definition = pipeline(stage, **top)
    return Deciders(definition, definition.stage("prod"), CREATOR)


def pending(d: Deciders, phase: Phase = "pre") -> ApprovalState:
    """The approval state the workflow starts for a phase."""
    conditions = d.stage.pre_deployment if phase == "pre" else d.stage.post_deployment
    assert conditions is not None and conditions.approvals is not None
    return ApprovalState(
        phase=phase, policy=conditions.approvals.policy, approvers=conditions.approvals.approvers
    )


def decide(
    d: Deciders, states: list[ApprovalState], phase: Phase, user: str, approve: bool = True
) -> str | None:
    """As the workflow does it: judge, record the decision, apply it when accepted."""
    reason, entry = judge_approval(d, states, phase, user, approve)
    state = next(s for s in states if s.phase == phase)
    state.decisions.append(
        DecisionRecord(
            time=NOW,
            by=user,
            action="approve" if approve else "reject",
            outcome="accepted" if reason is None else "refused",
            reason=reason or "",
        )
    )
    if reason is None:
        assert entry is not None
        policy = d.policy(phase)
        assert policy is not None
        policy.apply(state, entry, approve)
    return reason


def gate_stage(phase: Phase = "pre", **conditions: Any) -> dict[str, Any]:
    gates = {
        "gates": {
            "checks": [
                {"name": "health", "http": {"url": "http://web/health"}},
                {"name": "errors", "http": {"url": "http://web/errors"}},
            ]
        }
    }
    return {f"{phase}_deployment": {**gates, **conditions}}


def gate_state(phase: Phase = "pre", status: str = "evaluating") -> GateState:
    return GateState(phase=phase, status=status, started_at=NOW, deadline=NOW)  # type: ignore[arg-type]


# --- the rule: named people, else the stage's approvers, else the creator ----------


def test_the_people_named_for_a_decision_decide_with_groups_expanded() -> None:
    d = deciders({"pre_deployment": approvals(["alice"])})
    assert d.of(["erin", "group:ops"]) == ["erin", "bob", "dave"]


def test_where_nobody_is_named_the_stages_pre_and_post_approvers_decide() -> None:
    d = deciders(
        {
            "pre_deployment": approvals(["alice", "group:ops"]),
            "post_deployment": approvals(["alice", "erin"]),
        }
    )
    assert d.of([]) == ["alice", "bob", "dave", "erin"]


def test_where_the_stage_names_no_approvers_the_creator_decides() -> None:
    assert deciders({}).of([]) == [CREATOR]


# --- approvals: any ----------------------------------------------------------------


def test_under_any_one_approval_completes_it() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "erin"], "any")})
    states = [pending(d)]
    assert decide(d, states, "pre", "erin") is None
    assert states[0].status == "approved"


def test_someone_not_listed_may_not_approve_and_is_told_who_may() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "group:ops"])})
    reason, entry = judge_approval(d, [pending(d)], "pre", "mallory", True)
    assert reason == "mallory is not an approver (approvers: alice, group:ops)"
    assert entry is None


def test_someone_not_listed_may_not_reject_either() -> None:
    d = deciders({"pre_deployment": approvals(["alice"])})
    reason, _ = judge_approval(d, [pending(d)], "pre", "mallory", False)
    assert reason == "mallory is not an approver (approvers: alice)"


def test_a_member_of_a_listed_group_approves_for_the_group() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "group:ops"], "all")})
    states = [pending(d)]
    assert decide(d, states, "pre", "dave") is None
    assert states[0].done_entries == [1]
    assert states[0].waiting_for == ["alice"]


# --- approvals: all ----------------------------------------------------------------


def test_under_all_every_entry_approves_in_any_order() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "erin", "group:ops"], "all")})
    states = [pending(d)]
    assert decide(d, states, "pre", "bob") is None
    assert states[0].status == "pending"
    assert decide(d, states, "pre", "erin") is None
    assert states[0].waiting_for == ["alice"]
    assert decide(d, states, "pre", "alice") is None
    assert states[0].status == "approved"


def test_under_all_approving_twice_is_refused_as_approved_already() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "erin"], "all")})
    states = [pending(d)]
    assert decide(d, states, "pre", "alice") is None
    assert decide(d, states, "pre", "alice") == "alice has approved already"
    assert states[0].status == "pending"


def test_under_all_a_person_in_two_entries_satisfies_only_one_of_them() -> None:
    d = deciders({"pre_deployment": approvals(["bob", "group:ops"], "all")})
    states = [pending(d)]
    assert decide(d, states, "pre", "bob") is None
    assert decide(d, states, "pre", "bob") == "bob has approved already"
    assert decide(d, states, "pre", "dave") is None
    assert states[0].status == "approved"


def test_a_second_member_of_a_satisfied_group_is_not_told_they_approved_already() -> None:
    # bob approved for group:ops; dave never approved anything, so the reason must not
    # say he did, and should say which entry is done.
    d = deciders({"pre_deployment": approvals(["alice", "group:ops"], "all")})
    states = [pending(d)]
    assert decide(d, states, "pre", "bob") is None
    reason = decide(d, states, "pre", "dave")
    assert reason is not None
    assert "dave has approved already" not in reason
    assert "group:ops" in reason


# --- approvals: sequence -----------------------------------------------------------


def test_under_sequence_approvals_come_in_the_listed_order() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "group:ops", "erin"], "sequence")})
    states = [pending(d)]
    assert states[0].waiting_for == ["alice"]
    assert decide(d, states, "pre", "alice") is None
    assert states[0].waiting_for == ["group:ops"]
    assert decide(d, states, "pre", "bob") is None
    assert decide(d, states, "pre", "erin") is None
    assert states[0].status == "approved"


def test_under_sequence_an_approval_out_of_turn_is_refused_naming_who_is_first() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "group:ops", "erin"], "sequence")})
    states = [pending(d)]
    assert decide(d, states, "pre", "erin") == "out of turn: waiting for alice first"
    assert decide(d, states, "pre", "alice") is None
    assert decide(d, states, "pre", "erin") == "out of turn: waiting for group:ops first"
    assert states[0].done_entries == [0]


def test_under_sequence_a_refused_out_of_turn_approval_may_be_given_when_the_turn_comes() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "erin"], "sequence")})
    states = [pending(d)]
    assert decide(d, states, "pre", "erin") is not None
    assert decide(d, states, "pre", "alice") is None
    assert decide(d, states, "pre", "erin") is None
    assert states[0].status == "approved"


def test_under_sequence_a_rejection_is_accepted_out_of_turn() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "group:ops", "erin"], "sequence")})
    states = [pending(d)]
    assert decide(d, states, "pre", "erin", approve=False) is None
    assert states[0].status == "rejected"


def test_after_a_rejection_nobody_may_approve() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "erin"], "all")})
    states = [pending(d)]
    assert decide(d, states, "pre", "alice", approve=False) is None
    assert (
        decide(d, states, "pre", "erin") == "the pre-deployment approval is not pending (rejected)"
    )


# --- the creator -------------------------------------------------------------------


def test_the_creator_may_not_approve_their_own_release() -> None:
    d = deciders({"pre_deployment": approvals([CREATOR, "alice"])})
    reason, _ = judge_approval(d, [pending(d)], "pre", CREATOR, True)
    assert reason == "carol created the release and may not approve it"


def test_the_creator_in_a_group_may_not_approve_either() -> None:
    d = deciders(
        {"pre_deployment": approvals(["group:leads"])}, groups={"leads": [CREATOR, "alice"]}
    )
    reason, _ = judge_approval(d, [pending(d)], "pre", CREATOR, True)
    assert reason == "carol created the release and may not approve it"
    assert judge_approval(d, [pending(d)], "pre", "alice", True) == (None, 0)


def test_the_creator_approves_when_creator_can_approve() -> None:
    d = deciders({"pre_deployment": approvals([CREATOR], creator_can_approve=True)})
    states = [pending(d)]
    assert decide(d, states, "pre", CREATOR) is None
    assert states[0].status == "approved"


def test_the_creator_may_still_reject_their_own_release() -> None:
    d = deciders({"pre_deployment": approvals([CREATOR, "alice"])})
    states = [pending(d)]
    assert decide(d, states, "pre", CREATOR, approve=False) is None
    assert states[0].status == "rejected"


# --- the wrong phase, a skipped approval -------------------------------------------


def test_approving_pre_when_the_stage_has_only_a_post_approval_says_use_post() -> None:
    d = deciders({"post_deployment": approvals(["alice"])})
    reason, _ = judge_approval(d, [pending(d, "post")], "pre", "alice", True)
    assert reason == (
        "no pre-deployment approval is pending; the post-deployment approval is (use --post)"
    )


def test_approving_pre_after_it_was_approved_while_post_is_pending_says_use_post() -> None:
    # The usual case: the pre approval is done, the jobs ran, the post approval waits,
    # and alice forgets --post.
    d = deciders({"pre_deployment": approvals(["alice"]), "post_deployment": approvals(["alice"])})
    pre, post = pending(d, "pre"), pending(d, "post")
    states = [pre]
    assert decide(d, states, "pre", "alice") is None
    states.append(post)
    reason, _ = judge_approval(d, states, "pre", "alice", True)
    assert reason is not None
    assert "use --post" in reason


def test_approving_post_while_the_pre_approval_is_pending_says_use_no_post() -> None:
    d = deciders({"pre_deployment": approvals(["alice"]), "post_deployment": approvals(["alice"])})
    reason, _ = judge_approval(d, [pending(d, "pre")], "post", "alice", True)
    assert reason == (
        "no post-deployment approval is pending; the pre-deployment approval is (use no --post)"
    )


def test_approving_a_phase_that_has_no_approval_at_all_says_none_is_pending() -> None:
    d = deciders({"pre_deployment": approvals(["alice"])})
    reason, _ = judge_approval(d, [], "pre", "alice", True)
    assert reason == "no pre-deployment approval is pending"


def test_a_skipped_approval_cannot_be_decided() -> None:
    d = deciders({"pre_deployment": approvals(["alice"], skip_if_approved_previous_stage=True)})
    state = pending(d)
    state.status = "skipped"
    assert judge_approval(d, [state], "pre", "alice", True) == (
        "no pre-deployment approval is pending",
        None,
    )
    assert judge_approval(d, [state], "pre", "alice", False)[0] == (
        "no pre-deployment approval is pending"
    )


def test_a_skipped_pre_approval_points_to_a_pending_post_approval() -> None:
    d = deciders(
        {
            "pre_deployment": approvals(["alice"], skip_if_approved_previous_stage=True),
            "post_deployment": approvals(["alice"]),
        }
    )
    pre = pending(d, "pre")
    pre.status = "skipped"
    reason, _ = judge_approval(d, [pre, pending(d, "post")], "pre", "alice", True)
    assert reason is not None and reason.endswith("(use --post)")


def test_a_timed_out_approval_is_not_pending() -> None:
    d = deciders({"pre_deployment": approvals(["alice"])})
    state = pending(d)
    state.status = "timed_out"
    reason, _ = judge_approval(d, [state], "pre", "alice", True)
    assert reason == "the pre-deployment approval is not pending (timed_out)"


# --- covered_by: skip_if_approved_previous_stage -----------------------------------


def policy_of(approvers: list[str], policy: str = "any", **more: Any) -> ApprovalPolicy:
    d = deciders({"pre_deployment": approvals(approvers, policy, **more)})
    found = d.policy("pre")
    assert found is not None
    return found


def test_under_any_one_upstream_approver_covers_the_approval() -> None:
    assert policy_of(["alice", "erin"]).covered_by({"erin"})
    assert not policy_of(["alice", "erin"]).covered_by({"mallory"})


def test_under_all_every_entry_must_have_approved_upstream() -> None:
    assert not policy_of(["alice", "group:ops"], "all").covered_by({"alice"})
    assert policy_of(["alice", "group:ops"], "all").covered_by({"alice", "dave"})


def test_the_creators_upstream_approval_covers_nothing_unless_they_may_approve() -> None:
    assert not policy_of([CREATOR]).covered_by({CREATOR})
    assert policy_of([CREATOR], creator_can_approve=True).covered_by({CREATOR})


# --- deploy --now --------------------------------------------------------------------


def deferred_pre(d: Deciders) -> list[ApprovalState]:
    state = pending(d)
    state.status, state.done_entries, state.defer_until = "approved", [0], NOW
    return [state]


def test_a_pre_deployment_approver_may_end_a_deferral() -> None:
    d = deciders({"pre_deployment": approvals(["alice", "group:ops"])})
    assert may_end_deferral(d, deferred_pre(d), True, "alice") is None
    assert may_end_deferral(d, deferred_pre(d), True, "dave") is None


def test_deploy_now_is_refused_when_the_deployment_is_not_deferred() -> None:
    d = deciders({"pre_deployment": approvals(["alice"])})
    assert may_end_deferral(d, deferred_pre(d), False, "alice") == "the deployment is not deferred"


def test_deploy_now_is_refused_on_a_stage_without_a_pre_approval() -> None:
    d = deciders({"post_deployment": approvals(["alice"])})
    assert may_end_deferral(d, [], True, "alice") == "the deployment is not deferred"


def test_deploy_now_by_someone_who_is_not_a_pre_approver_is_refused() -> None:
    d = deciders({"pre_deployment": approvals(["alice"]), "post_deployment": approvals(["erin"])})
    assert may_end_deferral(d, deferred_pre(d), True, "erin") == (
        "erin is not an approver (approvers: alice)"
    )


def test_the_creator_may_not_end_a_deferral_unless_they_may_approve() -> None:
    d = deciders({"pre_deployment": approvals([CREATOR, "alice"])})
    assert may_end_deferral(d, deferred_pre(d), True, CREATOR) == (
        "carol created the release and may not approve it"
    )
    allowed = deciders({"pre_deployment": approvals([CREATOR], creator_can_approve=True)})
    assert may_end_deferral(allowed, deferred_pre(allowed), True, CREATOR) is None


# --- ignoring a gate check -----------------------------------------------------------


def test_an_approver_of_the_phase_may_ignore_one_of_its_gate_checks() -> None:
    d = deciders(gate_stage("pre", **approvals(["alice", "group:ops"])))
    assert may_ignore_gate(d, [gate_state()], "pre", "health", "alice") is None
    assert may_ignore_gate(d, [gate_state()], "pre", "errors", "bob") is None


def test_ignoring_an_unknown_check_names_the_checks_there_are() -> None:
    d = deciders(gate_stage("pre", **approvals(["alice"])))
    assert may_ignore_gate(d, [gate_state()], "pre", "latency", "alice") == (
        "no pre-deployment gate check 'latency' (checks: health, errors)"
    )


def test_ignoring_a_check_of_a_phase_without_gates_says_there_is_none() -> None:
    d = deciders(gate_stage("pre", **approvals(["alice"])))
    assert may_ignore_gate(d, [gate_state()], "post", "health", "alice") == (
        "no post-deployment gate check 'health'"
    )


def test_an_unlabelled_check_is_ignored_by_its_url() -> None:
    d = deciders(
        {
            "pre_deployment": {
                **approvals(["alice"]),
                "gates": {"checks": [{"http": {"url": "http://web/health"}}]},
            }
        }
    )
    assert may_ignore_gate(d, [gate_state()], "pre", "http://web/health", "alice") is None


def test_someone_who_is_not_a_decider_may_not_ignore_a_gate() -> None:
    d = deciders(gate_stage("pre", **approvals(["alice", "group:ops"])))
    assert may_ignore_gate(d, [gate_state()], "pre", "health", "mallory") == (
        "mallory may not ignore pre-deployment gates (who may: alice, bob, dave)"
    )


def test_the_creator_may_not_ignore_a_gate_the_stage_names_approvers_for() -> None:
    d = deciders(gate_stage("pre", **approvals(["alice"])))
    assert may_ignore_gate(d, [gate_state()], "pre", "health", CREATOR) == (
        "carol may not ignore pre-deployment gates (who may: alice)"
    )


def test_gates_of_a_phase_without_approvers_are_ignored_by_the_other_phases_approvers() -> None:
    stage = {**gate_stage("post"), "pre_deployment": approvals(["alice"])}
    d = deciders(stage)
    assert may_ignore_gate(d, [gate_state("post")], "post", "health", "alice") is None
    assert may_ignore_gate(d, [gate_state("post")], "post", "health", "erin") == (
        "erin may not ignore post-deployment gates (who may: alice)"
    )


def test_on_a_stage_without_approvers_only_the_creator_may_ignore_a_gate() -> None:
    d = deciders(gate_stage("pre"))
    assert may_ignore_gate(d, [gate_state()], "pre", "health", CREATOR) is None
    assert may_ignore_gate(d, [gate_state()], "pre", "health", "alice") == (
        "alice may not ignore pre-deployment gates (who may: carol)"
    )


def test_gates_that_are_not_being_evaluated_cannot_be_ignored() -> None:
    d = deciders(gate_stage("pre", **approvals(["alice"])))
    not_evaluated = "the pre-deployment gates are not being evaluated"
    assert may_ignore_gate(d, [], "pre", "health", "alice") == not_evaluated
    assert may_ignore_gate(d, [gate_state(status="passed")], "pre", "health", "alice") == (
        not_evaluated
    )
    assert may_ignore_gate(d, [gate_state(status="timed_out")], "pre", "health", "alice") == (
        not_evaluated
    )
    assert may_ignore_gate(d, [gate_state(status="waiting")], "pre", "health", "alice") is None


def test_only_the_latest_gate_state_of_the_phase_counts() -> None:
    d = deciders(gate_stage("pre", **approvals(["alice"])))
    states = [gate_state(status="timed_out"), gate_state(status="evaluating")]
    assert may_ignore_gate(d, states, "pre", "health", "alice") is None
    assert may_ignore_gate(d, list(reversed(states)), "pre", "health", "alice") == (
        "the pre-deployment gates are not being evaluated"
    )


# --- manual interventions ----------------------------------------------------------


def test_the_approvers_an_intervention_names_decide_it() -> None:
    d = deciders({"pre_deployment": approvals(["alice"])})
    assert may_decide_intervention(d, ["group:ops"], "dave") is None
    assert may_decide_intervention(d, ["group:ops"], "alice") == (
        "alice may not decide this intervention (who may: bob, dave)"
    )


def test_an_intervention_naming_nobody_is_decided_by_the_stages_approvers() -> None:
    d = deciders({"pre_deployment": approvals(["alice"]), "post_deployment": approvals(["erin"])})
    assert may_decide_intervention(d, [], "alice") is None
    assert may_decide_intervention(d, [], "erin") is None
    assert may_decide_intervention(d, [], CREATOR) == (
        "carol may not decide this intervention (who may: alice, erin)"
    )


def test_an_intervention_on_a_stage_without_approvers_is_decided_by_the_creator() -> None:
    d = deciders({})
    assert may_decide_intervention(d, [], CREATOR) is None
    assert may_decide_intervention(d, [], "alice") == (
        "alice may not decide this intervention (who may: carol)"
    )


def test_deciding_when_no_intervention_is_pending_is_refused() -> None:
    d = deciders({})
    assert may_decide_intervention(d, None, CREATOR) == "no manual intervention is pending"


def test_an_interventions_approvers_come_from_its_task_in_the_pipeline() -> None:
    d = deciders(
        {
            "pre_deployment": approvals(["alice"]),
            "tasks": [
                {"name": "deploy", "script": "./deploy.sh"},
                {
                    "name": "check the shop",
                    "manual_intervention": {
                        "instructions": "Open the shop and buy something.",
                        "approvers": ["erin"],
                    },
                },
            ],
        }
    )
    task = d.stage.all_jobs()[0].tasks[1]
    assert task.manual_intervention is not None
    named = task.manual_intervention.approvers
    assert may_decide_intervention(d, named, "erin") is None
    assert may_decide_intervention(d, named, "alice") == (
        "alice may not decide this intervention (who may: erin)"
    )


# --- identity-provider groups: group:oidc:NAME ----------------------------------------
# Their members are known only when they sign in: the API passes the groups a person's
# token carried (`oidc:NAME`) with the decision.

RELEASE_MANAGERS = ("oidc:release-managers",)


def test_a_member_of_a_named_provider_group_approves_and_others_are_told_who_may() -> None:
    d = deciders({"pre_deployment": approvals(["group:oidc:release-managers"])})
    assert decide_as(d, [pending(d)], "olivia", ("oidc:ops",)) == (
        "olivia is not an approver (approvers: group:oidc:release-managers)"
    )
    states = [pending(d)]
    assert decide_as(d, states, "olivia", RELEASE_MANAGERS) is None
    assert states[0].status == "approved"


def test_a_provider_group_inside_a_pipeline_group_counts_beside_its_users() -> None:
    d = deciders(
        {"pre_deployment": approvals(["group:leads"])},
        groups={"leads": ["alice", "group:oidc:leads"]},
    )
    assert decide_as(d, [pending(d)], "alice", ()) is None
    assert decide_as(d, [pending(d)], "lena", ("oidc:leads",)) is None
    assert decide_as(d, [pending(d)], "lena", RELEASE_MANAGERS) is not None


def test_under_sequence_a_provider_group_waits_its_turn() -> None:
    d = deciders(
        {"pre_deployment": approvals(["alice", "group:oidc:release-managers"], "sequence")}
    )
    states = [pending(d)]
    assert decide_as(d, states, "olivia", RELEASE_MANAGERS) == (
        "out of turn: waiting for alice first"
    )
    assert decide_as(d, states, "alice", ()) is None
    assert decide_as(d, states, "olivia", RELEASE_MANAGERS) is None
    assert states[0].status == "approved"


def test_the_creator_in_a_provider_group_may_not_approve_their_release() -> None:
    d = deciders({"pre_deployment": approvals(["group:oidc:release-managers"])})
    assert decide_as(d, [pending(d)], CREATOR, RELEASE_MANAGERS) == (
        "carol created the release and may not approve it"
    )


def test_an_intervention_naming_only_a_provider_group_does_not_fall_back_to_the_approvers() -> None:
    d = deciders({"pre_deployment": approvals(["alice"])})
    named = ["group:oidc:sre"]
    assert may_decide_intervention(d, named, "sam", ("oidc:sre",)) is None
    assert may_decide_intervention(d, named, "alice") == (
        "alice may not decide this intervention (who may: group:oidc:sre)"
    )
    # Nobody is known by name to mail; the provider group still decides.
    assert d.of(named) == []
    assert d.who(named) == ["group:oidc:sre"]


def test_provider_group_members_end_deferrals_and_ignore_gates_of_their_phase() -> None:
    d = deciders(gate_stage(approvals=approvals(["group:oidc:sre"])["approvals"]))
    assert may_ignore_gate(d, [gate_state()], "pre", "health", "sam", ("oidc:sre",)) is None
    assert may_ignore_gate(d, [gate_state()], "pre", "health", "sam", ("oidc:dev",)) == (
        "sam may not ignore pre-deployment gates (who may: group:oidc:sre)"
    )
    assert may_end_deferral(d, deferred_pre(d), True, "sam", ("oidc:sre",)) is None
    assert may_end_deferral(d, deferred_pre(d), True, "sam") is not None


def test_a_group_may_hold_provider_groups_but_not_other_groups_and_mail_goes_to_users() -> None:
    leads = pipeline(
        {
            "pre_deployment": approvals(["group:leads"]),
            "notify": {"on": ["failed"], "to": ["group:leads"]},
        },
        groups={"leads": ["alice", "group:oidc:leads"]},
    )
    assert leads.people(["group:leads"]) == ["alice"]
    assert leads.idp_groups(["group:leads", "group:oidc:sre"]) == [
        "group:oidc:leads",
        "group:oidc:sre",
    ]
    with pytest.raises(ValidationError, match="a group holds users and identity-provider"):
        pipeline({}, groups={"ops": ["bob"], "all": ["group:ops"]})
    with pytest.raises(ValidationError, match="an identity-provider group has no mail"):
        pipeline({"notify": {"on": ["failed"], "to": ["group:oidc:sre"]}})


def decide_as(
    d: Deciders, states: list[ApprovalState], user: str, groups: tuple[str, ...]
) -> str | None:
    """An approval by `user`, signed in with identity-provider `groups`."""
    reason, entry = judge_approval(d, states, "pre", user, True, groups)
    if reason is None:
        assert entry is not None
        policy = d.policy("pre")
        assert policy is not None
        policy.apply(states[0], entry, True)
    return reason
