"""Mail to people: approvals and interventions waiting on them, and deployment outcomes.

`Notifier.send_notification` renders one mail per request from the Jinja2
templates in `activities/templates/` (`<kind>.txt.j2` and `<kind>.html.j2`) and
delivers one copy to each recipient: through SMTP when a host is configured,
otherwise as `.eml` files in the outbox directory (for `stageflow up` on one
machine, and for looking at what would have been sent).

Every mail that asks for a decision carries the exact CLI command that makes it,
on a line of its own, built by workflows/mail.py (`approve_command`, `reject_command`).
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.errors import MessageError
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from hashlib import sha256
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosmtplib
from jinja2 import FileSystemLoader, StrictUndefined, TemplateError, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.activity_refs import SEND_NOTIFICATION
from workflows.control_api import NotificationRequest, NotificationResult, Recipient
from workflows.names import release_workflow_id

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
SMTP_TIMEOUT_SECONDS = 30.0

# Our own templates, but sandboxed like every Stageflow template (DESIGN.md): the
# release description and artifact versions are data and go in as variables only.
_templates = SandboxedEnvironment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class SmtpSettings:
    """Where mail goes. Without a host, mails are written to the outbox directory."""

    host: str | None = None
    port: int = 587
    security: str = "starttls"  # starttls | ssl | none
    user: str | None = None
    password: str | None = None
    sender: str = "stageflow@localhost"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SmtpSettings:
        """Read `STAGEFLOW_SMTP_*`; the process settings (`worker/settings.py`) call this."""
        return cls(
            host=env.get("STAGEFLOW_SMTP_HOST") or None,
            port=int(env.get("STAGEFLOW_SMTP_PORT", "587")),
            security=env.get("STAGEFLOW_SMTP_SECURITY", "starttls").lower(),
            user=env.get("STAGEFLOW_SMTP_USER") or None,
            password=env.get("STAGEFLOW_SMTP_PASSWORD") or None,
            sender=env.get("STAGEFLOW_SMTP_FROM", "stageflow@localhost"),
        )


_PHASES = {"pre": "pre-deployment", "post": "post-deployment"}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._@+-]")


def release_reference(request: NotificationRequest) -> str:
    """`webapp/7`: how the CLI names the release."""
    return f"{request.release.pipeline}/{request.release.number}"


def subject(request: NotificationRequest) -> str:
    """The mail's subject line, e.g. `[Stageflow] Approve webapp Release-7 → prod (pre-deployment)`."""
    release = request.release
    target = f"{release.pipeline} {release.name} → {request.stage}"
    if request.kind == "approval_pending":
        phase = f" ({_PHASES[request.phase]})" if request.phase else ""
        return f"[Stageflow] Approve {target}{phase}"
    if request.kind == "intervention_pending":
        return f"[Stageflow] Intervention needed: {target}"
    return f"[Stageflow] {target}: {request.status or 'finished'}"


def render(
    request: NotificationRequest, web_ui: str | None = None, public_url: str | None = None
) -> tuple[str, str, str]:
    """Subject, text body and HTML body of the mail for `request`; `public_url`, where
    people reach Stageflow's own pages (STAGEFLOW_PUBLIC_URL): the mail links the
    release's page there."""
    context = _template_context(request, web_ui, public_url)
    text = _templates.get_template(f"{request.kind}.txt.j2").render(context)
    html = _templates.get_template(f"{request.kind}.html.j2").render(context)
    return subject(request), text, html


