"""The record (activities/record): every write and read, idempotent and newer-only writes,
and migrations — each on SQLite and on a real PostgreSQL (a throwaway cluster,
tests/postgres.py), skipped there only when the server binaries are missing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text

from activities.record import (
    Database,
    ReleaseNotRecorded,
    async_url,
    current_revision,
    default_database_url,
    deployed_on,
    history,
    import_release,
    open_database,
    record_attempt,
    record_events,
    record_release,
    record_revision,
    release,
    release_spec,
    releases,
    releases_waiting_on,
    revisions,
    status_matrix,
    upgrade,
)
from activities.record.tables import Base
from bench.record import seed_releases
from worker.settings import Settings
from workflows.approval_policy import ApprovalState, DecisionRecord
from workflows.audit import SYSTEM, AuditEvent
from workflows.gates import CheckOutcome, GateEvaluation, GateState
from workflows.pipeline import Pipeline
from workflows.release import (
    AgentSession,
    ReleaseSpec,
    ReleaseStatus,
    ResolvedArtifact,
    StageAttempt,
    StageStatus,
    StageView,
    TaskRun,
    TaskStatus,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


# --- fixtures: the same tests on SQLite and PostgreSQL -------------------------------


@pytest.fixture
async def db(record_url: str) -> AsyncIterator[Database]:
    await upgrade(record_url)
    database = open_database(record_url)
    try:
        yield database
    finally:
        await database.close()


# --- builders -----------------------------------------------------------------------


def webapp(name: str = "webapp") -> Pipeline:
    """dev after the release; qa after dev, approved first by alice or ops, gated after;
    prod manual, with a manual intervention decided by erin."""
    return Pipeline.model_validate(
        {
            "name": name,
            "groups": {"ops": ["bob", "dave"]},
            "variables": {"REGION": "eu", "TOKEN": {"secret": "env:WEBAPP_TOKEN"}},
            "stages": [
                {"name": "dev", "pool": "linux", "tasks": [{"name": "deploy", "script": "d.sh"}]},
                {
                    "name": "qa",
                    "trigger": {"after_stages": ["dev"]},
                    "pool": "linux",
                    "tasks": [
                        {"name": "migrate", "script": "m.sh"},
                        {"name": "deploy", "script": "d.sh"},
                    ],
                    "pre_deployment": {"approvals": {"approvers": ["alice", "group:ops"]}},
                    "post_deployment": {
                        "gates": {"checks": [{"name": "health", "http": {"url": "http://x/h"}}]}
                    },
                },
                {
                    "name": "prod",
                    "trigger": "manual",
                    "pool": "linux",
                    "tasks": [
                        {
                            "name": "check",
                            "manual_intervention": {"instructions": "look", "approvers": ["erin"]},
                        },
                        {"name": "deploy", "script": "d.sh"},
                    ],
                },
            ],
        }
    )


def spec(number: int = 1, pipeline: Pipeline | None = None, **more: Any) -> ReleaseSpec:
    pipeline = pipeline or webapp()
    return ReleaseSpec(
        pipeline=pipeline,
        number=number,
        name=f"Release-{number}",
        artifacts=[
            ResolvedArtifact(alias="app", type="local", version=f"1.{number}", source="/drops/app")
        ],
        variables={"REGION": "us"},
        description=f"release {number}",
        created_by=more.pop("created_by", "carol"),
        created_at=more.pop("created_at", T0 + timedelta(minutes=number)),
        revision="ab" * 32,
        **more,
    )


def attempt(
    stage: str,
    number: int = 1,
    status: StageStatus = StageStatus.SUCCEEDED,
    release_number: int = 1,
    started: datetime = T0,
    **more: Any,
) -> StageAttempt:
    final = status.is_final
    return StageAttempt(
        attempt=number,
        status=status,
        workflow_id=f"release/webapp/{release_number}/{stage}/{number}",
        triggered_by=more.pop("triggered_by", "carol"),
        reason=more.pop("reason", "after release"),
        started_at=started,
        ended_at=started + timedelta(minutes=5) if final else None,
        **more,
    )


def full_attempt() -> StageAttempt:
    """A qa deployment with a bit of everything the record keeps."""
    t = T0 + timedelta(hours=1)
    return attempt(
        "qa",
        status=StageStatus.PARTIALLY_SUCCEEDED,
        started=t,
        reason="after dev",
        message="1 task failed, continued",
        tasks=[
            TaskRun(
                job="job",
                task="migrate",
                status=TaskStatus.FAILED,
                exit_code=3,
                tries=2,
                started_at=t + timedelta(minutes=1),
                duration=timedelta(seconds=12, microseconds=345678),
                agent="agent-b",
                log="webapp/1/qa/1/job/01-migrate.try2.log",
                logs=[
                    "webapp/1/qa/1/job/01-migrate.log",
                    "webapp/1/qa/1/job/01-migrate.try2.log",
                ],
                message="exit 3",
                continue_on_error=True,
            ),
            TaskRun(
                job="job",
                task="deploy",
                status=TaskStatus.SUCCEEDED,
                exit_code=0,
                tries=1,
                started_at=t + timedelta(minutes=2),
                duration=timedelta(seconds=3),
                agent="agent-b",
                log="webapp/1/qa/1/job/02-deploy.log",
                logs=["webapp/1/qa/1/job/02-deploy.log"],
            ),
        ],
        agents=[
            AgentSession(
                job="job", try_number=1, agent="agent-a", leased_at=t, ended_at=t, lost=True
            ),
            AgentSession(
                job="job",
                try_number=2,
                agent="agent-b",
                leased_at=t + timedelta(seconds=30),
                ended_at=t + timedelta(minutes=3),
            ),
        ],
        approvals=[
            ApprovalState(
                phase="pre",
                policy="any",
                approvers=["alice", "group:ops"],
                status="approved",
                deadline=t + timedelta(days=30),
                done_entries=[0, 1],
                decisions=[
                    DecisionRecord(
                        time=t,
                        by="carol",
                        action="approve",
                        outcome="refused",
                        reason="carol created the release and may not approve it",
                        request_id="r-1",
                    ),
                    DecisionRecord(
                        time=t, by="bob", action="approve", comment="ok", outcome="accepted"
                    ),
                ],
            )
        ],
        gates=[
            GateState(
                phase="post",
                status="passed",
                started_at=t + timedelta(minutes=3),
                deadline=t + timedelta(hours=2),
                healthy_since=t + timedelta(minutes=4),
                ignored=["health"],
                evaluations=[
                    GateEvaluation(
                        time=t + timedelta(minutes=4),
                        results=[
                            CheckOutcome(check="health", healthy=False, reason="503", ignored=True)
                        ],
                    )
                ],
                evaluation_count=7,
            )
        ],
        events=[
            AuditEvent(
                time=t,
                actor="carol",
                action="approve",
                stage="qa",
                outcome="refused",
                detail="carol created the release and may not approve it",
                request_id="r-1",
            ),
            AuditEvent(time=t, actor="bob", action="approve", stage="qa", detail="ok"),
        ],
    )


async def count(db: Database, table: str) -> int:
    async with db.reading() as session:
        return (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()


TABLES = (
    "pipelines",
    "pipeline_revisions",
    "releases",
    "release_stages",
    "deployments",
    "agent_sessions",
    "task_runs",
    "task_tries",
    "approvals",
    "approval_decisions",
    "gate_outcomes",
    "audit_events",
)


async def counts(db: Database) -> dict[str, int]:
    return {table: await count(db, table) for table in TABLES}


# --- migrations -----------------------------------------------------------------------


async def test_upgrade_creates_on_an_empty_database_the_schema_the_models_declare(
    record_url: str,
) -> None:
    assert await current_revision(record_url) is None
    await upgrade(record_url)
    assert await current_revision(record_url) == "0007"
    database = open_database(record_url)
    try:
        async with database.engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await database.close()
    assert differences == []


async def test_upgrade_run_again_changes_nothing_and_keeps_the_rows(record_url: str) -> None:
    await upgrade(record_url)
    database = open_database(record_url)
    try:
        await record_release(database, spec(), version=1)
        await upgrade(record_url)
        assert await current_revision(record_url) == "0007"
        assert [r.number for r in await releases(database)] == [1]
    finally:
        await database.close()


async def test_processes_upgrading_at_once_all_succeed(record_url: str) -> None:
    script = "import sys; from activities.record import upgrade_now; upgrade_now(sys.argv[1])"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, record_url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60)[0].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], outputs
    assert await current_revision(record_url) == "0007"


async def test_default_record_is_a_sqlite_file_in_the_data_dir_in_wal_mode(
    tmp_path: Path,
) -> None:
    url = default_database_url(tmp_path / "data")
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'stageflow.db'}"
    await upgrade(url)
    database = open_database(url)
    try:
        async with database.reading() as session:
            mode = (await session.execute(text("PRAGMA journal_mode"))).scalar_one()
    finally:
        await database.close()
    assert mode == "wal"
    assert (tmp_path / "data" / "stageflow.db").is_file()


def test_the_record_url_comes_from_the_settings(tmp_path: Path) -> None:
    given = Settings.from_env({"STAGEFLOW_DATABASE_URL": "postgresql://sf:secret@db/stageflow"})
    assert given.record_url == "postgresql+asyncpg://sf:secret@db/stageflow"
    assert "secret" not in repr(given)
    default = Settings.from_env({"STAGEFLOW_DATA_DIR": str(tmp_path)})
    assert default.record_url == f"sqlite+aiosqlite:///{tmp_path / 'stageflow.db'}"


def test_database_urls_get_the_async_driver() -> None:
    assert async_url("postgresql://u:p@db:5432/stageflow") == (
        "postgresql+asyncpg://u:p@db:5432/stageflow"
    )
    assert async_url("postgres://db/stageflow") == "postgresql+asyncpg://db/stageflow"
    assert async_url("sqlite:////var/x.db") == "sqlite+aiosqlite:////var/x.db"
    assert async_url("postgresql+asyncpg://db/s") == "postgresql+asyncpg://db/s"


# --- writes and reads -------------------------------------------------------------------


async def test_recorded_release_reads_back_with_its_snapshot_and_stages(db: Database) -> None:
    release_spec_ = spec()
    assert await record_release(db, release_spec_, version=1)

    shown = await release(db, "webapp", 1)
    assert shown == ReleaseStatus(
        pipeline="webapp",
        number=1,
        name="Release-1",
        state="active",
        status="not_deployed",
        created_by="carol",
        created_at=release_spec_.created_at,
        description="release 1",
        artifacts=release_spec_.artifacts,
        stages=[
            StageView(name="dev", trigger="after release"),
            StageView(name="qa", trigger="after dev"),
            StageView(name="prod", trigger="manual"),
        ],
    )
    assert await release_spec(db, "webapp", 1) == release_spec_
    [revision] = await revisions(db, "webapp")
    assert (revision.sha256, revision.author, revision.first_release) == ("ab" * 32, "carol", 1)


async def test_recorded_variables_keep_a_secret_as_its_reference_never_a_value(
    db: Database,
) -> None:
    await record_release(db, spec(), version=1)
    async with db.reading() as session:
        variables = (await session.execute(text("SELECT variables FROM releases"))).scalar_one()
    if isinstance(variables, str):  # SQLite hands JSON back as text on a raw query
        import json

        variables = json.loads(variables)
    assert variables == {"REGION": "us", "TOKEN": {"secret": "env:WEBAPP_TOKEN"}}


async def test_recorded_attempt_reads_back_whole(db: Database) -> None:
    await record_release(db, spec(), version=1)
    qa = full_attempt()
    assert await record_attempt(db, "webapp", 1, "qa", qa, version=10)

    shown = await release(db, "webapp", 1)
    assert shown is not None
    assert shown.stage("qa").attempts == [qa]
    assert shown.stage("qa").status == StageStatus.PARTIALLY_SUCCEEDED
    assert shown.status == "partially_succeeded"


async def test_the_same_writes_twice_leave_one_row_each(db: Database) -> None:
    async def write_all() -> None:
        await record_release(db, spec(), version=1)
        await record_revision(db, "webapp", "ab" * 32, "carol", T0, "name: webapp\n", 1)
        await record_attempt(db, "webapp", 1, "qa", full_attempt(), version=10)
        await record_events(db, "webapp", 1, [AuditEvent(time=T0, actor="carol", action="create")])

    await write_all()
    once = await counts(db)
    await write_all()
    assert await counts(db) == once
    assert all(once[table] >= 1 for table in TABLES), once


async def test_an_older_attempt_written_after_a_newer_one_changes_nothing(db: Database) -> None:
    await record_release(db, spec(), version=1)
    newer = full_attempt()
    older = newer.model_copy(
        update={
            "status": StageStatus.IN_PROGRESS,
            "ended_at": None,
            "tasks": [newer.tasks[0].model_copy(update={"status": TaskStatus.IN_PROGRESS})],
            "approvals": [newer.approvals[0].model_copy(update={"status": "pending"})],
            "gates": [],
            "message": "",
        }
    )
    assert await record_attempt(db, "webapp", 1, "qa", newer, version=20)
    assert not await record_attempt(db, "webapp", 1, "qa", older, version=10)
    assert not await record_attempt(db, "webapp", 1, "qa", newer, version=20)

    shown = await release(db, "webapp", 1)
    assert shown is not None
    assert shown.stage("qa").attempts == [newer]
    assert shown.stage("qa").status == StageStatus.PARTIALLY_SUCCEEDED
    assert shown.status == "partially_succeeded"


async def test_a_newer_attempt_replaces_the_older_one_and_what_it_no_longer_has(
    db: Database,
) -> None:
    await record_release(db, spec(), version=1)
    first = full_attempt()
    await record_attempt(db, "webapp", 1, "qa", first, version=10)
    later = first.model_copy(
        update={"status": StageStatus.FAILED, "gates": [], "agents": first.agents[:1]}
    )
    assert await record_attempt(db, "webapp", 1, "qa", later, version=11)
    shown = await release(db, "webapp", 1)
    assert shown is not None
    assert shown.stage("qa").attempts == [later]
    assert await count(db, "gate_outcomes") == 0
    assert await count(db, "agent_sessions") == 1


async def test_an_older_release_state_after_a_newer_one_changes_nothing(db: Database) -> None:
    await record_release(db, spec(), version=1)
    assert await record_release(db, spec(), version=5, state="abandoned")
    assert not await record_release(db, spec(), version=3, state="active")
    shown = await release(db, "webapp", 1)
    assert shown is not None
    assert (shown.state, shown.status) == ("abandoned", "abandoned")


async def test_a_later_attempt_stays_the_stage_status_when_an_earlier_one_is_written_after(
    db: Database,
) -> None:
    await record_release(db, spec(), version=1)
    await record_attempt(db, "webapp", 1, "dev", attempt("dev", 1, StageStatus.QUEUED), 10)
    second = attempt(
        "dev", 2, StageStatus.IN_PROGRESS, reason="redeploy", started=T0 + timedelta(hours=1)
    )
    await record_attempt(db, "webapp", 1, "dev", second, 20)
    # The first attempt's end arrives late.
    await record_attempt(db, "webapp", 1, "dev", attempt("dev", 1, StageStatus.FAILED), 15)

    shown = await release(db, "webapp", 1)
    assert shown is not None
    dev = shown.stage("dev")
    assert [(a.attempt, a.status) for a in dev.attempts] == [
        (1, StageStatus.FAILED),
        (2, StageStatus.IN_PROGRESS),
    ]
    assert dev.status == StageStatus.IN_PROGRESS
    assert shown.status == "in_progress"


async def test_a_deployment_of_an_unrecorded_release_is_refused_until_the_release_is(
    db: Database,
) -> None:
    with pytest.raises(ReleaseNotRecorded, match="webapp/7"):
        await record_attempt(db, "webapp", 7, "dev", attempt("dev"), 1)
    with pytest.raises(ReleaseNotRecorded):
        await record_events(db, "webapp", 7, [AuditEvent(time=T0, actor="carol", action="x")])
    await record_release(db, spec(7), version=1)
    assert await record_attempt(db, "webapp", 7, "dev", attempt("dev", release_number=7), 2)


async def test_events_written_twice_or_in_overlapping_parts_are_each_kept_once(
    db: Database,
) -> None:
    await record_release(db, spec(), version=1)
    trail = [
        AuditEvent(time=T0, actor="carol", action="create", detail="Release-1"),
        AuditEvent(time=T0, actor="carol", action="deploy", stage="prod", request_id="q-1"),
        AuditEvent(
            time=T0 + timedelta(seconds=1),
            actor="dave",
            action="deploy",
            stage="prod",
            outcome="refused",
            detail="stage 'prod' is being deployed (attempt 1)",
            request_id="q-2",
        ),
        AuditEvent(
            time=T0 + timedelta(minutes=5),
            actor=SYSTEM,
            action="stage succeeded",
            stage="dev",
            detail="attempt 1",
        ),
    ]
    await record_events(db, "webapp", 1, trail[:3])
    await record_events(db, "webapp", 1, trail[1:])
    await record_events(db, "webapp", 1, trail)
    assert await history(db, "webapp", 1) == trail


async def test_history_has_the_release_and_every_deployment_trail_in_time_order(
    db: Database,
) -> None:
    await record_release(db, spec(), version=1)
    release_trail = [
        AuditEvent(time=T0, actor="carol", action="create"),
        AuditEvent(
            time=T0 + timedelta(hours=2), actor=SYSTEM, action="stage succeeded", stage="qa"
        ),
    ]
    await record_events(db, "webapp", 1, release_trail)
    qa = full_attempt()  # its events are at T0 + 1h
    await record_attempt(db, "webapp", 1, "qa", qa, version=10)
    assert await history(db, "webapp", 1) == [release_trail[0], *qa.events, release_trail[1]]


async def test_one_request_answered_in_the_release_and_in_a_deployment_is_two_events(
    db: Database,
) -> None:
    """A decision that reached the stage, retried as the release's late decision."""
    await record_release(db, spec(), version=1)
    accepted = AuditEvent(time=T0, actor="bob", action="approve", stage="qa", request_id="r-9")
    refused = accepted.model_copy(
        update={"time": T0 + timedelta(seconds=2), "outcome": "refused", "detail": "ended"}
    )
    await record_attempt(db, "webapp", 1, "qa", attempt("qa", events=[accepted]), version=10)
    await record_events(db, "webapp", 1, [refused])
    assert await history(db, "webapp", 1) == [accepted, refused]


