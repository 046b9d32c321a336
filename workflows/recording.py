"""How a workflow writes its state to the record: in the background, one write at a time.

A workflow says what it has not written yet (`pending`) and how to take it
(`take`); the writer sends that through the `record` activity as soon as the
previous write is done, so changes that come while a write is under way go
together in the next one. Nothing a deployment does waits for it.

A write is first tried as a local activity (RECORD_LOCAL_PATCH): it takes a few
milliseconds in the workflow's own task, where an ordinary activity costs three
history events and a workflow task of its own. Only when that try fails (the
database is away or slow) does the write go through the ordinary activity,
retried while the database is away (RECORD_RETRIES), and so do the writes after
it until one has gone through.

Versions order the writes of one row, also between the ReleaseWorkflow and its
StageWorkflows (which both write a deployment): microseconds of `workflow.now()`
when the snapshot was taken, and never less than the writer's last plus one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import RECORD, RECORD_LOCAL_TIMEOUT, RECORD_RETRIES
    from workflows.record_api import RecordWrite

# Every workflow that writes the record calls workflow.patched(RECORD_PATCH) first:
# releases started before it replay without writing (the backfill imports them).
RECORD_PATCH = "record"
# Writes are first tried as a local activity (workflows started before write only
# through the ordinary activity).
RECORD_LOCAL_PATCH = "record-local"
# After a failed local try, the ordinary activity is started from a later workflow
# task, not from the one that holds the failed try's marker.
FALLBACK_PAUSE = timedelta(seconds=1)


class RecordWriter:
    """One workflow's writes to the record."""

    def __init__(self, pending: Callable[[], bool], take: Callable[[], RecordWrite]) -> None:
        self._pending = pending
        self._take = take
        self._last_version = 0
        self._writing = False
        # Whether this run writes locally first (RECORD_LOCAL_PATCH), and whether the
        # next write does.
        self._local_first = False
        self._local = False

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
        self._local_first = self._local = workflow.patched(RECORD_LOCAL_PATCH)
        while True:
            await workflow.wait_condition(self._pending)
            write = self._take()
            self._writing = True
            try:
                await self._write(write, f"record {write.pipeline}/{write.number}")
            finally:
                self._writing = False

    async def _write(self, write: RecordWrite, summary: str) -> None:
        if self._local:
            try:
                await RECORD.execute_local(
                    write, summary=summary, start_to_close=RECORD_LOCAL_TIMEOUT
                )
                return
            except FailureError as err:
                # A timed-out local try raises ActivityError, but TimeoutError itself when
                # replayed (temporalio 1.35): both mean the try failed.
                cause = err.cause if isinstance(err, ActivityError) else err
                if _refused(cause):
                    workflow.logger.error("record write dropped: %s", cause)
                    return
                workflow.logger.warning("record: local write failed, retrying: %s", cause)
                self._local = False
            await workflow.sleep(FALLBACK_PAUSE)
        try:
            await RECORD.execute(write, task_queue=workflow.info().task_queue, summary=summary)
        except ActivityError as err:
            # Only a write the record refuses for good ends here (RECORD_RETRIES).
            workflow.logger.error("record write dropped: %s", err.cause or err)
            return
        # The database answers again: the next write is tried locally first.
        self._local = self._local_first


RECORD_RETRIES_REFUSED = tuple(RECORD_RETRIES.non_retryable_error_types or ())


def _refused(cause: BaseException | None) -> bool:
    """The record refused the write for good: trying it again cannot help."""
    return isinstance(cause, ApplicationError) and cause.type in RECORD_RETRIES_REFUSED
