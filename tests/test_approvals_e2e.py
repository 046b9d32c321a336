"""Approvals, refusals, rejection, gates and the approval mail, end to end: the dev
server, a control worker and an agent as processes, a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import email
import json
import shlex
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from starter.releases import ReleaseRef
from tests.conftest import Stack, wait_for
from tests.test_engine_e2e import replay_release
from worker.devserver import free_port

pytestmark = pytest.mark.e2e


class Inbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def smtp_env(port: int) -> dict[str, str]:
    return {
        "STAGEFLOW_SMTP_HOST": "127.0.0.1",
        "STAGEFLOW_SMTP_PORT": str(port),
        "STAGEFLOW_SMTP_SECURITY": "none",
        "STAGEFLOW_SMTP_FROM": "stageflow@example.test",
    }


PEOPLE = """
    groups: {release-managers: [carol, erin]}
    users:
      alice: {email: alice@example.test}
      bob: {email: bob@example.test}
      carol: {email: carol@example.test}
      dave: {email: dave@example.test}
"""


def pipeline(stack: Stack, approvals: str, extra_stage: str = "", name: str = "appr") -> str:
    return (
        f"""
    name: {name}-{stack.suffix}
    description: approvals test
"""
        + PEOPLE
        + f"""
    stages:
      - name: prod
        pool: POOL
        pre_deployment:
          approvals: {approvals}
        notify: {{on: [succeeded, rejected], to: [bob]}}
        tasks: [{{name: deploy, script: "echo deployed by approval"}}]
"""
        + extra_stage
    )


def body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return part.get_content()


async def stage_status(stack: Stack, ref: str, stage: str = "prod") -> str:
    shown = json.loads(
        (await asyncio.to_thread(stack.cli, "--json", "release", "show", ref)).stdout
    )
    return next(s["status"] for s in shown["stages"] if s["name"] == stage)


async def wait_status(stack: Stack, ref: str, status: str, stage: str = "prod") -> None:
    async def reached() -> bool:
        return await stage_status(stack, ref, stage) == status

    await wait_for(reached, timeout=60, what=f"{stage} of {ref} to be {status}")


async def test_approval_mail_names_the_release_and_its_command_approves(
    stack: Stack, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    path = stack.write_pipeline(
        pipeline(stack, "{approvers: [alice, group:release-managers], policy: any}")
    )
    await stack.start_worker(**smtp_env(port))
    await stack.start_agent("a1")
    created = await asyncio.to_thread(
        stack.cli,
        "--json",
        "release",
        "create",
        str(path),
        "--description",
        "fix login",
        user="dave",
    )
    assert created.returncode == 0, created.stderr
    ref = json.loads(created.stdout)["reference"]
    await wait_status(stack, ref, "waiting_for_approval")

    async def mail_for_alice() -> list[EmailMessage]:
        return inbox.to("alice@example.test")

    [mail] = await wait_for(mail_for_alice, what="the approval mail to alice")
    text = body(mail)
    assert (
        mail["Subject"]
        == f"[Stageflow] Approve {ref.split('/')[0]} Release-1 → prod (pre-deployment)"
    )
    assert "fix login" in text and "dave" in text and "prod" in text
    command = next(line for line in text.splitlines() if line.startswith("stageflow approve "))
    assert command == f"stageflow approve {ref} prod"
    assert {m["To"] for m in inbox.messages} >= {"alice@example.test", "carol@example.test"}

    # Run the command from the mail, as alice would: signed in as herself.
    argv = shlex.split(command)
    result = await asyncio.to_thread(stack.cli, *argv[1:], user="alice")
    assert result.returncode == 0, result.stderr
    assert "approve prod (pre-deployment) accepted" in result.stdout
    await wait_status(stack, ref, "succeeded")

    async def outcome_mail() -> list[EmailMessage]:
        return [m for m in inbox.to("bob@example.test") if "succeeded" in m["Subject"]]

    await wait_for(outcome_mail, what="the outcome mail to bob")
    history = json.loads((await asyncio.to_thread(stack.cli, "--json", "history", ref)).stdout)
    assert ("alice", "approve", "accepted") in [
        (e["actor"], e["action"], e["outcome"]) for e in history
    ]
    status = await stack.status(ReleaseRef.parse(ref))
    await replay_release(stack.client, status, record_as="approval")


async def test_refusals_of_non_approvers_creator_and_out_of_turn_are_in_history(
    stack: Stack, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    path = stack.write_pipeline(
        pipeline(
            stack, "{approvers: [dave, alice, bob], policy: sequence, creator_can_approve: false}"
        )
    )
    await stack.start_worker(**smtp_env(port))
    await stack.start_agent("a1")
    created = await asyncio.to_thread(
        stack.cli, "--json", "release", "create", str(path), user="dave"
    )
    assert created.returncode == 0, created.stderr
    ref = json.loads(created.stdout)["reference"]
    await wait_status(stack, ref, "waiting_for_approval")

    outsider = await asyncio.to_thread(stack.cli, "approve", ref, "prod", user="mallory")
    assert outsider.returncode == 2 and "mallory is not an approver" in outsider.stderr
    creator = await asyncio.to_thread(stack.cli, "approve", ref, "prod", user="dave")
    assert (
        creator.returncode == 2 and "dave created the release and may not approve" in creator.stderr
    )
    # dave cannot approve, so under `sequence` his turn blocks; bob is out of turn.
    early = await asyncio.to_thread(stack.cli, "approve", ref, "prod", user="bob")
    assert early.returncode == 2 and "out of turn: waiting for dave first" in early.stderr
    assert await stage_status(stack, ref) == "waiting_for_approval"

    history = json.loads((await asyncio.to_thread(stack.cli, "--json", "history", ref)).stdout)
    refused = [(e["actor"], e["detail"]) for e in history if e["outcome"] == "refused"]
    assert [actor for actor, _ in refused] == ["mallory", "dave", "bob"]
    table = (await asyncio.to_thread(stack.cli, "history", ref)).stdout
    assert "refused" in table and "out of turn" in table

    rejected = await asyncio.to_thread(
        stack.cli, "reject", ref, "prod", "--comment", "stuck", user="alice"
    )
    assert rejected.returncode == 0, rejected.stderr
    await wait_status(stack, ref, "rejected")


async def test_policies_all_and_sequence_need_every_approver(
    stack: Stack, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    extra = """
      - name: audit
        trigger: {after_stages: [prod]}
        pool: POOL
        pre_deployment:
          approvals: {approvers: [alice, group:release-managers], policy: sequence}
        tasks: [{name: audit, script: "echo audited"}]
