"""Mails from `Notifier.send_notification`, received by a real SMTP server (aiosmtpd)
or written to the outbox directory."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import shlex
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope
from temporalio.testing import ActivityEnvironment

from activities.notify import Notifier, SmtpSettings
from workflows.control_api import NotificationRequest, Recipient, ReleaseSummary
from workflows.mail import approve_command, reject_command
from workflows.release import ResolvedArtifact

ALICE = Recipient(user="alice", email="alice@example.com")
BOB = Recipient(user="bob", email="bob@example.com")
DEADLINE = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
WEB_UI = "http://127.0.0.1:8233"
PUBLIC_URL = "https://stageflow.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Inbox:
    """aiosmtpd handler that keeps every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        return [parse(envelope.content) for envelope in self.envelopes]  # type: ignore[arg-type]


@dataclasses.dataclass
class SmtpServer:
    inbox: Inbox
    settings: SmtpSettings


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A real SMTP server on 127.0.0.1 and a free port, plain (no TLS)."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield SmtpServer(
            inbox,
            SmtpSettings(
                host="127.0.0.1", port=port, security="none", sender="stageflow@example.com"
            ),
        )
    finally:
        controller.stop()


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None and body.get_content_type() == f"text/{subtype}"
    content: str = body.get_content()  # type: ignore[attr-defined]
    return content


def release(description: str = "Fixes the login page") -> ReleaseSummary:
    return ReleaseSummary(
        pipeline="webapp",
        number=7,
        name="Release-7",
        description=description,
        created_by="carol",
        artifacts=[
            ResolvedArtifact(
                alias="app", type="git", version="1.4.2", source="/repo", commit="3f2a9c1d"
            ),
            ResolvedArtifact(alias="config", type="local", version="2026-06-01", source="/drop"),
        ],
    )


def approval_request(
    recipients: list[Recipient], description: str = "Fixes the login page"
) -> NotificationRequest:
    return NotificationRequest(
        kind="approval_pending",
        recipients=recipients,
        release=release(description),
        stage="prod",
        attempt=1,
        phase="pre",
        deadline=DEADLINE,
        approvers=["alice", "bob", "group:ops"],
        command=approve_command("webapp/7", "prod", post=False),
        reject_command=reject_command("webapp/7", "prod", post=False),
    )


# --- the commands ---------------------------------------------------------------------


def test_commands_name_release_stage_and_phase() -> None:
    assert approve_command("webapp/7", "prod", post=False) == "stageflow approve webapp/7 prod"
    assert approve_command("webapp/7", "prod", post=True) == (
        "stageflow approve webapp/7 prod --post"
    )
    assert reject_command("webapp/7", "prod", post=False) == (
        "stageflow reject webapp/7 prod --comment 'why'"
    )


def test_commands_shell_quote_unsafe_stage_names() -> None:
    command = approve_command("webapp/7", "o'brien; rm -rf ~", post=True)
    assert shlex.split(command) == [
        "stageflow",
        "approve",
        "webapp/7",
        "o'brien; rm -rf ~",
        "--post",
    ]
    words = shlex.split(reject_command("webapp/7", "prod", post=False, comment="it's late"))
    assert words[-2:] == ["--comment", "it's late"]


# --- through SMTP ---------------------------------------------------------------------


