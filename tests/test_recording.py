"""How a workflow's record writes go (workflows/recording.py), on the real dev server.

A write is tried as a local activity first; when that try fails or times out,
the write goes through the ordinary `record` activity, and the next write is
tried locally again. Each history replays: a timed-out local try is replayed as
a TimeoutError, not the ActivityError the first run saw (temporalio 1.35), and
the writer must take both the same way.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from workflows.activity_refs import RECORD
from workflows.record_api import RecordWrite
from workflows.recording import RecordWriter


@workflow.defn(sandboxed=False)
class WritesInTurn:
    """Writes releases 1..count of pipeline `p`, one after the other."""

    def __init__(self) -> None:
        self._waiting: list[RecordWrite] = []
        self._writer = RecordWriter(lambda: bool(self._waiting), lambda: self._waiting.pop(0))

    @workflow.run
    async def run(self, count: int) -> None:
        writing = asyncio.create_task(self._writer.run())
        for number in range(1, count + 1):
            self._waiting.append(RecordWrite(pipeline="p", number=number))
            await workflow.wait_condition(self._writer.drained)
        writing.cancel()


@dataclass
class FlakyRecord:
    """The `record` activity, failing its first call in the way it is told to."""

    first_call: str  # "hangs" (past the local try's timeout) or "fails"
    calls: list[tuple[str, int]] = field(default_factory=list)

    @activity.defn(name=RECORD.name)
    async def record(self, write: RecordWrite) -> None:
        how = "local" if activity.info().is_local else "activity"
        self.calls.append((how, write.number))
        if len(self.calls) > 1:
            return
        if self.first_call == "hangs":
            # Until the local try's timeout (RECORD_LOCAL_TIMEOUT) cancels it.
            await asyncio.Event().wait()
        raise ApplicationError("the database is away", type="RecordSlow")


async def run_and_replay(client: Client, record: FlakyRecord) -> list[EventType.ValueType]:
    task_queue = f"recording-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[WritesInTurn],
        activities=[record.record],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(
            WritesInTurn.run, 2, id=f"recording-{uuid.uuid4()}", task_queue=task_queue
        )
        await handle.result()
        history = await handle.fetch_history()
    replayer = Replayer(
        workflows=[WritesInTurn],
        workflow_runner=UnsandboxedWorkflowRunner(),
        data_converter=pydantic_data_converter,
    )
    replay = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert replay.replay_failure is None, replay.replay_failure
    return [event.event_type for event in history.events]


async def test_a_failed_local_write_goes_through_the_activity_then_local_again(
    client: Client,
) -> None:
    record = FlakyRecord(first_call="fails")
    events = await run_and_replay(client, record)
    assert record.calls == [("local", 1), ("activity", 1), ("local", 2)]
    assert events.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1


async def test_a_timed_out_local_write_goes_through_the_activity_and_replays(
    client: Client,
) -> None:
    record = FlakyRecord(first_call="hangs")
    events = await run_and_replay(client, record)
    assert record.calls == [("local", 1), ("activity", 1), ("local", 2)]
    assert events.count(EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED) == 1