async def test_a_revision_keeps_its_first_author_and_gets_its_definition_filled_in(
    db: Database,
) -> None:
    await record_release(db, spec(), version=1)  # the revision, without its text
    await record_revision(
        db, "webapp", "ab" * 32, "mallory", T0 + timedelta(days=1), "name: webapp\n"
    )
    await record_revision(db, "webapp", "ab" * 32, "mallory", T0, "name: other\n", 9)
    await record_revision(db, "webapp", "cd" * 32, "dave", T0 + timedelta(days=2), "v2\n", 5)
    [first, second] = await revisions(db, "webapp")
    assert (first.author, first.time, first.first_release, first.definition) == (
        "carol",
        spec().created_at,
        1,
        "name: webapp\n",
    )
    assert (second.sha256, second.author, second.definition) == ("cd" * 32, "dave", "v2\n")


async def test_unknown_releases_and_pipelines_read_as_nothing(db: Database) -> None:
    assert await release(db, "webapp", 1) is None
    assert await history(db, "webapp", 1) is None
    assert await release_spec(db, "webapp", 1) is None
    assert await releases(db, pipeline="webapp") == []
    assert await deployed_on(db, "webapp") == []
    assert await revisions(db, "webapp") == []
    matrix = await status_matrix(db, "webapp")
    assert (matrix.stages, matrix.releases, matrix.deployed) == ([], [], [])