class Notifier:
    """Sends Stageflow's mails; holds the SMTP settings and the outbox directory."""

    def __init__(
        self,
        smtp: SmtpSettings,
        outbox_dir: Path,
        web_ui: str | None = None,
        public_url: str | None = None,
    ) -> None:
        self._smtp = smtp
        self._outbox_dir = outbox_dir
        self._web_ui = web_ui.rstrip("/") if web_ui else None
        self._public_url = public_url.rstrip("/") if public_url else None

    @activity.defn(name=SEND_NOTIFICATION.name)
    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        """Mail one request to each of its recipients, through SMTP or into the outbox.

        Not idempotent over SMTP: mail cannot be taken back, so a retry after a
        partial send may deliver a duplicate. What guards it: each copy's
        Message-ID is derived from the workflow run, the activity id and the
        recipient, so a retry sends the same Message-ID and mail clients can
        drop the duplicate; and the recipients already served are recorded as
        heartbeat details, so a retry skips them when those details reached the
        server (best effort). SMTP errors propagate so the workflow's retry
        policy retries; a mail that cannot be built fails at once, not retried
        (`MailNotBuilt`); a mail never fails a deployment (the workflow decides).

        Into the outbox, a retry writes the files again under a new timestamp.
        """
        messages = self._build(request)
        if not self._smtp.host:
            return self._write_outbox(request, messages)

        delivered = _already_delivered()
        for recipient, message in messages:
            if recipient.email in delivered:
                continue
            await aiosmtplib.send(
                message,
                sender=self._smtp.sender,
                recipients=[recipient.email],
                hostname=self._smtp.host,
                port=self._smtp.port,
                username=self._smtp.user,
                password=self._smtp.password,
                use_tls=self._smtp.security == "ssl",
                start_tls=self._smtp.security == "starttls",
                timeout=SMTP_TIMEOUT_SECONDS,
            )
            delivered.append(recipient.email)
            if activity.in_activity():
                activity.heartbeat(list(delivered))
        return NotificationResult(
            delivered_to=[r.email for r in request.recipients if r.email in delivered],
            via="smtp",
            location=f"{self._smtp.host}:{self._smtp.port}",
        )

    # --- helpers ----------------------------------------------------------------------

    def _build(self, request: NotificationRequest) -> list[tuple[Recipient, EmailMessage]]:
        """One message per recipient; a mail that cannot be built (a template error, a
        header with a line break) fails this activity once, with the reason: trying
        again would build it the same way."""
        try:
            subject_line, text, html = render(request, self._web_ui, self._public_url)
            return [
                (recipient, self._message(request, recipient, subject_line, text, html))
                for recipient in request.recipients
            ]
        except (TemplateError, MessageError, ValueError, LookupError, TypeError) as exc:
            raise ApplicationError(
                f"the {request.kind} mail for {release_reference(request)} {request.stage}"
                f" cannot be built: {type(exc).__name__}: {exc}",
                type="MailNotBuilt",
                non_retryable=True,
            ) from exc

    def _message(
        self,
        request: NotificationRequest,
        recipient: Recipient,
        subject_line: str,
        text: str,
        html: str,
    ) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = subject_line
        message["From"] = self._smtp.sender
        message["To"] = recipient.email
        message["Date"] = format_datetime(datetime.now(UTC))
        message["Message-ID"] = _message_id(self._smtp.sender, recipient)
        message["X-Stageflow-Release"] = release_reference(request)
        message["X-Stageflow-Kind"] = request.kind
        # RFC 3834: tells vacation responders and the like not to answer.
        message["Auto-Submitted"] = "auto-generated"
        # Quoted-printable keeps every line short and 7-bit for any SMTP server.
        message.set_content(text, cte="quoted-printable")
        message.add_alternative(html, subtype="html", cte="quoted-printable")
        return message

    def _write_outbox(
        self, request: NotificationRequest, messages: Sequence[tuple[Recipient, EmailMessage]]
    ) -> NotificationResult:
        self._outbox_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        for recipient, message in messages:
            user = _UNSAFE_FILENAME.sub("_", recipient.user)
            path = self._outbox_dir / f"{stamp}-{user}-{request.kind}.eml"
            # Written aside and moved into place: a reader never sees half a mail.
            fd, temp = tempfile.mkstemp(dir=self._outbox_dir, suffix=".tmp")
            with os.fdopen(fd, "wb") as file:
                file.write(message.as_bytes())
            os.replace(temp, path)
        return NotificationResult(
            delivered_to=[recipient.email for recipient, _ in messages],
            via="outbox",
            location=str(self._outbox_dir),
        )


def _template_context(
    request: NotificationRequest, web_ui: str | None, public_url: str | None = None
) -> dict[str, Any]:
    release = request.release
    return {
        "release": release,
        "reference": release_reference(request),
        "stage": request.stage,
        "attempt": request.attempt,
        "phase": _PHASES[request.phase] if request.phase else None,
        "status": request.status or "finished",
        "deadline": _utc(request.deadline) if request.deadline else None,
        "approvers": request.approvers,
        "command": request.command,
        "reject_command": request.reject_command,
        "instructions": request.instructions,
        "message": request.message,
        "link": _web_ui_link(web_ui, release.pipeline, release.number) if web_ui else None,
        "page": release_page(public_url, release.pipeline, release.number) if public_url else None,
    }


def release_page(public_url: str, pipeline: str, number: int) -> str:
    """The release's page among Stageflow's own (starter/web), under the public URL."""
    return f"{public_url.rstrip('/')}/releases/{quote(pipeline, safe='')}/{number}"


def _web_ui_link(web_ui: str, pipeline: str, number: int) -> str:
    """The release workflow in the Temporal Web UI (its id quoted: it contains slashes)."""
    # The release runs in the namespace of the workflow that asked for this mail.
    namespace = activity.info().workflow_namespace if activity.in_activity() else None
    workflow_id = quote(release_workflow_id(pipeline, number), safe="")
    return f"{web_ui.rstrip('/')}/namespaces/{quote(namespace or 'default', safe='')}/workflows/{workflow_id}"


def _utc(moment: datetime) -> str:
    """ISO 8601 in UTC, to the second: `2026-12-01T03:00:00Z` (naive times are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _message_id(sender: str, recipient: Recipient) -> str:
    """The same for every try of one activity and recipient; random outside an activity."""
    if activity.in_activity():
        info = activity.info()
        # The run id too: activity ids restart at 1 in each run (continue-as-new, reset).
        key = "\n".join(
            [info.workflow_id or "", info.workflow_run_id or "", info.activity_id, recipient.email]
        )
        local = sha256(key.encode()).hexdigest()[:32]
    else:
        local = uuid.uuid4().hex
    domain = parseaddr(sender)[1].rpartition("@")[2] or "stageflow.localhost"
    return f"<{local}@{domain}>"


def _already_delivered() -> list[str]:
    """Recipients a previous try of this activity reported as sent (see the docstring above)."""
    if not activity.in_activity():
        return []
    details = activity.info().heartbeat_details
    if details and isinstance(details[0], list):
        return [str(email) for email in details[0]]
    return []
