"""A record that lost a running release (restored from a backup older than it) takes it
in again from the release's next write, and the release can still close."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy.engine import make_url

from activities.record import open_database, queries
from starter.releases import ReleaseRef, decide
from tests.conftest import Stack, wait_for
from worker.settings import Settings
from workflows.release import ReleaseStatus

pytestmark = pytest.mark.e2e

PIPELINE = """
    name: restore-{suffix}
    stages:
      - name: dev
        pool: POOL
        tasks: [{{name: build, script: "echo built"}}]
      - name: prod
        trigger: {{after_stages: [dev]}}
        pool: POOL
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks: [{{name: ship, script: "echo shipped"}}]
"""


async def recorded(stack: Stack, ref: ReleaseRef) -> ReleaseStatus | None:
    db = open_database(Settings.from_env(stack.env()).record_url)
    try:
        return await queries.release(db, ref.pipeline, ref.number)
    finally:
        await db.close()


def forget(stack: Stack, ref: ReleaseRef) -> None:
    """What restoring a backup taken before the release was created does to it."""
    path = make_url(Settings.from_env(stack.env()).record_url).database
    assert path
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("DELETE FROM releases WHERE number = ?", (ref.number,))


async def test_a_release_the_record_lost_is_recorded_again_by_its_next_write(
    stack: Stack,
) -> None:
    pipeline = stack.write_pipeline(PIPELINE.format(suffix=stack.suffix))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)

    async def waiting() -> ReleaseStatus | None:
        found = await recorded(stack, ref)
        prod = found.stage("prod").status.value if found else None
        return found if prod == "waiting_for_approval" else None

    await wait_for(waiting, what="prod waiting for alice in the record")
    forget(stack, ref)
    assert await recorded(stack, ref) is None

    # The API answers from the record, which no longer knows the release: the decision
    # goes to the workflow directly, as the API would send it.
    approved = await decide(stack.client, ref, "prod", "alice", "approve")
    assert approved.outcome == "accepted", approved

    async def back() -> ReleaseStatus | None:
        found = await recorded(stack, ref)
        return found if found and found.stage("prod").status.value == "succeeded" else None

    status = await wait_for(back, what="the release back in the record, prod succeeded")
    assert status.name == "Release-1" and status.created_by == "tester"
    prod = status.stage("prod").attempts[-1]
    assert [(d.by, d.action) for d in prod.approvals[0].decisions] == [("alice", "approve")]
    assert [t.exit_code for t in prod.tasks] == [0]

    # Its writes go on: it can still end, and the record says so.
    abandoned = await asyncio.to_thread(stack.cli, "abandon", str(ref), "--reason", "done")
    assert abandoned.returncode == 0, abandoned.stderr

    async def closed() -> ReleaseStatus | None:
        found = await recorded(stack, ref)
        return found if found and found.state == "abandoned" else None

    await wait_for(closed, what="the abandon in the record")