async def test_approval_mail_reaches_each_recipient_with_the_command_on_its_own_line(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    notifier = Notifier(
        smtp_server.settings, tmp_path / "outbox", web_ui=WEB_UI, public_url=PUBLIC_URL + "/"
    )

    result = await notifier.send_notification(approval_request([ALICE, BOB]))

    assert result.via == "smtp"
    assert result.delivered_to == ["alice@example.com", "bob@example.com"]
    assert result.location == f"127.0.0.1:{smtp_server.settings.port}"
    assert [e.rcpt_tos for e in smtp_server.inbox.envelopes] == [
        ["alice@example.com"],
        ["bob@example.com"],
    ]
    assert [e.mail_from for e in smtp_server.inbox.envelopes] == ["stageflow@example.com"] * 2
    alice, bob = smtp_server.inbox.messages()
    assert alice["To"] == "alice@example.com" and bob["To"] == "bob@example.com"
    assert alice["From"] == "stageflow@example.com"
    assert alice["Subject"] == "[Stageflow] Approve webapp Release-7 → prod (pre-deployment)"
    assert alice["X-Stageflow-Release"] == "webapp/7"
    assert alice.get_content_type() == "multipart/alternative"
    assert alice["Message-ID"] != bob["Message-ID"]

    text = part(alice, "plain")
    lines = text.splitlines()
    assert "stageflow approve webapp/7 prod" in lines
    assert "stageflow reject webapp/7 prod --comment 'why'" in lines
    command = next(line for line in lines if line.startswith("stageflow approve"))
    assert shlex.split(command) == ["stageflow", "approve", "webapp/7", "prod"]
    for fact in (
        "Release-7 (webapp/7)",
        "carol",
        "Fixes the login page",
        "pre-deployment",
        "app 1.4.2 (commit 3f2a9c1d)",
        "config 2026-06-01",
        "2026-12-01T03:00:00Z",
        "alice, bob, group:ops",
        f"{WEB_UI}/namespaces/default/workflows/release%2Fwebapp%2F7",
    ):
        assert fact in text, fact
    # The release's page, where the approver can decide it (STAGEFLOW_PUBLIC_URL).
    assert f"The release: {PUBLIC_URL}/releases/webapp/7" in lines
    html = part(alice, "html")
    assert f'<a href="{PUBLIC_URL}/releases/webapp/7">Open the release in Stageflow</a>' in html
    assert "stageflow approve webapp/7 prod" in html
    assert "2026-12-01T03:00:00Z" in html
    assert f'href="{WEB_UI}/namespaces/default/workflows/release%2Fwebapp%2F7"' in html


async def test_html_part_escapes_the_release_description(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    notifier = Notifier(smtp_server.settings, tmp_path / "outbox")
    description = "<script>alert('x')</script> & more"

    await notifier.send_notification(approval_request([ALICE], description=description))

    (message,) = smtp_server.inbox.messages()
    # Without a public URL there is no page to link.
    assert "Open the release in Stageflow" not in part(message, "html")
    html = part(message, "html")
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert description in part(message, "plain")  # text is text: shown as written


async def test_outcome_mail_subject_carries_the_status(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    notifier = Notifier(smtp_server.settings, tmp_path / "outbox")
    request = NotificationRequest(
        kind="outcome",
        recipients=[ALICE],
        release=release(),
        stage="prod",
        attempt=2,
        status="succeeded",
        message="Deployed in 3m 12s.",
    )

    await notifier.send_notification(request)

    (message,) = smtp_server.inbox.messages()
    assert message["Subject"] == "[Stageflow] webapp Release-7 → prod: succeeded"
    text = part(message, "plain")
    assert "Deployed in 3m 12s." in text
    assert "app 1.4.2 (commit 3f2a9c1d)" in text
    assert "prod (attempt 2)" in text


async def test_intervention_mail_has_instructions_and_both_commands(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    notifier = Notifier(smtp_server.settings, tmp_path / "outbox")
    resume = "stageflow resume webapp/7 prod"
    stop = "stageflow reject webapp/7 prod --comment 'why'"
    request = NotificationRequest(
        kind="intervention_pending",
        recipients=[BOB],
        release=release(),
        stage="prod",
        attempt=1,
        deadline=DEADLINE,
        instructions="Flip the load balancer to blue,\nthen check the dashboard.",
        command=resume,
        reject_command=stop,
    )

    await notifier.send_notification(request)

    (message,) = smtp_server.inbox.messages()
    assert message["Subject"] == "[Stageflow] Intervention needed: webapp Release-7 → prod"
    text = part(message, "plain")
    assert "Flip the load balancer to blue," in text
    assert "then check the dashboard." in text
    assert "2026-12-01T03:00:00Z" in text
    assert resume in text.splitlines()
    assert stop in text.splitlines()
    html = part(message, "html")
    assert "Flip the load balancer to blue," in html
    assert "stageflow resume webapp/7 prod" in html


async def test_unreachable_smtp_server_raises_so_the_activity_is_retried(tmp_path: Path) -> None:
    settings = SmtpSettings(host="127.0.0.1", port=free_port(), security="none")
    notifier = Notifier(settings, tmp_path / "outbox")

    with pytest.raises(aiosmtplib.SMTPException):
        await notifier.send_notification(approval_request([ALICE]))

    assert not (tmp_path / "outbox").exists()


# --- Message-ID and retries -----------------------------------------------------------


async def test_message_id_is_the_same_for_every_try_of_one_activity(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    notifier = Notifier(smtp_server.settings, tmp_path / "outbox")
    request = approval_request([ALICE, BOB])
    env = ActivityEnvironment()

    await env.run(notifier.send_notification, request)
    env.info = dataclasses.replace(env.info, attempt=2)
    await env.run(notifier.send_notification, request)

    ids = [m["Message-ID"] for m in smtp_server.inbox.messages()]
    assert ids[0] == ids[2] and ids[1] == ids[3]
    assert ids[0] != ids[1]
    assert ids[0].endswith("@example.com>")

    other = ActivityEnvironment()
    other.info = dataclasses.replace(other.info, activity_id="another")
    await other.run(notifier.send_notification, approval_request([ALICE]))
    assert smtp_server.inbox.messages()[-1]["Message-ID"] != ids[0]


async def test_message_id_outside_an_activity_is_unique(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    notifier = Notifier(smtp_server.settings, tmp_path / "outbox")

    await notifier.send_notification(approval_request([ALICE]))
    await notifier.send_notification(approval_request([ALICE]))

    first, second = smtp_server.inbox.messages()
    assert first["Message-ID"] and second["Message-ID"]
    assert first["Message-ID"] != second["Message-ID"]


async def test_retry_skips_recipients_an_earlier_try_reported_as_sent(
    smtp_server: SmtpServer, tmp_path: Path
) -> None:
    notifier = Notifier(smtp_server.settings, tmp_path / "outbox")
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[["alice@example.com"]])
    heartbeats: list[Any] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)

    result = await env.run(notifier.send_notification, approval_request([ALICE, BOB]))

    assert [e.rcpt_tos for e in smtp_server.inbox.envelopes] == [["bob@example.com"]]
    assert result.delivered_to == ["alice@example.com", "bob@example.com"]
    assert heartbeats == [(["alice@example.com", "bob@example.com"],)]


# --- into the outbox ------------------------------------------------------------------


async def test_without_smtp_host_mails_land_in_the_outbox_as_eml_files(tmp_path: Path) -> None:
    outbox = tmp_path / "data" / "outbox"
    notifier = Notifier(SmtpSettings(sender="stageflow@example.com"), outbox)

    result = await notifier.send_notification(approval_request([ALICE, BOB]))

    assert result.via == "outbox"
    assert result.location == str(outbox)
    assert result.delivered_to == ["alice@example.com", "bob@example.com"]
    files = sorted(outbox.iterdir())
    assert [f.name.split("-", 1)[1] for f in files] == [
        "alice-approval_pending.eml",
        "bob-approval_pending.eml",
    ]
    alice = parse(files[0].read_bytes())
    assert alice["To"] == "alice@example.com"
    assert alice["Subject"] == "[Stageflow] Approve webapp Release-7 → prod (pre-deployment)"
    assert alice["Message-ID"]
    assert "stageflow approve webapp/7 prod" in part(alice, "plain").splitlines()