# --- lists and cross-release views ----------------------------------------------------


async def test_release_list_is_newest_first_and_paged(db: Database) -> None:
    for number in (1, 2, 3, 4, 5):
        await record_release(db, spec(number), version=1)
    assert [r.number for r in await releases(db)] == [5, 4, 3, 2, 1]
    assert [r.number for r in await releases(db, limit=2)] == [5, 4]
    assert [r.number for r in await releases(db, limit=2, offset=2)] == [3, 2]
    assert [r.number for r in await releases(db, limit=2, offset=4)] == [1]


async def test_release_list_filters_by_pipeline_status_stage_status_and_creator(
    db: Database,
) -> None:
    await record_release(db, spec(1), version=1)
    await record_release(db, spec(2, created_by="dave"), version=1)
    await record_release(db, spec(3, pipeline=webapp("api")), version=1)
    await record_attempt(db, "webapp", 1, "dev", attempt("dev"), 10)
    waiting = attempt("qa", status=StageStatus.WAITING_FOR_APPROVAL, release_number=2)
    await record_attempt(db, "webapp", 2, "qa", waiting, 10)

    def numbers(found: list[ReleaseStatus]) -> list[tuple[str, int]]:
        return [(r.pipeline, r.number) for r in found]

    assert numbers(await releases(db, pipeline="webapp")) == [("webapp", 2), ("webapp", 1)]
    assert numbers(await releases(db, pipeline="api")) == [("api", 3)]
    assert numbers(await releases(db, status="waiting")) == [("webapp", 2)]
    assert numbers(await releases(db, status="partially_deployed")) == [("webapp", 1)]
    assert numbers(await releases(db, stage_status="waiting_for_approval")) == [("webapp", 2)]
    assert numbers(await releases(db, stage_status="succeeded")) == [("webapp", 1)]
    assert numbers(await releases(db, created_by="dave")) == [("webapp", 2)]
    assert numbers(await releases(db, pipeline="webapp", created_by="nobody")) == []

    [listed] = await releases(db, status="waiting")
    assert [(v.name, v.status) for v in listed.stages] == [
        ("dev", StageStatus.NOT_DEPLOYED),
        ("qa", StageStatus.WAITING_FOR_APPROVAL),
        ("prod", StageStatus.NOT_DEPLOYED),
    ]
    # The list carries the latest attempt's summary, not its parts.
    assert listed.stage("qa").attempts == [waiting]


