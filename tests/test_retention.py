"""The record's own retention (activities/record/retention.py): what each pipeline's
`retention: {days, keep_last}` deletes and what it keeps, rows and log files, on
SQLite and on a real PostgreSQL; the `retention` field's forms; the daily Schedule
and RetentionWorkflow on the real dev server; `stageflow retention run`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleOverlapPolicy
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.pipeline_loader import pipeline_json_schema
from activities.record import (
    Database,
    default_database_url,
    open_database,
    record_attempt,
    record_events,
    record_release,
    release,
    releases,
    upgrade,
)
from activities.record.retention import Retention, apply_retention
from activities.record.tables import ReleaseRow
from starter.cli import build_parser, settings_from
from starter.maintenance import cmd_retention, retention_line
from starter.reading import RecordUnavailable
from tests.conftest import wait_for
from tests.postgres import PostgresCluster
from worker.control import SANDBOX
from worker.devserver import free_port
from worker.retention_schedule import ensure_retention_schedule
from workflows.approval_policy import ApprovalState, DecisionRecord
from workflows.audit import AuditEvent
from workflows.gates import GateState
from workflows.pipeline import Pipeline
from workflows.record_api import RetentionInput, RetentionResult
from workflows.release import (
    AgentSession,
    ReleaseSpec,
    StageAttempt,
    StageStatus,
    TaskRun,
    TaskStatus,
)
from workflows.retention_workflow import RetentionWorkflow

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2027, 12, 1, 3, 17, tzinfo=UTC)
SUCCEEDED, FAILED = StageStatus.SUCCEEDED, StageStatus.FAILED
TABLES = (
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


# --- fixtures: the same tests on SQLite and PostgreSQL -------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = default_database_url(tmp_path / "data")
    else:
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = await cluster.new_database()
    await upgrade(url)
    database = open_database(url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "logs"
    path.mkdir(parents=True)
    return path


# --- builders -----------------------------------------------------------------------


def webapp(retention: Any = None, name: str = "webapp", **stage_retention: Any) -> Pipeline:
    """dev, qa, prod; `retention` the pipeline's, `prod={...}` a stage's own."""
    stages = []
    for stage in ("dev", "qa", "prod"):
        definition: dict[str, Any] = {
            "name": stage,
            "trigger": "manual",
            "pool": "linux",
            "tasks": [{"name": "deploy", "script": "d.sh"}],
        }
        if stage in stage_retention:
            definition["retention"] = stage_retention[stage]
        stages.append(definition)
    given = {} if retention is None else {"retention": retention}
    return Pipeline.model_validate({"name": name, "stages": stages, **given})


class Seeder:
    """Releases recorded through the write API, with their log files in `log_dir`."""

    def __init__(self, db: Database, log_dir: Path) -> None:
        self.db = db
        self.log_dir = log_dir

    async def release(
        self,
        number: int,
        created: datetime,
        pipeline: Pipeline | None = None,
        state: str = "closed",
        deployments: tuple[tuple[str, StageStatus, datetime], ...] = (),
    ) -> None:
        """One release and its deployments (stage, status, start; each ends 5 minutes
        after it starts unless under way), each with a task of two tries and its logs,
        an agent session, an approval with a decision, a gate and an audit event."""
        pipeline = pipeline or webapp()
        spec = ReleaseSpec(
            pipeline=pipeline,
            number=number,
            name=f"Release-{number}",
            created_by="carol",
            created_at=created,
            revision=hashlib.sha256(pipeline.model_dump_json().encode()).hexdigest(),
        )
        await record_release(self.db, spec, version=1, state=state)
        attempts: dict[str, int] = {}
        for stage, status, started in deployments:
            attempts[stage] = attempts.get(stage, 0) + 1
            await record_attempt(
                self.db,
                pipeline.name,
                number,
                stage,
                self.attempt(pipeline.name, number, stage, attempts[stage], status, started),
                version=2,
            )
        await record_events(
            self.db,
            pipeline.name,
            number,
            [AuditEvent(time=created, actor="carol", action="create")],
        )

    def attempt(
        self,
        pipeline: str,
        number: int,
        stage: str,
        attempt: int,
        status: StageStatus,
        started: datetime,
    ) -> StageAttempt:
        ended = started + timedelta(minutes=5) if status.is_final else None
        prefix = f"{pipeline}/{number}/{stage}/{attempt}/job"
        logs = [f"{prefix}/01-deploy.log", f"{prefix}/01-deploy.try2.log"]
        for key in logs:
            self.write_log(key)
        return StageAttempt(
            attempt=attempt,
            status=status,
            workflow_id=f"release/{pipeline}/{number}/{stage}/{attempt}",
            triggered_by="carol",
            reason="deploy",
            started_at=started,
            ended_at=ended,
            tasks=[
                TaskRun(
                    job="job",
                    task="deploy",
                    status=TaskStatus.SUCCEEDED if status == SUCCEEDED else TaskStatus.FAILED,
                    exit_code=0,
                    tries=2,
                    started_at=started,
                    duration=timedelta(seconds=3),
                    agent="agent-a",
                    log=logs[-1],
                    logs=logs,
                )
            ],
            agents=[AgentSession(job="job", try_number=1, agent="agent-a", leased_at=started)],
            approvals=[
                ApprovalState(
                    phase="pre",
                    policy="any",
                    approvers=["alice"],
                    status="approved",
                    done_entries=[0],
                    decisions=[
                        DecisionRecord(
                            time=started, by="alice", action="approve", outcome="accepted"
                        )
                    ],
                )
            ],
            gates=[
                GateState(
                    phase="post", status="passed", started_at=started, deadline=started, ignored=[]
                )
            ],
            events=[AuditEvent(time=started, actor="carol", action="deploy", stage=stage)],
        )

    def write_log(self, key: str) -> None:
        path = self.log_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"log of {key}\n")
        path.with_name(path.name + ".idx").write_text("0 1700000000000\n")


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


async def numbers(db: Database, pipeline: str = "webapp") -> list[int]:
    return sorted(r.number for r in await releases(db, pipeline=pipeline, limit=1000))


async def counts(db: Database) -> dict[str, int]:
    async with db.reading() as session:
        return {
            table: (await session.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in TABLES
        }


def files(log_dir: Path, release: str = "") -> list[str]:
    """Every file (logs and indexes) under the log dir, or under one release's directory."""
    top = log_dir / release
    return sorted(p.relative_to(log_dir).as_posix() for p in top.rglob("*") if p.is_file())


