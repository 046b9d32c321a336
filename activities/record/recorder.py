"""The `record` activity: the one way the workflows write the record.

It runs on the control worker. The schema is migrated before the first write
(the worker also migrates at start; a database that is away then is migrated
when it is back). A write that fails (the database is away, the release's own
row is not written yet) raises, and Temporal retries it (RECORD_RETRIES): the
workflows never wait for it, and every row it carries is versioned, so a retry
after a write that did land changes nothing.
"""

from __future__ import annotations

import asyncio
import logging

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.record.database import Database, open_database, safe_url, upgrade
from activities.record.writes import ReleaseNotRecorded, record_release, record_write
from workflows.activity_refs import RECORD, RECORD_LOCAL_BUDGET
from workflows.names import release_workflow_id
from workflows.record_api import RecordWrite
from workflows.release_workflow import ReleaseWorkflow

log = logging.getLogger(__name__)


class Recorder:
    """Writes what the workflows send to the database at `url` (an async SQLAlchemy URL).

    With a Temporal `client`, a write for a release the record does not hold (it was
    restored from a backup older than the release, or its first write is still on
    its way) first records the release from its workflow's `spec` query, instead of
    waiting for a write that may never come again."""

    def __init__(self, url: str, client: Client | None = None) -> None:
        self.url = url
        self.client = client
        self._db: Database | None = None
        self._lock = asyncio.Lock()

    async def database(self) -> Database:
        """The database, migrated to this code's schema (once per process)."""
        async with self._lock:
            if self._db is None:
                await upgrade(self.url)
                self._db = open_database(self.url)
                log.info("record: writing to %s", safe_url(self.url))
            return self._db

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @activity.defn(name=RECORD.name)
    async def record(self, write: RecordWrite) -> None:
        """Apply one write: the release (its snapshot the first time), its state, its
        deployments, the events of its trail; each part idempotent and newer-only.

        Run as a local activity (a workflow's first try), it gives up after
        RECORD_LOCAL_BUDGET with a failure of its own: the workflow task it holds
        goes on, and the workflow sends the write through the ordinary activity."""
        if not activity.info().is_local:
            await self.apply(write)
            return
        budget = RECORD_LOCAL_BUDGET.total_seconds()
        writing = asyncio.ensure_future(self.apply(write))
        await asyncio.wait({writing}, timeout=budget)
        if writing.done():
            return writing.result()
        # Not awaited: a driver call in progress (SQLite waiting for its lock) ends in
        # its own time, and this try must answer before its timeout.
        writing.cancel()
        writing.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise ApplicationError(f"the record took over {budget:g}s to write", type="RecordSlow")

    async def apply(self, write: RecordWrite) -> None:
        try:
            await record_write(await self.database(), write)
        except ReleaseNotRecorded:
            if self.client is None or write.spec is not None:
                raise
            handle = self.client.get_workflow_handle_for(
                ReleaseWorkflow.run, release_workflow_id(write.pipeline, write.number)
            )
            spec = await handle.query(ReleaseWorkflow.spec)
            # Below any version a workflow writes: the release's own writes win.
            await record_release(await self.database(), spec, version=0)
            log.info("record: %s/%s recorded from its workflow", write.pipeline, write.number)
            await record_write(await self.database(), write)
