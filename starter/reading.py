"""Where the CLI's answers come from: the record, and a live look at running stages.

Lists, details, the audit trail, what waits on people and what is deployed
where are read from the record (activities/record), which the workflows write:
they answer with no worker up and after Temporal's retention has deleted the
workflows. What only a running workflow knows (the task running now, its
tries) is asked of it with a short timeout; when nobody answers in time the
recorded state is shown and the command says the live view is unavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.record import Database, open_database, safe_url
from starter.exit_codes import Unavailable
from starter.releases import ReleaseRef, ended_from_outside, termination_event
from worker.settings import Settings, connect
from workflows.audit import AuditEvent
from workflows.release import ReleaseStatus, StageAttempt, end_from_outside, release_status_of
from workflows.stage_workflow import StageWorkflow

# A running stage that has not answered in this long has no worker to answer.
LIVE_TIMEOUT = timedelta(milliseconds=300)
CONNECT_TIMEOUT = 0.5
# The whole live view: connect, describe the release, ask its running stages (seconds).
LIVE_BUDGET = 0.6


class RecordUnavailable(Unavailable):
    """The record cannot be read (the database is away, or was never set up)."""


@asynccontextmanager
async def reading(settings: Settings) -> AsyncIterator[Database | None]:
    """The record, to read; None when it does not exist yet (nothing was ever recorded).

    Reading never migrates (the processes that write do); a query failing on the
    database itself raises RecordUnavailable naming the database."""
    url = settings.record_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        yield None
        return
    db = open_database(url)
    try:
        yield db
    except (SQLAlchemyError, OSError) as err:  # asyncpg raises a refused connection as is
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        missing = "no such table" in reason or "does not exist" in reason
        hint = (
            "`stageflow db upgrade` sets it up"
            if missing
            else "is the database up? STAGEFLOW_DATABASE_URL chooses it"
        )
        raise RecordUnavailable(
            f"cannot read the record at {safe_url(url)} ({reason}); {hint}"
        ) from err
    finally:
        await db.close()


async def with_live_view(
    settings: Settings, status: ReleaseStatus, client: Client | None = None
) -> str | None:
    """Bring a recorded release up to what Temporal says now: a release workflow ended
    from outside Stageflow (terminated, timed out) shows so, and each running stage's
    latest attempt is replaced by what its StageWorkflow says. None when that worked
    (or nothing runs); else why the live view is unavailable (the recorded state stays).
    All of it within LIVE_BUDGET, through `client` when given (a server keeps one)."""
    if status.state != "active":
        return None
    try:
        return await asyncio.wait_for(_live_view(settings, status, client), LIVE_BUDGET)
    except TimeoutError:
        return f"Temporal did not answer within {LIVE_BUDGET:g} s"


async def _live_view(
    settings: Settings, status: ReleaseStatus, client: Client | None
) -> str | None:
    ref = ReleaseRef(status.pipeline, status.number)
    if client is None:
        try:
            client = await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
        except (TimeoutError, RuntimeError, RPCError, OSError):
            return f"the Temporal server at {settings.address} did not answer"
    try:
        how = await ended_from_outside(client, ref, rpc_timeout=LIVE_TIMEOUT)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None  # deleted from Temporal (or past its retention): the record is all
        return f"the Temporal server did not describe the release ({err.message[:80]})"
    if how is not None:
        end_from_outside(status, how)
        return None
    running = [v for v in status.stages if v.latest is not None and not v.latest.status.is_final]

    async def progress(attempt: StageAttempt) -> StageAttempt | None:
        handle = client.get_workflow_handle_for(StageWorkflow.run, attempt.workflow_id)
        try:
            return await handle.query(StageWorkflow.progress, rpc_timeout=LIVE_TIMEOUT)
        except RPCError:
            return None

    answers = await asyncio.gather(*(progress(v.attempts[-1]) for v in running))
    for view, live in zip(running, answers, strict=True):
        if live is not None and not live.status.is_final:
            view.attempts[-1] = live
            view.status = live.status
    status.status = release_status_of(status.stages, status.state)
    if any(live is None for live in answers):
        seconds = LIVE_TIMEOUT.total_seconds()
        return f"no control worker answered for its running stages within {seconds:g} s"
    return None


async def termination(
    settings: Settings, ref: ReleaseRef, client: Client | None = None
) -> AuditEvent | None:
    """If the release's workflow was terminated in Temporal: that, as an audit event
    (the record cannot know it: no workflow code ran to write it). None otherwise, and
    when the server does not answer quickly. Through `client` when given."""
    try:
        if client is None:
            client = await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
        if await ended_from_outside(client, ref, rpc_timeout=LIVE_TIMEOUT) != "terminated":
            return None
        return await termination_event(client, ref, rpc_timeout=LIVE_TIMEOUT)
    except (TimeoutError, RuntimeError, RPCError, OSError):
        return None