async def test_a_stage_waiting_for_approval_lists_the_release_as_waiting(db: Database) -> None:
    await record_release(db, spec(), version=1)
    await record_attempt(db, "webapp", 1, "dev", attempt("dev"), 10)
    qa = attempt("qa", status=StageStatus.IN_PROGRESS)
    await record_attempt(db, "webapp", 1, "qa", qa, 11)
    assert (await releases(db))[0].status == "in_progress"
    waiting = qa.model_copy(update={"status": StageStatus.WAITING_FOR_APPROVAL})
    await record_attempt(db, "webapp", 1, "qa", waiting, 12)
    assert (await releases(db))[0].status == "waiting"


async def test_releases_waiting_on_lists_what_each_person_may_decide(db: Database) -> None:
    await record_release(db, spec(1), version=1)
    await record_release(db, spec(2), version=1)
    await record_release(db, spec(3), version=1)
    pending = ApprovalState(
        phase="pre",
        policy="any",
        approvers=["alice", "group:ops"],
        deadline=T0 + timedelta(days=30),
    )
    await record_attempt(
        db,
        "webapp",
        1,
        "qa",
        attempt("qa", status=StageStatus.WAITING_FOR_APPROVAL, approvals=[pending]),
        10,
    )
    intervention = attempt(
        "prod",
        status=StageStatus.WAITING_FOR_INTERVENTION,
        release_number=2,
        tasks=[
            TaskRun(job="job", task="check", status=TaskStatus.IN_PROGRESS),
            TaskRun(job="job", task="deploy"),
        ],
    )
    await record_attempt(db, "webapp", 2, "prod", intervention, 10)
    # Release 3 waited, and was approved since: nothing waits there.
    approved = pending.model_copy(update={"status": "approved"})
    await record_attempt(
        db,
        "webapp",
        3,
        "qa",
        attempt(
            "qa", status=StageStatus.WAITING_FOR_APPROVAL, release_number=3, approvals=[pending]
        ),
        10,
    )
    await record_attempt(
        db,
        "webapp",
        3,
        "qa",
        attempt("qa", status=StageStatus.IN_PROGRESS, release_number=3, approvals=[approved]),
        11,
    )

    # Release 4 was approved with a deferral: an approver may end it early.
    await record_release(db, spec(4), version=1)
    deferred = attempt(
        "qa",
        status=StageStatus.DEFERRED,
        release_number=4,
        approvals=[approved.model_copy(update={"defer_until": T0 + timedelta(days=1)})],
        waiting_until=T0 + timedelta(days=1),
        waiting_reason="deferred by bob",
    )
    await record_attempt(db, "webapp", 4, "qa", deferred, 10)

    everything = await releases_waiting_on(db)
    assert [(w.number, w.stage, w.kind, w.phase, w.users) for w in everything] == [
        (1, "qa", "approval", "pre", ["alice", "bob", "dave"]),
        (2, "prod", "intervention", "", ["erin"]),
        (4, "qa", "deferred", "pre", ["alice", "bob", "dave"]),
    ]
    assert everything[2].deadline == T0 + timedelta(days=1)
    assert everything[0].deadline == pending.deadline
    assert [w.number for w in await releases_waiting_on(db, "bob")] == [1, 4]
    assert [w.number for w in await releases_waiting_on(db, "erin")] == [2]
    # The creator may not approve: nothing waits on carol.
    assert await releases_waiting_on(db, "carol") == []