"""
    path = stack.write_pipeline(pipeline(stack, "{approvers: [alice, bob], policy: all}", extra))
    await stack.start_worker(**smtp_env(port))
    await stack.start_agent("a1")
    created = await asyncio.to_thread(
        stack.cli, "--json", "release", "create", str(path), user="dave"
    )
    assert created.returncode == 0, created.stderr
    ref = json.loads(created.stdout)["reference"]
    await wait_status(stack, ref, "waiting_for_approval")

    mine = json.loads(
        (await asyncio.to_thread(stack.cli, "--json", "approvals", "--mine", user="bob")).stdout
    )
    assert [(row["release"], row["stage"]) for row in mine] == [(ref, "prod")]
    assert (
        await asyncio.to_thread(stack.cli, "approve", ref, "prod", user="alice")
    ).returncode == 0
    again = await asyncio.to_thread(stack.cli, "approve", ref, "prod", user="alice")
    assert again.returncode == 2 and "alice has approved already" in again.stderr
    assert await stage_status(stack, ref) == "waiting_for_approval"
    approve_all = await asyncio.to_thread(stack.cli, "approve", "--all-mine", user="bob")
    assert approve_all.returncode == 0 and "accepted" in approve_all.stdout, approve_all.stderr
    await wait_status(stack, ref, "waiting_for_approval", stage="audit")

    # sequence: carol (for release-managers) must wait for alice.
    early = await asyncio.to_thread(stack.cli, "approve", ref, "audit", user="carol")
    assert early.returncode == 2 and "out of turn" in early.stderr
    assert (
        await asyncio.to_thread(stack.cli, "approve", ref, "audit", user="alice")
    ).returncode == 0
    assert (
        await asyncio.to_thread(stack.cli, "approve", ref, "audit", user="carol")
    ).returncode == 0
    await wait_status(stack, ref, "succeeded", stage="audit")
    assert await stage_status(stack, ref) == "succeeded"


async def test_reject_stops_later_stages(stack: Stack, smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    extra = """
      - name: after
        trigger: {after_stages: [prod]}
        pool: POOL
        tasks: [{name: never, script: "echo never"}]