async def set_retention(db: Database, number: int, retention: Any) -> None:
    """Make a release's recorded snapshot hold `retention` as written before this change."""
    async with db.writing.begin() as session:
        row = (
            await session.execute(select(ReleaseRow).where(ReleaseRow.number == number))
        ).scalar_one()
        snapshot = json.loads(json.dumps(row.snapshot))
        snapshot["pipeline"]["retention"] = retention
        await session.execute(
            update(ReleaseRow).where(ReleaseRow.id == row.id).values(snapshot=snapshot)
        )


@pytest.fixture
def seed(db: Database, log_dir: Path) -> Seeder:
    return Seeder(db, log_dir)


# --- what goes, what stays -----------------------------------------------------------


async def test_a_release_past_its_age_goes_with_every_row_and_its_log_files(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    young = webapp({"days": 365, "keep_last": 0})
    await seed.release(2, days_ago(10), young, deployments=(("dev", SUCCEEDED, days_ago(9)),))
    before = await counts(db)
    kept_files = files(log_dir)
    await seed.release(
        1,
        days_ago(400),
        young,
        deployments=(("dev", SUCCEEDED, days_ago(399)), ("qa", FAILED, days_ago(398))),
    )
    assert len(files(log_dir, "webapp/1")) == 8  # 2 deployments × 2 tries × (log + .idx)

    result = await apply_retention(db, NOW, log_dir)

    assert (result.releases, result.deployments, result.logs, result.kept) == (1, 2, 4, 0)
    assert await numbers(db) == [2]
    assert await release(db, "webapp", 1) is None
    assert await counts(db) == before  # every row of release 1, in every table, is gone
    assert files(log_dir) == kept_files
    assert not (log_dir / "webapp" / "1").exists()  # the directories it leaves empty go too


async def test_the_last_keep_last_deployments_of_each_stage_keep_their_releases(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    # dev: releases 1…5 in that order, 1 the only success (deployed there now); qa: 1, 2.
    policy = webapp({"days": 365, "keep_last": 2})
    for number in range(1, 6):
        dev = ("dev", SUCCEEDED if number == 1 else FAILED, days_ago(500 - number))
        qa = (("qa", FAILED, days_ago(480 - number)),) if number <= 2 else ()
        await seed.release(number, days_ago(500 - number), policy, deployments=(dev, *qa))

    result = await apply_retention(db, NOW, log_dir)

    # 4 and 5: the last 2 on dev; 2: on qa; 1: deployed on dev now; 3: nothing keeps it.
    assert await numbers(db) == [1, 2, 4, 5]
    assert (result.releases, result.kept, result.kept_last, result.kept_deployed) == (1, 4, 3, 1)
    assert files(log_dir, "webapp/3") == []
    assert len(files(log_dir, "webapp/4")) == 4


async def test_the_release_deployed_on_a_stage_now_is_kept_however_old(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    policy = webapp({"days": 30, "keep_last": 0})
    await seed.release(
        1, days_ago(2000), policy, deployments=(("prod", SUCCEEDED, days_ago(2000)),)
    )
    for number in (2, 3, 4):
        await seed.release(
            number, days_ago(100), policy, deployments=(("prod", FAILED, days_ago(99)),)
        )

    result = await apply_retention(db, NOW, log_dir)

    assert await numbers(db) == [1]
    assert (result.releases, result.kept_deployed) == (3, 1)


async def test_a_stages_own_days_keep_the_releases_that_reached_it_longer(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    policy = webapp({"days": 365, "keep_last": 0}, prod={"days": 730}, dev={"days": 30})
    # Deployed nowhere: the pipeline's 365 days.
    await seed.release(1, days_ago(300), policy)
    # dev only, 100 days ago: dev's own 30 days.
    await seed.release(2, days_ago(100), policy, deployments=(("dev", FAILED, days_ago(100)),))
    # dev and prod, 500 days ago: the longer of the stages it reached, prod's 730.
    await seed.release(
        3,
        days_ago(500),
        policy,
        deployments=(("dev", FAILED, days_ago(500)), ("prod", FAILED, days_ago(500))),
    )
    await seed.release(4, days_ago(800), policy, deployments=(("prod", FAILED, days_ago(800)),))

    result = await apply_retention(db, NOW, log_dir)

    assert await numbers(db) == [1, 3]
    assert (result.releases, result.kept) == (2, 0)


async def test_a_stages_own_keep_last_counts_for_that_stage(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    policy = webapp({"days": 30, "keep_last": 0}, prod={"keep_last": 2})
    for number in range(1, 5):
        started = days_ago(1000 - number)
        await seed.release(
            number,
            started,
            policy,
            deployments=(("dev", FAILED, started), ("prod", FAILED, started)),
        )

    result = await apply_retention(db, NOW, log_dir)

    assert await numbers(db) == [3, 4]  # the last 2 on prod; dev keeps none
    assert (result.releases, result.kept_last) == (2, 2)


async def test_an_active_release_is_kept_while_its_workflow_may_still_write_to_it(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    policy = webapp({"days": 1, "keep_last": 0, "close_idle_after": "30d"})
    waiting = StageStatus.WAITING_FOR_APPROVAL
    # A deployment waiting on a person for 400 days: the workflow is open.
    await seed.release(1, days_ago(400), policy, "active", (("qa", waiting, days_ago(400)),))
    # Idle for 10 days: its idle close (30 days) has not come yet.
    await seed.release(2, days_ago(10), policy, "active", (("dev", FAILED, days_ago(10)),))
    # Idle for 400 days, its close long due: as good as closed.
    await seed.release(3, days_ago(400), policy, "active", (("dev", FAILED, days_ago(400)),))
    # Closed 10 days ago: past its 1 day.
    await seed.release(4, days_ago(10), policy, "closed", (("dev", FAILED, days_ago(10)),))

    result = await apply_retention(db, NOW, log_dir)

    assert await numbers(db) == [1, 2]
    assert (result.releases, result.kept_active) == (2, 2)


async def test_a_dry_run_deletes_nothing_and_counts_what_a_run_deletes(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    policy = webapp({"days": 365, "keep_last": 1})
    for number in range(1, 5):
        await seed.release(
            number, days_ago(600 - number), policy, deployments=(("dev", FAILED, days_ago(599)),)
        )
    before, logs = await counts(db), files(log_dir)

    dry = await apply_retention(db, NOW, log_dir, dry_run=True)

    assert await counts(db) == before
    assert files(log_dir) == logs
    assert dry.dry_run and (dry.releases, dry.deployments, dry.logs) == (3, 3, 6)
    done = await apply_retention(db, NOW, log_dir)
    assert done.model_dump() == {**dry.model_dump(), "dry_run": False}


@pytest.mark.parametrize("old_form", ["P30D", "30d", 2592000])
async def test_an_old_form_retention_keeps_365_days_and_the_last_5(
    db: Database, seed: Seeder, log_dir: Path, old_form: Any
) -> None:
    # Releases made before `retention` was a policy: their snapshots hold a duration.
    for number in range(1, 9):
        created = days_ago(400 + 10 - number) if number < 8 else days_ago(300)
        await seed.release(number, created, deployments=(("dev", FAILED, created),))
        await set_retention(db, number, old_form)

    result = await apply_retention(db, NOW, log_dir)

    # 8 is younger than 365 days; 4…7 with 8 are dev's last 5 deployments; 1…3 go.
    assert await numbers(db) == [4, 5, 6, 7, 8]
    assert (result.releases, result.kept_last, result.kept_unreadable) == (3, 4, 0)


async def test_a_release_whose_retention_cannot_be_read_is_kept(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    await seed.release(1, days_ago(4000), deployments=(("dev", FAILED, days_ago(4000)),))
    await set_retention(db, 1, {"days": "forever"})

    result = await apply_retention(db, NOW, log_dir)

    assert await numbers(db) == [1]
    assert (result.releases, result.kept_unreadable) == (0, 1)


async def test_a_second_run_deletes_nothing_more(db: Database, seed: Seeder, log_dir: Path) -> None:
    policy = webapp({"days": 100, "keep_last": 1})
    for number in range(1, 4):
        await seed.release(
            number, days_ago(300 - number), policy, deployments=(("qa", FAILED, days_ago(299)),)
        )
    first = await apply_retention(db, NOW, log_dir)
    remaining, logs = await counts(db), files(log_dir)

    second = await apply_retention(db, NOW, log_dir)

    assert first.releases == 2
    assert (second.releases, second.deployments, second.logs) == (0, 0, 0)
    assert second.kept == first.kept == 1
    assert await counts(db) == remaining and files(log_dir) == logs


async def test_the_log_dir_is_optional_and_only_the_rows_go_without_it(
    db: Database, seed: Seeder, log_dir: Path
) -> None:
    await seed.release(1, days_ago(400), deployments=(("dev", FAILED, days_ago(400)),))
    await seed.release(2, days_ago(400), deployments=(("dev", FAILED, days_ago(400)),))
    await set_retention(db, 1, {"keep_last": 0})
    await set_retention(db, 2, {"keep_last": 0})

    result = await apply_retention(db, NOW, None)

    assert (result.releases, result.logs) == (2, 0)
    assert len(files(log_dir)) == 8


# --- the `retention` field -------------------------------------------------------------


@pytest.mark.parametrize(
    "given", ["30d", "P30D", 2592000, 2592000.0, timedelta(days=30), {"close_idle_after": "30d"}]
)
def test_a_duration_alone_is_the_idle_close_with_the_default_policy(given: Any) -> None:
    retention = webapp(given).retention
    assert (retention.days, retention.keep_last) == (365, 5)
    assert retention.close_idle_after == timedelta(days=30) == webapp(given).close_idle_after


def test_the_policy_round_trips_through_a_release_snapshot() -> None:
    pipeline = webapp({"days": 90, "keep_last": 3, "close_idle_after": "2h"}, prod={"days": 400})
    again = Pipeline.model_validate(json.loads(pipeline.model_dump_json()))
    assert again == pipeline
    assert again.close_idle_after == timedelta(hours=2)
    own = again.stage("prod").retention
    assert own is not None and (own.days, own.keep_last) == (400, None)


@pytest.mark.parametrize(
    ("yaml_value", "expected"),
    [
        ("retention: {days: 0}", "retention.days: Input should be greater than or equal to 1"),
        ("retention: {keep_last: -1}", "retention.keep_last: Input should be greater than"),
        ("retention: soon", "retention: 'soon' is not a duration"),
        ("retention: {days: 30, keep: 2}", "retention.keep: unknown field 'keep'"),
    ],
)
def test_a_bad_retention_is_one_line_naming_its_field(
    tmp_path: Path, yaml_value: str, expected: str
) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(
        f"name: webapp\n{yaml_value}\nstages:\n"
        "  - {name: dev, pool: linux, tasks: [{name: t, script: x}]}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "starter.cli", "pipeline", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


def test_a_stage_may_not_set_the_idle_close(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(
        "name: webapp\nstages:\n"
        "  - name: dev\n    pool: linux\n    tasks: [{name: t, script: x}]\n"
        "    retention: {days: 10, close_idle_after: 1d}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "starter.cli", "pipeline", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "stages[0].retention.close_idle_after: unknown field" in done.stderr


def test_the_schema_shows_the_policy_and_the_older_duration_form() -> None:
    schema = pipeline_json_schema()
    forms = schema["properties"]["retention"]["anyOf"]
    assert {"$ref": "#/$defs/Retention"} in forms
    assert any(form.get("anyOf", [{}])[0].get("type") == "string" for form in forms)
    policy = schema["$defs"]["Retention"]["properties"]
    assert (policy["days"]["default"], policy["days"]["minimum"]) == (365, 1)
    assert (policy["keep_last"]["default"], policy["keep_last"]["minimum"]) == (5, 0)
    assert "close_idle_after" in policy
    stage = schema["$defs"]["StageRetention"]["properties"]
    assert set(stage) == {"days", "keep_last"}
    assert "retention" in schema["$defs"]["Stage"]["properties"]


# --- `stageflow retention run` -----------------------------------------------------------


def retention_parser() -> argparse.ArgumentParser:
    """The command line's own parser."""
    return build_parser()


async def test_retention_run_migrates_the_record_and_prints_one_line_or_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    url = default_database_url(data)
    await upgrade(url)
    db = open_database(url)
    try:
        seeder = Seeder(db, data / "logs")
        await seeder.release(1, datetime.now(UTC) - timedelta(days=400))
        await seeder.release(2, datetime.now(UTC) - timedelta(days=1))
    finally:
        await db.close()
    parser = retention_parser()

    dry = parser.parse_args(["retention", "run", "--dry-run", "--data-dir", str(data)])
    assert await cmd_retention(dry, settings_from(dry)) == 0
    assert capsys.readouterr().out == (
        "retention: would delete 1 release (0 deployments, 0 log files)\n"
    )
    real = parser.parse_args(["--data-dir", str(data), "retention", "run", "--json"])
    assert await cmd_retention(real, settings_from(real)) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["releases"], printed["dry_run"]) == (1, False)

    fresh = parser.parse_args(["retention", "run", "--data-dir", str(tmp_path / "new")])
    assert await cmd_retention(fresh, settings_from(fresh)) == 0  # an empty data dir: migrated
    assert "deleted 0 releases" in capsys.readouterr().out


async def test_retention_run_names_a_record_it_cannot_reach(tmp_path: Path) -> None:
    args = retention_parser().parse_args(["retention", "run", "--data-dir", str(tmp_path)])
    away = f"postgresql://sf:secret@127.0.0.1:{free_port()}/stageflow"
    settings = dataclasses.replace(settings_from(args), database_url=away)
    with pytest.raises(RecordUnavailable, match="cannot apply retention to the record at") as err:
        await cmd_retention(args, settings)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_the_line_says_why_releases_past_their_age_were_kept() -> None:
    result = RetentionResult(
        releases=2, deployments=5, logs=10, kept=3, kept_deployed=1, kept_last=2
    )
    assert retention_line(result) == (
        "retention: deleted 2 releases (5 deployments, 10 log files); kept 3 past their age"
        " (1 deployed on a stage now, 2 among a stage's last deployments)"
    )


# --- the Schedule and RetentionWorkflow, on the real dev server --------------------------


async def test_the_daily_schedule_runs_retention_through_the_workflow(
    client: Client, tmp_path: Path
) -> None:
    url = default_database_url(tmp_path / "data")
    log_dir = tmp_path / "data" / "logs"
    await upgrade(url)
    db = open_database(url)
    queue = f"retention-{uuid.uuid4().hex[:8]}"
    schedule_id = f"stageflow-retention-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    seeder = Seeder(db, log_dir)
    await seeder.release(1, now - timedelta(days=800), webapp({"keep_last": 0}))
    await seeder.release(
        2,
        now - timedelta(days=800),
        webapp({"keep_last": 0}),
        deployments=(("dev", FAILED, now - timedelta(days=800)),),
    )
    await seeder.release(3, now - timedelta(days=5), webapp({"keep_last": 0}))
    handle = client.get_schedule_handle(schedule_id)
    try:
        # Two workers starting at once both ensure it; a later one leaves it as it is.
        await asyncio.gather(
            ensure_retention_schedule(client, queue, schedule_id=schedule_id),
            ensure_retention_schedule(client, queue, schedule_id=schedule_id),
        )
        await ensure_retention_schedule(client, "another-queue", schedule_id=schedule_id)
        described = await handle.describe()
        action = described.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert (action.workflow, action.task_queue) == ("RetentionWorkflow", queue)
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        (calendar,) = described.schedule.spec.calendars
        assert (calendar.hour[0].start, calendar.minute[0].start) == (3, 17)
        assert described.schedule.spec.time_zone_name == "UTC"

        async with Worker(
            client,
            task_queue=queue,
            workflows=[RetentionWorkflow],
            activities=[Retention(db, log_dir).apply_retention],
            workflow_runner=SANDBOX,
        ):
            await handle.trigger()

            async def started() -> list[Any]:
                return list((await handle.describe()).info.recent_actions)

            (run,) = await wait_for(started, timeout=30, what="the schedule to start its run")
            workflow_id = run.action.workflow_id
            result = await client.get_workflow_handle(
                workflow_id, result_type=RetentionResult
            ).result()
            assert (result.releases, result.deployments, result.logs) == (2, 1, 2)
            assert await numbers(db) == [3]
            assert files(log_dir) == []
            # Started by hand, with its one input model: nothing more to delete.
            again = await client.execute_workflow(
                RetentionWorkflow.run,
                RetentionInput(dry_run=True),
                id=f"{schedule_id}-by-hand",
                task_queue=queue,
            )
        assert (again.dry_run, again.releases) == (True, 0)
    finally:
        with contextlib.suppress(RPCError):
            await handle.delete()
        await db.close()
