"""The audit trail: who did what, when, with what outcome. Pure: no Temporal, no I/O.

One type for the release and for each deployment. Every person's action is
recorded, accepted or refused with the reason, and the event is what the
action's update returns, so the caller learns the verdict at once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

from workflows.pipeline import Model

# Who acts when nobody did: timeouts, retention, automatic skips.
SYSTEM = "stageflow"


class AuditEvent(Model):
    """One line of an audit trail: who did what, when, with what outcome."""

    time: datetime
    actor: str
    action: str
    stage: str | None = None
    outcome: str = "accepted"
    detail: str = ""
    request_id: str | None = None


class AuditTrail:
    """Appends to a list of events kept in a workflow's state (so it survives
    continue-as-new and shows in queries); `clock` is the workflow's time."""

    def __init__(
        self, events: list[AuditEvent], clock: Callable[[], datetime], stage: str | None = None
    ) -> None:
        self.events = events
        self.clock = clock
        self.stage = stage

    def accept(
        self,
        actor: str,
        action: str,
        detail: str = "",
        *,
        request_id: str | None = None,
        stage: str | None = None,
    ) -> AuditEvent:
        return self.record(actor, action, "accepted", detail, request_id=request_id, stage=stage)

    def refuse(
        self,
        actor: str,
        action: str,
        reason: str,
        *,
        request_id: str | None = None,
        stage: str | None = None,
    ) -> AuditEvent:
        return self.record(actor, action, "refused", reason, request_id=request_id, stage=stage)

    def record(
        self,
        actor: str,
        action: str,
        outcome: Literal["accepted", "refused"],
        detail: str,
        *,
        request_id: str | None = None,
        stage: str | None = None,
    ) -> AuditEvent:
        event = AuditEvent(
            time=self.clock(),
            actor=actor,
            action=action,
            stage=stage or self.stage,
            outcome=outcome,
            detail=detail,
            request_id=request_id,
        )
        self.events.append(event)
        return event

    def answered(self, request_id: str | None) -> AuditEvent | None:
        """The event an earlier request with this id produced: a retried request is
        answered again, never decided twice."""
        if request_id is None:
            return None
        return next((e for e in self.events if e.request_id == request_id), None)