"""
    path = stack.write_pipeline(pipeline(stack, "{approvers: [alice]}", extra))
    await stack.start_worker(**smtp_env(port))
    await stack.start_agent("a1")
    created = await asyncio.to_thread(
        stack.cli, "--json", "release", "create", str(path), user="dave"
    )
    assert created.returncode == 0, created.stderr
    ref = json.loads(created.stdout)["reference"]
    await wait_status(stack, ref, "waiting_for_approval")
    result = await asyncio.to_thread(
        stack.cli, "reject", ref, "prod", "--comment", "not today", user="alice"
    )
    assert result.returncode == 0, result.stderr
    await wait_status(stack, ref, "rejected")
    shown = json.loads(
        (await asyncio.to_thread(stack.cli, "--json", "release", "show", ref)).stdout
    )
    stages = {s["name"]: s for s in shown["stages"]}
    assert stages["after"]["status"] == "not_deployed"
    assert (
        stages["prod"]["attempts"][-1]["message"]
        == "pre-deployment approval rejected by alice: not today"
    )

    async def rejected_mail() -> list[EmailMessage]:
        return [m for m in inbox.to("bob@example.test") if "rejected" in m["Subject"]]

    await wait_for(rejected_mail, what="the rejection mail to bob")


class SlowlyHealthy:
    def __init__(self, unhealthy_first: int) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.requests += 1
                self.send_response(200 if outer.requests > unhealthy_first else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_gate_that_turns_healthy_after_a_while_lets_the_deployment_go(
    stack: Stack, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    health = SlowlyHealthy(unhealthy_first=3)
    try:
        path = stack.write_pipeline(f"""
            name: gates-{stack.suffix}
            stages:
              - name: prod
                pool: POOL
                pre_deployment:
                  gates:
                    interval: 1s
                    min_success_duration: 1s
                    timeout: 2m
                    checks:
                      - name: health
                        http: {{url: "{health.url}"}}
                      - name: disk
                        script: {{pool: POOL, run: "test -d /"}}
                tasks: [{{name: deploy, script: "echo past the gates"}}]
        """)
        await stack.start_worker(**smtp_env(port))
        await stack.start_agent("a1", capacity=2)
        created = await asyncio.to_thread(stack.cli, "--json", "release", "create", str(path))
        assert created.returncode == 0, created.stderr
        ref = json.loads(created.stdout)["reference"]
        await wait_status(stack, ref, "succeeded")
    finally:
        health.close()
    gates = json.loads((await asyncio.to_thread(stack.cli, "--json", "gates", ref, "prod")).stdout)
    [state] = gates
    assert state["status"] == "passed"
    health_results = [e["results"][0] for e in state["evaluations"]]
    assert [r["healthy"] for r in health_results][:3] == [False, False, False]
    assert "answered 503" in health_results[0]["reason"]
    assert all(e["results"][1]["healthy"] for e in state["evaluations"])  # the script check
    table = (await asyncio.to_thread(stack.cli, "gates", ref, "prod")).stdout
    assert "health" in table and "disk" in table
    assert sys.executable


async def test_ignore_gate_deploy_now_and_resume_from_the_command_line(
    stack: Stack, smtp: tuple[Inbox, int]
) -> None:
    _, port = smtp
    path = stack.write_pipeline(f"""
        name: people-{stack.suffix}
        users: {{alice: {{email: alice@example.test}}}}
        stages:
          - name: prod
            pool: POOL
            pre_deployment:
              approvals: {{approvers: [alice]}}
              gates:
                interval: 1s
                timeout: 5m
                checks: [{{name: never-healthy, script: {{pool: POOL, run: "exit 1"}}}}]
            tasks:
              - name: look
                manual_intervention: {{instructions: "Look at the dashboard", approvers: [alice]}}
              - name: deploy
                script: echo deployed after the intervention
    """)
    await stack.start_worker(**smtp_env(port))
    await stack.start_agent("a1", capacity=2)
    created = await asyncio.to_thread(
        stack.cli, "--json", "release", "create", str(path), user="dave"
    )
    assert created.returncode == 0, created.stderr
    ref = json.loads(created.stdout)["reference"]
    await wait_status(stack, ref, "waiting_for_approval")

    approved = await asyncio.to_thread(
        stack.cli, "approve", ref, "prod", "--defer-until", "+1d", user="alice"
    )
    assert approved.returncode == 0 and "deferred until" in approved.stdout, approved.stderr
    await wait_status(stack, ref, "evaluating_gates")
    outsider = await asyncio.to_thread(
        stack.cli, "gates", ref, "prod", "--ignore", "never-healthy", user="bob"
    )
    # The API refuses a person the pipeline names for nothing on prod, before the workflow.
    assert outsider.returncode == 2 and "bob is not an approver of stage 'prod'" in outsider.stderr
    ignored = await asyncio.to_thread(
        stack.cli, "gates", ref, "prod", "--ignore", "never-healthy", user="alice"
    )
    assert ignored.returncode == 0, ignored.stderr
    await wait_status(stack, ref, "deferred")

    early = await asyncio.to_thread(stack.cli, "deploy", ref, "prod", "--now", user="bob")
    assert early.returncode == 2 and "bob is not an approver" in early.stderr
    now = await asyncio.to_thread(stack.cli, "deploy", ref, "prod", "--now", user="alice")
    assert now.returncode == 0, now.stderr
    await wait_status(stack, ref, "waiting_for_intervention")

    waiting = json.loads((await asyncio.to_thread(stack.cli, "--json", "approvals")).stdout)
    assert any(row["release"] == ref and row["waiting_for"] == "intervention" for row in waiting)
    resumed = await asyncio.to_thread(
        stack.cli, "resume", ref, "prod", "--comment", "fine", user="alice"
    )
    assert resumed.returncode == 0, resumed.stderr
    await wait_status(stack, ref, "succeeded")
    logs = (await asyncio.to_thread(stack.cli, "logs", ref, "--task", "deploy")).stdout
    assert "deployed after the intervention" in logs
    history = json.loads((await asyncio.to_thread(stack.cli, "--json", "history", ref)).stdout)
    actions = [(e["actor"], e["action"], e["outcome"]) for e in history]
    for expected in [
        ("alice", "ignore_gate", "accepted"),
        ("alice", "deploy_now", "accepted"),
        ("alice", "resume", "accepted"),
        ("bob", "deploy_now", "refused"),
    ]:
        assert expected in actions
