"""The record's read figures: `release list` (activities.record.releases) with 1,000 and
10,000 recorded releases, seeded through the write API (not real runs).

    python -m bench.record                      # SQLite in a temp dir
    python -m bench.record --postgres           # a throwaway PostgreSQL cluster
    python -m bench.record --url URL --sizes 1000,10000

Each figure is the median of --rounds calls, server-side (in-process, warm
engine): what `release list` costs the API or the CLI, without start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from activities.record import (
    Database,
    default_database_url,
    open_database,
    record_attempt,
    record_events,
    record_release,
    release,
    releases,
    releases_waiting_on,
    safe_url,
    status_matrix,
    upgrade,
)
from workflows.approval_policy import ApprovalState
from workflows.audit import SYSTEM, AuditEvent
from workflows.pipeline import Pipeline
from workflows.release import (
    ReleaseSpec,
    ResolvedArtifact,
    StageAttempt,
    StageStatus,
    TaskRun,
    TaskStatus,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
RESULTS = Path(__file__).resolve().parent / "results"


def bench_pipeline(name: str = "bench") -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": name,
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
                    "pre_deployment": {"approvals": {"approvers": ["alice", "bob"]}},
                },
                {
                    "name": "prod",
                    "trigger": "manual",
                    "pool": "linux",
                    "tasks": [{"name": "deploy", "script": "d.sh"}],
                },
            ],
        }
    )


async def seed_releases(
    db: Database,
    count: int,
    first: int = 1,
    pipelines: tuple[str, ...] = ("bench",),
    concurrency: int = 1,
) -> None:
    """Record `count` releases (numbers `first`…) through the write API, round-robin over
    `pipelines`: dev succeeded; qa succeeded, or waiting for approval (one in ten), or
    failed (one in twenty); prod succeeded for one in five; the release's trail too.
    `concurrency` writers at once, as several workflows' record activities would."""
    definitions = {name: bench_pipeline(name) for name in pipelines}
    numbers = range(first, first + count)

    async def writer(share: range) -> None:
        for number in share:
            await _seed_one(db, definitions[pipelines[number % len(pipelines)]], number)

    await asyncio.gather(*(writer(numbers[k::concurrency]) for k in range(concurrency)))


async def _seed_one(db: Database, pipeline: Pipeline, number: int) -> None:
    created = EPOCH + timedelta(minutes=number)
    spec = ReleaseSpec(
        pipeline=pipeline,
        number=number,
        name=f"Release-{number}",
        artifacts=[
            ResolvedArtifact(
                alias="app", type="local", version=f"1.0.{number}", source="/drops/app"
            )
        ],
        created_by=("alice", "bob", "carol")[number % 3],
        created_at=created,
        revision=f"{number // 100:064x}",
    )
    await record_release(db, spec, version=1)
    dev = _attempt(pipeline.name, number, "dev", StageStatus.SUCCEEDED, created, 1)
    await record_attempt(db, pipeline.name, number, "dev", dev, 2)
    if number % 10 == 0:
        qa_status = StageStatus.WAITING_FOR_APPROVAL
    elif number % 20 == 1:
        qa_status = StageStatus.FAILED
    else:
        qa_status = StageStatus.SUCCEEDED
    qa = _attempt(pipeline.name, number, "qa", qa_status, created + timedelta(minutes=5), 2)
    await record_attempt(db, pipeline.name, number, "qa", qa, 3)
    if number % 5 == 0 and qa_status == StageStatus.SUCCEEDED:
        prod = _attempt(
            pipeline.name,
            number,
            "prod",
            StageStatus.SUCCEEDED,
            created + timedelta(hours=1),
            1,
        )
        await record_attempt(db, pipeline.name, number, "prod", prod, 4)
    await record_events(
        db,
        pipeline.name,
        number,
        [
            AuditEvent(time=created, actor=spec.created_by, action="create"),
            AuditEvent(
                time=created + timedelta(minutes=5),
                actor=SYSTEM,
                action="stage succeeded",
                stage="dev",
                detail="attempt 1",
            ),
        ],
    )


