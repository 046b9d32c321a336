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

from activities.record.database import Database, open_database, safe_url, upgrade
from activities.record.writes import record_attempt, record_events, record_release, record_state
from workflows.activity_refs import RECORD
from workflows.record_api import RecordWrite

log = logging.getLogger(__name__)


class Recorder:
    """Writes what the workflows send to the database at `url` (an async SQLAlchemy URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
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
        deployments, the events of its trail; each part idempotent and newer-only."""
        await self.apply(write)

    async def apply(self, write: RecordWrite) -> None:
        db = await self.database()
        if write.spec is not None:
            await record_release(db, write.spec, write.version, state=write.state or "active")
        elif write.state is not None:
            await record_state(db, write.pipeline, write.number, write.state, write.version)
        for part in write.attempts:
            await record_attempt(
                db, write.pipeline, write.number, part.stage, part.attempt, part.version
            )
        if write.events:
            await record_events(db, write.pipeline, write.number, write.events)