async def test_an_abandoned_release_waits_on_nobody(db: Database) -> None:
    await record_release(db, spec(), version=1)
    pending = ApprovalState(phase="pre", policy="any", approvers=["alice"])
    waiting = attempt("qa", status=StageStatus.WAITING_FOR_APPROVAL, approvals=[pending])
    await record_attempt(db, "webapp", 1, "qa", waiting, 10)
    assert len(await releases_waiting_on(db, "alice")) == 1
    await record_release(db, spec(), version=20, state="abandoned")
    assert await releases_waiting_on(db, "alice") == []


async def test_deployed_on_shows_the_last_succeeded_deployment_and_what_is_under_way(
    db: Database,
) -> None:
    for number in (1, 2, 3):
        await record_release(db, spec(number), version=1)
    hour = timedelta(hours=1)
    await record_attempt(db, "webapp", 1, "dev", attempt("dev", started=T0), 10)
    await record_attempt(
        db, "webapp", 2, "dev", attempt("dev", release_number=2, started=T0 + hour), 10
    )
    await record_attempt(
        db,
        "webapp",
        2,
        "qa",
        attempt("qa", status=StageStatus.FAILED, release_number=2, started=T0 + hour),
        10,
    )
    # A rollback: release 1 deployed to dev again, after release 2.
    await record_attempt(
        db,
        "webapp",
        1,
        "dev",
        attempt("dev", 2, reason="redeploy", triggered_by="dave", started=T0 + 2 * hour),
        11,
    )
    await record_attempt(
        db,
        "webapp",
        3,
        "dev",
        attempt("dev", status=StageStatus.IN_PROGRESS, release_number=3, started=T0 + 3 * hour),
        10,
    )

    where = await deployed_on(db, "webapp")
    assert [s.stage for s in where] == ["dev", "qa", "prod"]
    dev, qa, prod = where
    assert dev.deployed is not None
    assert (dev.deployed.number, dev.deployed.attempt, dev.deployed.triggered_by) == (1, 2, "dave")
    assert [(d.number, d.status) for d in dev.in_progress] == [(3, StageStatus.IN_PROGRESS)]
    assert (qa.deployed, qa.in_progress) == (None, [])
    assert (prod.deployed, prod.in_progress) == (None, [])