def _attempt(
    pipeline: str, number: int, stage: str, status: StageStatus, started: datetime, tasks: int
) -> StageAttempt:
    ended = started + timedelta(minutes=4) if status.is_final else None
    waiting = status == StageStatus.WAITING_FOR_APPROVAL
    return StageAttempt(
        attempt=1,
        status=status,
        workflow_id=f"release/{pipeline}/{number}/{stage}/1",
        triggered_by="alice",
        reason="after release",
        started_at=started,
        ended_at=ended,
        tasks=[
            TaskRun(
                job="job",
                task=f"task-{index}",
                status=TaskStatus.PENDING if waiting else TaskStatus.SUCCEEDED,
                exit_code=None if waiting else 0,
                tries=0 if waiting else 1,
                duration=None if waiting else timedelta(seconds=3),
                log=None if waiting else f"{pipeline}/{number}/{stage}/1/job/{index:02}.log",
                logs=[] if waiting else [f"{pipeline}/{number}/{stage}/1/job/{index:02}.log"],
            )
            for index in range(1, tasks + 1)
        ],
        approvals=(
            [
                ApprovalState(
                    phase="pre",
                    policy="any",
                    approvers=["alice", "bob"],
                    status="pending" if waiting else "approved",
                    done_entries=[] if waiting else [0, 1],
                )
            ]
            if stage == "qa"
            else []
        ),
    )


async def _median_ms(call: Callable[[], Awaitable[Any]], rounds: int) -> float:
    await call()  # warm: plans cached, pages in memory
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def run(url: str, sizes: list[int], rounds: int, writers: int = 1) -> list[dict[str, Any]]:
    await upgrade(url)
    db = open_database(url)
    figures = []
    try:
        seeded = 0
        for size in sorted(sizes):
            started = time.perf_counter()
            await seed_releases(db, size - seeded, first=seeded + 1, concurrency=writers)
            seeding = time.perf_counter() - started
            seeded = size
            middle = size // 2
            row = {
                "releases": size,
                "seed_s": round(seeding, 1),
                "list_ms": await _median_ms(lambda: releases(db), rounds),
                "list_pipeline_ms": await _median_ms(
                    lambda: releases(db, pipeline="bench"), rounds
                ),
                "list_waiting_ms": await _median_ms(lambda: releases(db, status="waiting"), rounds),
                "list_stage_status_ms": await _median_ms(
                    lambda: releases(db, stage_status="failed"), rounds
                ),
                "list_page_50_ms": await _median_ms(partial(releases, db, offset=middle), rounds),
                "show_ms": await _median_ms(partial(release, db, "bench", middle), rounds),
                "waiting_on_ms": await _median_ms(lambda: releases_waiting_on(db, "bob"), rounds),
                "status_matrix_ms": await _median_ms(lambda: status_matrix(db, "bench"), rounds),
            }
            figures.append(row)
            print(
                "  ".join(
                    f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in row.items()
                ),
                flush=True,
            )
    finally:
        await db.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.record", description=__doc__)
    parser.add_argument("--url", help="the record's URL (default: SQLite in a temp dir)")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL")
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--writers", type=int, default=4, help="concurrent seeding writers")
    parser.add_argument(
        "--out", type=Path, help="write the figures as JSON here (default bench/results/)"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="stageflow-bench-record-") as temp:
        cluster = None
        if args.postgres:
            from tests.postgres import start_cluster

            cluster = start_cluster()
            url = asyncio.run(cluster.new_database())
        else:
            url = args.url or default_database_url(Path(temp))
        try:
            print(f"record: {safe_url(url)}, release list default page (50 rows)", flush=True)
            figures = asyncio.run(run(url, sizes, args.rounds, args.writers))
            kind = "postgresql" if args.postgres or url.startswith("postgresql") else "sqlite"
            out = args.out or RESULTS / f"record-{kind}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps(
                    {
                        "database": kind,
                        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "rounds": args.rounds,
                        "figures": figures,
                    },
                    indent=1,
                )
            )
            print(f"results: {out}", flush=True)
        finally:
            if cluster is not None:
                cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
