"""How a workflow writes its state to the record: in the background, one write at a time.

A workflow says what it has not written yet (`pending`) and how to take it
(`take`); the writer sends that through the `record` activity as soon as the
previous write is done, so changes that come while a write is under way go
together in the next one. The activity is retried while the database is away
(RECORD_RETRIES); nothing a deployment does waits for it.

Versions order the writes of one row, also between the ReleaseWorkflow and its
StageWorkflows (which both write a deployment): microseconds of `workflow.now()`
when the snapshot was taken, and never less than the writer's last plus one.
"""

from __future__ import annotations

from collections.abc import Callable

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import RECORD
    from workflows.record_api import RecordWrite

# Every workflow that writes the record calls workflow.patched(RECORD_PATCH) first:
# releases started before it replay without writing (the backfill imports them).
RECORD_PATCH = "record"


class RecordWriter:
    """One workflow's writes to the record."""

    def __init__(self, pending: Callable[[], bool], take: Callable[[], RecordWrite]) -> None:
        self._pending = pending
        self._take = take
        self._last_version = 0
        self._writing = False

    def version(self) -> int:
        """The version of a snapshot taken now."""
        now = int(workflow.now().timestamp() * 1_000_000)
        self._last_version = max(self._last_version + 1, now)
        return self._last_version

    def drained(self) -> bool:
        """Everything taken has been written, and nothing waits to be."""
        return not self._writing and not self._pending()

    async def run(self) -> None:
        """Forever: wait for something to write, write it (the workflow's end stops it)."""
        while True:
            await workflow.wait_condition(self._pending)
            write = self._take()
            self._writing = True
            try:
                await RECORD.execute(
                    write,
                    task_queue=workflow.info().task_queue,
                    summary=f"record {write.pipeline}/{write.number}",
                )
            except ActivityError as err:
                # Only a write the record refuses for good ends here (RECORD_RETRIES).
                workflow.logger.error("record write dropped: %s", err.cause or err)
            finally:
                self._writing = False