async def test_status_matrix_is_the_stages_by_the_newest_releases(db: Database) -> None:
    for number in (1, 2, 3):
        await record_release(db, spec(number), version=1)
        await record_attempt(db, "webapp", number, "dev", attempt("dev", release_number=number), 10)
    await record_attempt(
        db,
        "webapp",
        3,
        "qa",
        attempt("qa", status=StageStatus.WAITING_FOR_APPROVAL, release_number=3),
        10,
    )
    matrix = await status_matrix(db, "webapp", releases=2)
    assert matrix.stages == ["dev", "qa", "prod"]
    assert [[(v.name, v.status.value) for v in row.stages] for row in matrix.releases] == [
        [("dev", "succeeded"), ("qa", "waiting_for_approval"), ("prod", "not_deployed")],
        [("dev", "succeeded"), ("qa", "not_deployed"), ("prod", "not_deployed")],
    ]
    assert [row.number for row in matrix.releases] == [3, 2]
    [dev, qa, _prod] = matrix.deployed
    assert dev.deployed is not None and dev.deployed.number == 3
    assert [d.number for d in qa.in_progress] == [3]


async def test_an_imported_release_reads_as_its_workflow_showed_it(db: Database) -> None:
    """The backfill: a release that exists only in Temporal, taken in from its queries."""
    release_spec_ = spec()
    qa = full_attempt()
    status = ReleaseStatus(
        pipeline="webapp",
        number=1,
        name="Release-1",
        state="closed",
        status="closed",
        created_by="carol",
        created_at=release_spec_.created_at,
        description="release 1",
        artifacts=release_spec_.artifacts,
        stages=[
            StageView(
                name="dev",
                status=StageStatus.SUCCEEDED,
                trigger="after release",
                attempts=[attempt("dev")],
            ),
            StageView(name="qa", status=qa.status, trigger="after dev", attempts=[qa]),
            StageView(name="prod", trigger="manual"),
        ],
    )
    trail = [AuditEvent(time=T0, actor="carol", action="create")]
    await import_release(db, release_spec_, status, trail, version=1)
    await import_release(db, release_spec_, status, trail, version=1)
    assert await release(db, "webapp", 1) == status
    assert len(await history(db, "webapp", 1) or []) == 1 + len(qa.events)


