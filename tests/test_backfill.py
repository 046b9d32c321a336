"""The backfill (worker/backfill.py): releases that exist only in Temporal are imported
into a record once, and the record's meta table (revision 0002) that remembers it.

End to end on the real dev server with a control worker and an agent as processes;
the backfill writes into a store of its own (a new SQLite file, or a new PostgreSQL
database), never the one the worker writes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from temporalio.client import Client, WorkflowExecutionStatus

from activities.record import (
    Database,
    current_revision,
    default_database_url,
    history,
    open_database,
    record_release,
    release,
    releases,
    upgrade,
)
from activities.record.meta import get_meta, set_meta
from activities.record.tables import Base
from starter.releases import ReleaseRef, release_history, release_status
from tests.conftest import Stack, wait_for
from tests.postgres import PostgresCluster
from worker.backfill import backfill, backfill_marker
from worker.devserver import stop_process
from workflows.audit import AuditEvent
from workflows.pipeline import Pipeline
from workflows.release import ReleaseSpec, StageStatus
from workflows.release_workflow import ReleaseWorkflow

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

FINISHED = """
    name: bf-done-{suffix}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - {{name: install, script: "echo installed on dev"}}
          - {{name: smoke, script: "echo smoke ok"}}
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks: [{{name: install, script: "echo installed on qa"}}]
"""

WAITING = """
    name: bf-wait-{suffix}
    stages:
      - name: prod
        pool: POOL
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks: [{{name: deploy, script: "echo deployed"}}]
"""


# --- stores: a new SQLite file, a new PostgreSQL database ------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty record of each kind, apart from any a worker writes."""
    if request.param == "sqlite":
        return default_database_url(tmp_path / "backfill")
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return await cluster.new_database()


async def fresh_store(url: str) -> Database:
    await upgrade(url)
    return open_database(url)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Database]:
    database = await fresh_store(store_url)
    try:
        yield database
    finally:
        await database.close()


# --- helpers ---------------------------------------------------------------------------


async def listed(client: Client, task_queue: str) -> dict[str, WorkflowExecutionStatus | None]:
    """Every ReleaseWorkflow of the queue as visibility lists it (its latest status)."""
    query = f"WorkflowType = 'ReleaseWorkflow' AND TaskQueue = '{task_queue}'"
    return {e.id: e.status async for e in client.list_workflows(query)}


async def wait_listed(stack: Stack, expected: dict[str, WorkflowExecutionStatus | None]) -> None:
    async def seen() -> bool:
        return await listed(stack.client, stack.task_queue) == expected

    await wait_for(seen, timeout=30, what=f"visibility to list {expected}")


async def wait_stage(stack: Stack, ref: ReleaseRef, stage: str, status: StageStatus) -> None:
    async def reached() -> bool:
        return (await stack.status(ref)).stage(stage).status == status

    await wait_for(reached, timeout=60, what=f"{stage} of {ref} to be {status.value}")


def trail(events: list[AuditEvent]) -> list[str]:
    """Events comparable whatever order one instant's events come in."""
    return sorted(event.model_dump_json() for event in events)


async def three_releases(stack: Stack) -> dict[str, ReleaseRef]:
    """One release through both its stages, one waiting for alice's approval, one
    terminated in Temporal while it waited."""
    await stack.start_worker()
    await stack.start_agent("a1")
    finished_file = stack.write_pipeline(FINISHED.format(suffix=stack.suffix), "finished.yml")
    waiting_file = stack.write_pipeline(WAITING.format(suffix=stack.suffix), "waiting.yml")
    finished, _ = await stack.create(finished_file)
    waiting, _ = await stack.create(waiting_file)
    terminated, _ = await stack.create(waiting_file)
    await stack.wait_settled(finished)
    await wait_stage(stack, waiting, "prod", StageStatus.WAITING_FOR_APPROVAL)
    await wait_stage(stack, terminated, "prod", StageStatus.WAITING_FOR_APPROVAL)
    await stack.client.get_workflow_handle(terminated.workflow_id).terminate(
        reason="cleanup by hand"
    )
    running = WorkflowExecutionStatus.RUNNING
    await wait_listed(
        stack,
        {
            finished.workflow_id: running,
            waiting.workflow_id: running,
            terminated.workflow_id: WorkflowExecutionStatus.TERMINATED,
        },
    )
    return {"finished": finished, "waiting": waiting, "terminated": terminated}


# --- the backfill, end to end ----------------------------------------------------------


