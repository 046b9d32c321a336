"""The mails of a release (workflows/mail.py): who gets which mail, with which command.

Pure unit tests: a real Pipeline and ReleaseSpec, the approval state the workflow
keeps, and the NotificationRequests a person would receive.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime, timedelta
from typing import Any

from workflows.approval_policy import ApprovalPolicy, ApprovalState
from workflows.mail import (
    approval_mails,
    approve_command,
    approvers_to_mail,
    intervention_mails,
    reject_command,
    resume_command,
    waiting_notice,
)
from workflows.pipeline import ManualIntervention, Pipeline
from workflows.release import ReleaseSpec

CREATOR = "carol"
NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
USERS = {
    "alice": {"email": "alice@example.com"},
    "bob": {"email": "bob@example.com"},
    "dave": {"email": "dave@example.com"},
    CREATOR: {"email": "carol@example.com"},
    # erin is an approver without an address
}


def spec(stage: dict[str, Any], **groups: list[str]) -> ReleaseSpec:
    definition = Pipeline.model_validate(
        {
            "name": "webapp",
            "groups": {"ops": ["bob", "dave"], **groups},
            "users": USERS,
            "stages": [
                {
                    "name": "prod",
                    "pool": "web",
                    "tasks": [{"name": "deploy", "script": "./deploy.sh"}],
                    **stage,
                }
            ],
        }
    )
    return ReleaseSpec(
        pipeline=definition,
        number=7,
        name="Release-7",
        created_by=CREATOR,
        created_at=NOW,
        revision="0" * 64,
    )


def with_approvals(
    approvers: list[str], policy: str = "any", phase: str = "pre", **more: Any
) -> ReleaseSpec:
    return spec(
        {f"{phase}_deployment": {"approvals": {"approvers": approvers, "policy": policy, **more}}}
    )


def policy_and_state(
    release: ReleaseSpec, phase: str = "pre"
) -> tuple[ApprovalPolicy, ApprovalState]:
    stage = release.pipeline.stage("prod")
    conditions = stage.pre_deployment if phase == "pre" else stage.post_deployment
    assert conditions is not None and conditions.approvals is not None
    approvals = conditions.approvals
    state = ApprovalState(
        phase=phase,  # type: ignore[arg-type]
        policy=approvals.policy,
        approvers=approvals.approvers,
        deadline=NOW + approvals.timeout,
    )
    return ApprovalPolicy(approvals, release.pipeline, release.created_by), state


# --- the commands --------------------------------------------------------------------


def test_the_approve_command_names_the_release_and_the_stage_but_no_one() -> None:
    # Who approves is whoever runs it, signed in as themselves: no `--as` any more.
    assert approve_command("webapp/7", "prod", post=False) == "stageflow approve webapp/7 prod"


def test_the_post_deployment_approve_command_says_post() -> None:
    assert approve_command("webapp/7", "prod", post=True) == (
        "stageflow approve webapp/7 prod --post"
    )


def test_the_reject_command_asks_for_a_comment() -> None:
    assert reject_command("webapp/7", "prod", post=False) == (
        "stageflow reject webapp/7 prod --comment 'why'"
    )
    assert reject_command("webapp/7", "prod", post=True) == (
        "stageflow reject webapp/7 prod --post --comment 'why'"
    )


def test_the_resume_command_goes_on_after_an_intervention() -> None:
    assert resume_command("webapp/7", "prod") == "stageflow resume webapp/7 prod"


def test_commands_with_awkward_names_survive_being_pasted_into_a_shell() -> None:
    stage = "o'brien $(rm -rf ~)"
    assert shlex.split(approve_command("web app/7", stage, post=True)) == [
        "stageflow", "approve", "web app/7", stage, "--post",
    ]  # fmt: skip
    assert shlex.split(resume_command("webapp/7", stage)) == [
        "stageflow", "resume", "webapp/7", stage,
    ]  # fmt: skip


def test_a_reject_comment_with_quotes_survives_being_pasted_into_a_shell() -> None:
    comment = "it's broken; see `logs` & $HOME"
    command = reject_command("webapp/7", "prod", post=False, comment=comment)
    assert shlex.split(command) == [
        "stageflow", "reject", "webapp/7", "prod", "--comment", comment,
    ]  # fmt: skip


# --- who is mailed for an approval ---------------------------------------------------


def test_under_sequence_only_the_next_approver_is_mailed() -> None:
    policy, state = policy_and_state(with_approvals(["alice", "group:ops"], "sequence"))
    assert approvers_to_mail(policy, state) == ["alice"]


def test_under_sequence_the_next_entry_is_mailed_after_an_approval() -> None:
    policy, state = policy_and_state(with_approvals(["alice", "group:ops", "erin"], "sequence"))
    policy.apply(state, 0, approve=True)
    assert approvers_to_mail(policy, state) == ["bob", "dave"]
    policy.apply(state, 1, approve=True)
    assert approvers_to_mail(policy, state) == ["erin"]


def test_under_all_every_open_approver_is_mailed() -> None:
    policy, state = policy_and_state(with_approvals(["alice", "group:ops", "erin"], "all"))
    assert approvers_to_mail(policy, state) == ["alice", "bob", "dave", "erin"]
    policy.apply(state, 1, approve=True)
    assert approvers_to_mail(policy, state) == ["alice", "erin"]


def test_under_any_every_approver_is_mailed() -> None:
    policy, state = policy_and_state(with_approvals(["alice", "group:ops"], "any"))
    assert approvers_to_mail(policy, state) == ["alice", "bob", "dave"]


def test_the_creator_is_not_mailed_to_approve_their_own_release() -> None:
    policy, state = policy_and_state(with_approvals([CREATOR, "alice"], "all"))
    assert approvers_to_mail(policy, state) == ["alice"]
    release = spec(
        {"pre_deployment": {"approvals": {"approvers": ["group:leads"]}}},
        leads=[CREATOR, "alice"],
    )
    policy, state = policy_and_state(release)
    assert approvers_to_mail(policy, state) == ["alice"]


def test_under_sequence_nobody_is_mailed_while_it_is_the_creators_turn() -> None:
    # The creator may not approve, so their turn is mailed to no one (nobody can act).
    policy, state = policy_and_state(with_approvals([CREATOR, "alice"], "sequence"))
    assert approvers_to_mail(policy, state) == []


def test_the_creator_is_mailed_when_creator_can_approve() -> None:
    release = with_approvals([CREATOR, "alice"], "all", creator_can_approve=True)
    policy, state = policy_and_state(release)
    assert approvers_to_mail(policy, state) == [CREATOR, "alice"]


# --- the approval mails --------------------------------------------------------------


def test_each_approver_gets_their_own_mail_with_their_own_command() -> None:
    release = with_approvals(["alice", "group:ops"], "any")
    policy, state = policy_and_state(release)
    mails = approval_mails(release, "prod", 1, state, approvers_to_mail(policy, state))
    assert [[r.user for r in m.recipients] for m in mails] == [["alice"], ["bob"], ["dave"]]
    assert [m.recipients[0].email for m in mails] == [
        "alice@example.com",
        "bob@example.com",
        "dave@example.com",
    ]
    bob = mails[1]
    assert bob.kind == "approval_pending"
    assert bob.stage == "prod" and bob.phase == "pre" and bob.attempt == 1
    assert bob.command == "stageflow approve webapp/7 prod"
    assert bob.reject_command == "stageflow reject webapp/7 prod --comment 'why'"
    assert bob.approvers == ["alice", "group:ops"]
    assert bob.deadline == NOW + timedelta(days=30)
    assert bob.release.pipeline == "webapp" and bob.release.number == 7
    assert bob.release.created_by == CREATOR


def test_post_deployment_approval_mails_carry_post_in_both_commands() -> None:
    release = with_approvals(["alice"], phase="post")
    policy, state = policy_and_state(release, "post")
    [alice] = approval_mails(release, "prod", 2, state, approvers_to_mail(policy, state))
    assert alice.phase == "post"
    assert alice.command == "stageflow approve webapp/7 prod --post"
    assert alice.reject_command == "stageflow reject webapp/7 prod --post --comment 'why'"


def test_an_approver_without_an_address_gets_no_mail() -> None:
    release = with_approvals(["erin", "alice"], "all")
    policy, state = policy_and_state(release)
    mails = approval_mails(release, "prod", 1, state, approvers_to_mail(policy, state))
    assert [m.recipients[0].user for m in mails] == ["alice"]
    assert approval_mails(release, "prod", 1, state, ["erin"]) == []


# --- news for watchers ---------------------------------------------------------------


def test_the_waiting_notice_says_who_it_waits_for_without_a_command() -> None:
    release = with_approvals(["alice", "group:ops"], "sequence")
    policy, state = policy_and_state(release)
    notice = waiting_notice(release, "prod", 1, state, ["dave", "erin"])
    assert notice is not None
    assert notice.kind == "outcome"
    assert [r.user for r in notice.recipients] == ["dave"]
    assert notice.status == "waiting for approval"
    assert notice.message == (
        "The pre-deployment approval waits for alice until 2026-12-31 03:00 UTC."
    )
    assert notice.command is None and notice.reject_command is None


def test_the_waiting_notice_follows_the_turn_under_sequence() -> None:
    release = with_approvals(["alice", "group:ops"], "sequence")
    policy, state = policy_and_state(release)
    policy.apply(state, 0, approve=True)
    notice = waiting_notice(release, "prod", 1, state, ["alice"])
    assert notice is not None
    assert "waits for group:ops until" in notice.message


def test_a_waiting_notice_to_watchers_without_addresses_is_not_sent() -> None:
    release = with_approvals(["alice"])
    _, state = policy_and_state(release)
    assert waiting_notice(release, "prod", 1, state, ["erin"]) is None


# --- intervention mails --------------------------------------------------------------


def test_each_intervention_decider_gets_a_resume_and_a_reject_command() -> None:
    release = spec({})
    intervention = ManualIntervention(
        instructions="Open the shop and buy something.", approvers=["group:ops"]
    )
    deadline = NOW + timedelta(days=1)
    mails = intervention_mails(release, "prod", 1, intervention, deadline, ["bob", "dave"])
    assert [m.recipients[0].user for m in mails] == ["bob", "dave"]
    dave = mails[1]
    assert dave.kind == "intervention_pending"
    assert dave.command == "stageflow resume webapp/7 prod"
    assert dave.reject_command == "stageflow reject webapp/7 prod --comment 'why'"
    assert dave.instructions == "Open the shop and buy something."
    assert dave.approvers == ["group:ops"]
    assert dave.deadline == deadline


def test_an_intervention_decider_without_an_address_gets_no_mail() -> None:
    release = spec({})
    intervention = ManualIntervention(instructions="Check.", approvers=["erin"])
    assert intervention_mails(release, "prod", 1, intervention, NOW, ["erin"]) == []