async def test_concurrent_writes_of_one_release_keep_every_stage(record_url: str) -> None:
    """Each stage's workflow writes at once, each through its own connection: the
    release's status is the aggregate of all of them, on either database."""
    await upgrade(record_url)
    writers = [open_database(record_url) for _ in range(3)]
    try:
        await record_release(writers[0], spec(), version=1)
        await asyncio.gather(
            record_attempt(writers[0], "webapp", 1, "dev", attempt("dev"), 10),
            record_attempt(writers[1], "webapp", 1, "qa", attempt("qa"), 10),
            record_attempt(writers[2], "webapp", 1, "prod", attempt("prod"), 10),
        )
        shown = await release(writers[0], "webapp", 1)
        assert shown is not None
        assert [v.status for v in shown.stages] == [StageStatus.SUCCEEDED] * 3
        assert shown.status == "succeeded"
    finally:
        for writer in writers:
            await writer.close()


async def test_seeded_releases_are_listed_like_real_ones(db: Database) -> None:
    await seed_releases(db, 30)
    listed = await releases(db, limit=100)
    assert len(listed) == 30
    assert [r.number for r in listed] == list(range(30, 0, -1))
    async with db.reading() as session:
        from activities.record.tables import DeploymentRow

        assert (
            await session.execute(select(func.count()).select_from(DeploymentRow))
        ).scalar_one() > 30
