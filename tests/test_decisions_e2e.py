"""People's decisions answered at once, as the CLI prints them: refusals on ended
stages and releases, the release's waiting state, the next command `release show`
suggests, who gets the approval mail, and the StageflowStatus every end state sets.
The dev server, a control worker and an agent as processes; a real SMTP server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from email.message import EmailMessage

import pytest

from starter.releases import ReleaseRef
from tests.conftest import Stack, wait_for
from tests.test_approvals_e2e import Inbox, body, smtp, smtp_env, wait_status
from workflows.names import stage_workflow_id

pytestmark = pytest.mark.e2e
__all__ = ["smtp"]  # the fixture, used by name


def cli_json(stack: Stack, *args: str) -> object:
    done = stack.cli("--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_a_decision_on_an_ended_stage_is_refused_and_kept_then_a_closed_release_says_so(
    stack: Stack,
) -> None:
    path = stack.write_pipeline(f"""
        name: ended-{stack.suffix}
        stages:
          - name: dev
            pool: POOL
            tasks: [{{name: deploy, script: "echo deployed"}}]
    """)
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(path)
    await stack.wait_settled(ref)

    # The creator decides a stage that names no approvers; the stage has ended.
    late = await asyncio.to_thread(stack.cli, "approve", str(ref), "dev")
    assert late.returncode == 2
    assert late.stderr.strip() == (
        f"error: {ref}: approve dev (pre-deployment) refused: "
        "stage 'dev' is succeeded (attempt 1): nothing to approve"
    )
    history = await asyncio.to_thread(cli_json, stack, "history", str(ref))
    refused = [e for e in history if e["action"] == "approve"]  # type: ignore[union-attr]
    assert [(e["action"], e["outcome"], e["stage"]) for e in refused] == [
        ("approve", "refused", "dev")
    ]

    abandoned = await asyncio.to_thread(stack.cli, "abandon", str(ref), "--reason", "done")
    assert abandoned.returncode == 0 and f"{ref}: abandon accepted" in abandoned.stdout

    async def closed() -> bool:
        return (await stack.status(ref)).state == "abandoned"

    await wait_for(closed, what="the release to close")
    after = await asyncio.to_thread(stack.cli, "reject", str(ref), "dev", "--comment", "x")
    assert after.returncode == 2
    assert after.stderr.strip() == (
        f"error: release {ref} is abandoned and stage 'dev' is succeeded (attempt 1): "
        "nothing to reject"
    )
    again = await asyncio.to_thread(stack.cli, "deploy", str(ref), "dev")
    assert again.returncode == 2 and "Temporal said" not in again.stderr
    assert again.stderr.strip() == f"error: release {ref} is abandoned: nothing more can be done"


async def test_approvals_mail_whoever_can_decide_now_and_show_says_what_to_type(
    stack: Stack, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    path = stack.write_pipeline(f"""
        name: turns-{stack.suffix}
        groups: {{release-managers: [carol, erin]}}
        users:
          alice: {{email: alice@example.test}}
          bob: {{email: bob@example.test}}
          carol: {{email: carol@example.test}}
          dave: {{email: dave@example.test}}
          erin: {{email: erin@example.test}}
        stages:
          - name: prod
            pool: POOL
            pre_deployment:
              approvals: {{approvers: [alice, bob], policy: sequence}}
            post_deployment:
              approvals: {{approvers: [group:release-managers]}}
            notify: {{on: [waiting_for_approval], to: [dave]}}
            tasks: [{{name: deploy, script: "echo deployed"}}]
    """)
    await stack.start_worker(**smtp_env(port))
    await stack.start_agent("a1")
    ref, _ = await stack.create(path, user="carol")
    await wait_status(stack, str(ref), "waiting_for_approval")

    shown = await asyncio.to_thread(cli_json, stack, "release", "show", str(ref))
    assert shown["status"] == "waiting"  # type: ignore[index]
    table = await asyncio.to_thread(stack.cli, "release", "show", str(ref))
    assert f"stageflow approve {ref} prod" in table.stdout.replace("\n", " ")
    assert "redeploy" not in table.stdout

    # Under `sequence`, alice is asked first; dave, who only watches, hears without commands.
    await wait_for(mails(inbox, "alice"), what="alice's mail")
    notice = await wait_for(mails(inbox, "dave"), what="dave's notice")
    assert "waiting for approval" in notice[0]["Subject"]
    assert "stageflow approve" not in body(notice[0])
    assert inbox.to("bob@example.test") == []

    early = await asyncio.to_thread(stack.cli, "approve", str(ref), "prod", user="bob")
    assert early.returncode == 2 and "out of turn: waiting for alice first" in early.stderr
    first = await asyncio.to_thread(stack.cli, "approve", str(ref), "prod", user="alice")
    assert first.returncode == 0 and "approve prod (pre-deployment) accepted" in first.stdout
    bob_mail = await wait_for(mails(inbox, "bob"), what="bob's mail")
    assert f"stageflow approve {ref} prod" in body(bob_mail[0]).splitlines()
    second = await asyncio.to_thread(stack.cli, "approve", str(ref), "prod", user="bob")
    assert second.returncode == 0, second.stderr

    async def post_pending() -> bool:
        attempt = (await stack.status(ref)).stage("prod").latest
        return attempt is not None and any(
            a.phase == "post" and a.status == "pending" for a in attempt.approvals
        )

    await wait_for(post_pending, what="the post-deployment approval")
    no_flag = await asyncio.to_thread(stack.cli, "approve", str(ref), "prod", user="erin")
    assert no_flag.returncode == 2
    assert no_flag.stderr.strip().endswith(
        "the pre-deployment approval is not pending (approved); "
        "the post-deployment approval is (use --post)"
    )
    table = await asyncio.to_thread(stack.cli, "release", "show", str(ref))
    assert f"stageflow approve {ref} prod --post" in table.stdout.replace("\n", " ")
    await wait_for(mails(inbox, "erin"), what="erin's mail")
    done = await asyncio.to_thread(stack.cli, "approve", str(ref), "prod", "--post", user="erin")
    assert done.returncode == 0, done.stderr
    status = await stack.wait_settled(ref)
    assert status.stage("prod").status == "succeeded"
    # carol created the release and may not approve it: she is never asked.
    assert [m["Subject"] for m in inbox.to("carol@example.test") if "Approve" in m["Subject"]] == []
    assert len(inbox.to("bob@example.test")) == 1


def mails(inbox: Inbox, user: str) -> Callable[[], Awaitable[list[EmailMessage]]]:
    async def received() -> list[EmailMessage]:
        return inbox.to(f"{user}@example.test")

    return received


async def test_every_end_state_sets_stageflow_status(stack: Stack) -> None:
    path = stack.write_pipeline(f"""
        name: states-{stack.suffix}
        stages:
          - name: broken
            pool: POOL
            tasks: [{{name: fail, script: "exit 3"}}]
          - name: slow
            pool: POOL
            trigger: manual
            tasks: [{{name: wait, script: "sleep 60"}}]
    """)
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(path)
    deployed = await asyncio.to_thread(stack.cli, "deploy", str(ref), "slow")
    assert deployed.returncode == 0, deployed.stderr

    async def slow_running() -> bool:
        attempt = (await stack.status(ref)).stage("slow").latest
        return attempt is not None and any(t.status == "in_progress" for t in attempt.tasks)

    await wait_for(slow_running, what="the slow task to run")
    canceled = await asyncio.to_thread(stack.cli, "cancel", str(ref), "slow")
    assert canceled.returncode == 0, canceled.stderr
    await stack.wait_settled(ref)

    async def found(stage: str, status: str) -> bool:
        workflow_id = stage_workflow_id(ref.pipeline, ref.number, stage, 1)
        query = f"WorkflowId = '{workflow_id}' AND StageflowStatus = '{status}'"
        return [e.id async for e in stack.client.list_workflows(query)] == [workflow_id]

    await wait_for(lambda: found("broken", "failed"), what="StageflowStatus=failed")
    await wait_for(lambda: found("slow", "canceled"), what="StageflowStatus=canceled")
    assert isinstance(ref, ReleaseRef)