@pytest.mark.e2e
async def test_backfill_imports_each_release_as_temporal_shows_it_then_never_again(
    stack: Stack, store: Database
) -> None:
    refs = await three_releases(stack)

    assert await backfill(stack.client, store, task_queue=stack.task_queue) == 3

    for what, ref in refs.items():
        shown = await release_status(stack.client, ref)
        recorded = await release(store, ref.pipeline, ref.number)
        assert recorded == shown, f"the {what} release"
        assert trail(await history(store, ref.pipeline, ref.number) or []) == trail(
            await release_history(stack.client, ref)
        ), f"the {what} release's history"

    finished = await release(store, refs["finished"].pipeline, refs["finished"].number)
    assert finished is not None
    assert {v.name: v.status for v in finished.stages} == {
        "dev": StageStatus.SUCCEEDED,
        "qa": StageStatus.SUCCEEDED,
    }
    dev = finished.stage("dev").latest
    assert dev is not None and dev.attempt == 1
    assert [(t.task, t.status.value, t.exit_code) for t in dev.tasks] == [
        ("install", "succeeded", 0),
        ("smoke", "succeeded", 0),
    ]
    assert all(t.log for t in dev.tasks)

    waiting = await release(store, refs["waiting"].pipeline, refs["waiting"].number)
    assert waiting is not None and waiting.status == "waiting"
    prod = waiting.stage("prod").latest
    assert prod is not None and prod.status == StageStatus.WAITING_FOR_APPROVAL
    assert [(a.phase, a.status, a.approvers) for a in prod.approvals] == [
        ("pre", "pending", ["alice"])
    ]

    terminated = await release(store, refs["terminated"].pipeline, refs["terminated"].number)
    assert terminated is not None and terminated.state == "terminated"
    assert terminated.stage("prod").status == StageStatus.TERMINATED
    events = await history(store, refs["terminated"].pipeline, refs["terminated"].number)
    assert [(e.action, e.detail) for e in events or [] if e.action == "terminate"] == [
        ("terminate", "cleanup by hand")
    ]

    # The marker is set: a release created after the backfill is left to its workflow.
    assert await get_meta(store, backfill_marker(stack.task_queue)) is not None
    later, _ = await stack.create(stack.root / "waiting.yml")
    known = await listed(stack.client, stack.task_queue)
    await wait_listed(stack, {**known, later.workflow_id: WorkflowExecutionStatus.RUNNING})
    assert await backfill(stack.client, store, task_queue=stack.task_queue) == 0
    assert await release(store, later.pipeline, later.number) is None
    assert len(await releases(store)) == 3


@pytest.mark.e2e
async def test_a_release_that_cannot_be_read_leaves_the_backfill_to_the_next_start(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.start_worker()
    path = stack.write_pipeline(WAITING.format(suffix=stack.suffix))
    ref, _ = await stack.create(path)
    await wait_stage(stack, ref, "prod", StageStatus.WAITING_FOR_APPROVAL)
    await wait_listed(stack, {ref.workflow_id: WorkflowExecutionStatus.RUNNING})
    for process in list(stack.processes):
        stop_process(process)  # no worker: nobody answers the release's queries

    store = await fresh_store(default_database_url(tmp_path / "backfill"))
    try:
        marker = backfill_marker(stack.task_queue)
        quick = timedelta(seconds=1)
        assert (
            await backfill(stack.client, store, task_queue=stack.task_queue, query_timeout=quick)
            == 0
        )
        assert await get_meta(store, marker) is None
        assert await release(store, ref.pipeline, ref.number) is None

        await stack.start_worker()
        assert await backfill(stack.client, store, task_queue=stack.task_queue) == 1
        assert await get_meta(store, marker) is not None
        recorded = await release(store, ref.pipeline, ref.number)
        assert recorded is not None
        assert recorded.stage("prod").status == StageStatus.WAITING_FOR_APPROVAL
    finally:
        await store.close()


@pytest.mark.e2e
async def test_a_release_already_recorded_is_kept_as_recorded(stack: Stack, tmp_path: Path) -> None:
    """What a workflow recorded itself is never replaced by the backfill's reading."""
    await stack.start_worker()
    path = stack.write_pipeline(WAITING.format(suffix=stack.suffix))
    ref, _ = await stack.create(path)
    await wait_stage(stack, ref, "prod", StageStatus.WAITING_FOR_APPROVAL)
    await wait_listed(stack, {ref.workflow_id: WorkflowExecutionStatus.RUNNING})
    handle = stack.client.get_workflow_handle_for(ReleaseWorkflow.run, ref.workflow_id)
    spec = await handle.query(ReleaseWorkflow.spec)
    store = await fresh_store(default_database_url(tmp_path / "backfill"))
    try:
        await record_release(store, spec, version=5)
        assert await backfill(stack.client, store, task_queue=stack.task_queue) == 0
        recorded = await release(store, ref.pipeline, ref.number)
        assert recorded is not None
        assert recorded.stage("prod").attempts == []  # not the backfill's waiting attempt
        assert await get_meta(store, backfill_marker(stack.task_queue)) is not None
    finally:
        await store.close()


# --- the meta table and its migration --------------------------------------------------


async def test_upgrade_from_0001_adds_record_meta_and_keeps_the_rows(store_url: str) -> None:
    await upgrade(store_url, "0001")
    database = open_database(store_url)
    try:
        await record_release(database, a_spec(), version=1)
        await upgrade(store_url, "0002")
        assert await current_revision(store_url) == "0002"
        assert [r.number for r in await releases(database)] == [1]
        assert await get_meta(database, "backfill/stageflow") is None
    finally:
        await database.close()


async def test_the_migrated_schema_is_the_one_the_models_declare_meta_included(
    store: Database,
) -> None:
    assert "record_meta" in Base.metadata.tables
    async with store.engine.connect() as connection:
        differences = await connection.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
            )
        )
    assert differences == []


async def test_meta_keeps_the_last_value_set_under_each_key(store: Database) -> None:
    assert await get_meta(store, "backfill/stageflow") is None
    await set_meta(store, "backfill/stageflow", "done")
    await set_meta(store, "backfill/stageflow", "done again")
    await set_meta(store, "other", "x")
    assert await get_meta(store, "backfill/stageflow") == "done again"
    assert await get_meta(store, "other") == "x"


def a_spec() -> ReleaseSpec:
    pipeline = Pipeline.model_validate(
        {
            "name": "webapp",
            "stages": [{"name": "dev", "pool": "linux", "tasks": [{"name": "d", "script": "d"}]}],
        }
    )
    return ReleaseSpec(
        pipeline=pipeline,
        revision="0" * 64,
        number=1,
        name="Release-1",
        created_by="carol",
        created_at=T0,
    )
