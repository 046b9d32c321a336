"""Reading workflow histories: event counts, activity spans, signals — server times only."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHistory

from bench.world import event_time

CLOSED = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "completed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "failed",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "timed_out",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "canceled",
}


@dataclass
class ActivitySpan:
    """One activity of a history: when it was scheduled, started (last attempt) and closed."""

    name: str
    task_queue: str
    scheduled: float
    started: float | None = None
    closed: float | None = None
    outcome: str = "open"
    identity: str = ""
    attempt: int = 1

    @property
    def queue_wait(self) -> float | None:
        return None if self.started is None else self.started - self.scheduled

    @property
    def run(self) -> float | None:
        if self.started is None or self.closed is None:
            return None
        return self.closed - self.started


def activity_spans(history: WorkflowHistory) -> list[ActivitySpan]:
    """Every activity in the history, in scheduling order.

    The server writes ActivityTaskStarted when the activity closes, but with the
    time the (last) attempt started, so `started` is the real start.
    """
    spans: dict[int, ActivitySpan] = {}
    for event in history.events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            spans[event.event_id] = ActivitySpan(
                name=attrs.activity_type.name,
                task_queue=attrs.task_queue.name,
                scheduled=event_time(event),
            )
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            span = spans[started.scheduled_event_id]
            span.started = event_time(event)
            span.identity = started.identity
            span.attempt = started.attempt
        elif kind in CLOSED:
            scheduled_id = _scheduled_id(event)
            span = spans[scheduled_id]
            span.closed = event_time(event)
            span.outcome = CLOSED[kind]
    return list(spans.values())


def _scheduled_id(event: HistoryEvent) -> int:
    for attrs in (
        event.activity_task_completed_event_attributes,
        event.activity_task_failed_event_attributes,
        event.activity_task_timed_out_event_attributes,
        event.activity_task_canceled_event_attributes,
    ):
        if attrs.scheduled_event_id:
            return attrs.scheduled_event_id
    raise ValueError(f"event {event.event_id} names no scheduled activity")


def signals(history: WorkflowHistory, name: str | None = None) -> list[tuple[str, float]]:
    """(signal name, server time) of every signal the workflow received."""
    found = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            signal = event.workflow_execution_signaled_event_attributes.signal_name
            if name is None or signal == name:
                found.append((signal, event_time(event)))
    return found


def first_time(history: WorkflowHistory, kind: EventType.ValueType) -> float | None:
    for event in history.events:
        if event.event_type == kind:
            return event_time(event)
    return None


def last_time(history: WorkflowHistory, kind: EventType.ValueType) -> float | None:
    found = None
    for event in history.events:
        if event.event_type == kind:
            found = event_time(event)
    return found


def event_kinds(history: WorkflowHistory) -> Counter[str]:
    """How many events of each type, by short name (`ACTIVITY_TASK_SCHEDULED`)."""
    return Counter(
        EventType.Name(event.event_type).removeprefix("EVENT_TYPE_") for event in history.events
    )


async def histories(client: Client, workflow_ids: list[str]) -> list[WorkflowHistory]:
    return [await client.get_workflow_handle(i).fetch_history() for i in workflow_ids]
