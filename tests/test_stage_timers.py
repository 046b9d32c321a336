"""Every timer path of a StageWorkflow on the time-skipping test server: approval
timeout, deferral, gates (delay, interval, min success, timeout), a schedule
across a DST change, a freeze window, manual intervention timeouts.

The control activities and an agent run in this process, on this test's queues;
tasks are real subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.agent import AgentActivities
from activities.calendar import plan_start
from activities.gate_checks import check_http, run_check
from activities.log_store import DirectoryLogStore
from activities.notify import Notifier, SmtpSettings
from activities.record import default_database_url, record_release
from activities.record.recorder import Recorder
from tests.conftest import wait_for
from worker.control import SANDBOX, WORKFLOWS
from workflows.approval_policy import Decision
from workflows.names import agent_queue, pool_queue
from workflows.pipeline import Pipeline
from workflows.release import ReleaseSpec, StageAttempt, StageStatus, TaskStatus
from workflows.stage_workflow import StageInput, StageWorkflow


@dataclass
class TimerWorld:
    env: WorkflowEnvironment
    queue: str
    pool: str
    root: Path
    recorder: Recorder

    async def start(
        self, stage: dict[str, Any], **pipeline: Any
    ) -> WorkflowHandle[StageWorkflow, StageAttempt]:
        stage = {"name": "prod", "pool": self.pool, **stage}
        definition = Pipeline.model_validate({"name": "timers", "stages": [stage], **pipeline})
        spec = ReleaseSpec(
            pipeline=definition,
            number=1,
            name="Release-1",
            created_by="carol",
            created_at=datetime.now(UTC),
            revision="0" * 64,
        )
        # The release's row, as its ReleaseWorkflow would have written it first.
        await record_release(await self.recorder.database(), spec, version=1)
        return await self.env.client.start_workflow(
            StageWorkflow.run,
            StageInput(spec=spec, stage="prod", attempt=1, triggered_by="carol", reason="test"),
            id=f"release/timers-{self.queue}/1/prod/1",
            task_queue=self.queue,
        )

    async def now(self) -> datetime:
        return (await self.env.get_current_time()).astimezone(UTC)


@pytest.fixture
async def world(time_skipping: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[TimerWorld]:
    queue = f"timers-{uuid.uuid4().hex[:6]}"
    pool = f"pool-{queue}"
    client = time_skipping.client
    agent = AgentActivities(
        client,
        agent_id=f"agent-{queue}",
        agent_name="a1",
        work_dir=tmp_path / "agent",
        log_store=DirectoryLogStore(tmp_path / "logs"),
        base_env={"PATH": "/usr/bin:/bin"},
        data_dir=tmp_path,
    )
    notifier = Notifier(SmtpSettings(), tmp_path / "outbox")
    recorder = Recorder(default_database_url(tmp_path))
    workers = [
        Worker(
            client,
            task_queue=queue,
            workflows=WORKFLOWS,
            workflow_runner=SANDBOX,
            activities=[plan_start, check_http, notifier.send_notification, recorder.record],
        ),
        Worker(client, task_queue=pool_queue(pool), activities=[agent.lease_agent, run_check]),
        Worker(
            client,
            task_queue=agent_queue(f"agent-{queue}"),
            activities=[agent.download_artifacts, agent.run_task, agent.ship_logs, agent.cleanup],
        ),
    ]
    async with workers[0], workers[1], workers[2]:
        yield TimerWorld(time_skipping, queue, pool, tmp_path, recorder)
    await recorder.close()


async def status_is(
    handle: WorkflowHandle[StageWorkflow, StageAttempt], status: StageStatus
) -> StageAttempt:
    async def reached() -> StageAttempt | None:
        progress = await handle.query(StageWorkflow.progress)
        return progress if progress.status == status else None

    return await wait_for(reached, what=f"status {status.value}")


async def finish(handle: WorkflowHandle[StageWorkflow, StageAttempt]) -> StageAttempt:
    """The result, with time skipping; a stuck deployment fails the test with its state."""
    try:
        return await asyncio.wait_for(handle.result(), timeout=90)
    except TimeoutError:
        progress = await handle.query(StageWorkflow.progress)
        raise AssertionError(
            f"the deployment did not finish: {progress.model_dump_json()}"
        ) from None


ECHO = [{"name": "deploy", "script": "echo deployed at $STAGEFLOW_STAGE"}]


async def test_approval_timeout_rejects_and_runs_nothing(world: TimerWorld) -> None:
    handle = await world.start(
        {
            "tasks": ECHO,
            "pre_deployment": {"approvals": {"approvers": ["alice"], "timeout": "3d"}},
        }
    )
    await status_is(handle, StageStatus.WAITING_FOR_APPROVAL)
    result = await finish(handle)
    assert result.status == StageStatus.REJECTED
    assert result.message == "pre-deployment approval timed out after 3d"
    assert result.tasks[0].status == TaskStatus.SKIPPED
    assert result.approvals[0].status == "timed_out"
    # The deployment's own times: the approval's timer began after the deployment did.
    assert result.ended_at is not None
    assert timedelta(days=3) <= result.ended_at - result.started_at < timedelta(days=3, minutes=5)


async def test_deferral_holds_the_deployment_until_the_time_then_deploys(world: TimerWorld) -> None:
    handle = await world.start(
        {
            "tasks": ECHO,
            "pre_deployment": {"approvals": {"approvers": ["alice", "bob"], "policy": "any"}},
        }
    )
    await status_is(handle, StageStatus.WAITING_FOR_APPROVAL)
    defer_until = (await world.now() + timedelta(days=2)).replace(microsecond=0)
    accepted = await handle.execute_update(
        StageWorkflow.approve, Decision(by="alice", defer_until=defer_until)
    )
    assert accepted.outcome == "accepted" and "deferred until" in accepted.detail
    deferred = await status_is(handle, StageStatus.DEFERRED)
    assert deferred.waiting_until == defer_until
    # Another approver cannot cut the deferral short by approving again: the answer says why.
    refused = await handle.execute_update(StageWorkflow.approve, Decision(by="bob"))
    assert (refused.outcome, refused.detail) == (
        "refused",
        "the pre-deployment approval is not pending (approved)",
    )
    result = await finish(handle)
    assert result.status == StageStatus.SUCCEEDED
    assert result.tasks[0].started_at is not None and result.tasks[0].started_at >= defer_until
    assert [e.outcome for e in result.events if e.actor == "bob"] == ["refused"]


class Health:
    """An HTTP health endpoint that turns healthy after `unhealthy_first` requests."""

    def __init__(self, unhealthy_first: int) -> None:
        self.requests = 0
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                health.requests += 1
                ok = health.requests > unhealthy_first
                body = b'{"status": "ok"}' if ok else b'{"status": "degraded"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/health"

    def __enter__(self) -> Health:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def gates(url: str, **timing: str) -> dict[str, Any]:
    return {
        "gates": {
            **timing,
            "checks": [
                {
                    "name": "health",
                    "http": {"url": url, "expect_json": {"path": "status", "equals": "ok"}},
                }
            ],
        }
    }


async def test_gates_pass_after_healthy_for_min_success_duration(world: TimerWorld) -> None:
    with Health(unhealthy_first=3) as health:
        handle = await world.start(
            {
                "tasks": ECHO,
                "pre_deployment": gates(
                    health.url, delay="10m", interval="5m", min_success_duration="15m", timeout="2h"
                ),
            }
        )
        started = await world.now()
        result = await finish(handle)
    assert result.status == StageStatus.SUCCEEDED
    [state] = result.gates
    assert state.status == "passed"
    healthy = [e.results[0].healthy for e in state.evaluations]
    # 3 unhealthy samples, then healthy at +0, +5, +10, +15 minutes of the window.
    assert healthy == [False, False, False, True, True, True, True]
    assert "status is 'degraded'" in state.evaluations[0].results[0].reason
    first, last = state.evaluations[0].time, state.evaluations[-1].time
    assert first - started >= timedelta(minutes=10)  # the delay
    # Six intervals (plus the few real milliseconds each evaluation takes).
    assert timedelta(minutes=30) <= last - first < timedelta(minutes=31)
    assert result.tasks[0].started_at is not None and result.tasks[0].started_at >= last


async def test_gates_that_never_pass_time_out_and_reject(world: TimerWorld) -> None:
    with Health(unhealthy_first=10_000) as health:
        handle = await world.start(
            {
                "tasks": ECHO,
                "pre_deployment": gates(health.url, interval="15m", timeout="1h"),
            }
        )
        result = await finish(handle)
    assert result.status == StageStatus.REJECTED
    assert result.message == "pre-deployment gates timed out after 1h (unhealthy: health)"
    [state] = result.gates
    assert state.status == "timed_out" and state.evaluation_count == 5  # 0, 15, 30, 45, 60 min
    assert result.tasks[0].status == TaskStatus.SKIPPED


def next_spring_forward(after: datetime, zone: str = "Europe/Berlin") -> datetime:
    """The UTC midnight of the next day on which `zone` moves its clocks forward."""
    tz = ZoneInfo(zone)
    day = after.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for _ in range(400):
        day += timedelta(days=1)
        before = (day - timedelta(hours=1)).astimezone(tz).utcoffset()
        later = (day + timedelta(hours=23)).astimezone(tz).utcoffset()
        if before is not None and later is not None and later > before:
            return day
    raise AssertionError("no DST change within a year")


async def test_schedule_across_a_dst_change_starts_at_local_0300(world: TimerWorld) -> None:
    dst_day = next_spring_forward(await world.now())
    # Two days before the change, at noon UTC (a Friday or so): skip there first.
    await world.env.sleep(dst_day - timedelta(days=2) + timedelta(hours=12) - await world.now())
    weekday = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][dst_day.weekday()]
    handle = await world.start(
        {
            "tasks": ECHO,
            "schedule": {"days": [weekday], "time": "03:00", "timezone": "Europe/Berlin"},
        }
    )
    scheduled = await status_is(handle, StageStatus.SCHEDULED)
    # 03:00 local on the change day is summer time already: 01:00 UTC, not 02:00 UTC.
    expected = dst_day + timedelta(hours=1)
    assert scheduled.waiting_until == expected
    assert "Europe/Berlin" in scheduled.waiting_reason
    result = await finish(handle)
    assert result.status == StageStatus.SUCCEEDED
    started = result.tasks[0].started_at
    assert started is not None and expected <= started < expected + timedelta(minutes=5)


async def test_no_deployment_starts_inside_a_freeze(world: TimerWorld) -> None:
    now = await world.now()
    friday = (now + timedelta(days=(4 - now.weekday()) % 7 or 7)).replace(
        hour=20, minute=0, second=0, microsecond=0
    )
    await world.env.sleep(friday - now)
    handle = await world.start(
        {
            "tasks": ECHO,
            "freezes": [{"cron": "0 18 * * fri", "duration": "62h", "timezone": "UTC"}],
        }
    )
    frozen = await status_is(handle, StageStatus.SCHEDULED)
    monday_8 = friday.replace(hour=8) + timedelta(days=3)
    assert frozen.waiting_until == monday_8
    assert "freeze '0 18 * * fri'" in frozen.waiting_reason
    result = await finish(handle)
    started = result.tasks[0].started_at
    assert result.status == StageStatus.SUCCEEDED and started is not None and started >= monday_8


@pytest.mark.parametrize("on_timeout", ["reject", "resume"])
async def test_manual_intervention_timeout_does_what_on_timeout_says(
    world: TimerWorld, on_timeout: str
) -> None:
    handle = await world.start(
        {
            "tasks": [
                {
                    "name": "check dashboard",
                    "manual_intervention": {
                        "instructions": "Look at the error rate",
                        "timeout": "1d",
                        "on_timeout": on_timeout,
                    },
                },
                {"name": "deploy", "script": "echo deployed"},
            ],
        }
    )
    waiting = await status_is(handle, StageStatus.WAITING_FOR_INTERVENTION)
    assert waiting.waiting_reason == "Look at the error rate"
    result = await finish(handle)
    intervention, deploy = result.tasks
    if on_timeout == "reject":
        assert result.status == StageStatus.REJECTED
        assert "manual intervention 'check dashboard' rejected by stageflow" in result.message
        assert deploy.status == TaskStatus.SKIPPED
    else:
        assert result.status == StageStatus.SUCCEEDED
        assert intervention.message.startswith("resume by stageflow: timed out after 1d")
        assert deploy.status == TaskStatus.SUCCEEDED


async def test_resume_continues_a_manual_intervention_by_update_or_old_signal(
    world: TimerWorld,
) -> None:
    handle = await world.start(
        {
            "tasks": [
                {
                    "name": "check",
                    "manual_intervention": {
                        "instructions": "ok?",
                        "approvers": ["alice"],
                        "timeout": "1d",
                    },
                },
                {"name": "deploy", "script": "echo deployed"},
            ],
        }
    )
    await status_is(handle, StageStatus.WAITING_FOR_INTERVENTION)
    refused = await handle.execute_update(
        StageWorkflow.resume, Decision(by="mallory", request_id="r1")
    )
    assert refused.outcome == "refused" and "mallory may not decide" in refused.detail
    # The signal releases started before updates were sent still decides.
    await handle.signal(
        StageWorkflow.resume_signal, Decision(by="alice", comment="looks fine", request_id="r2")
    )
    result = await finish(handle)
    assert result.status == StageStatus.SUCCEEDED
    verdicts = {e.request_id: (e.actor, e.outcome) for e in result.events}
    assert verdicts == {"r1": ("mallory", "refused"), "r2": ("alice", "accepted")}
    assert asyncio.iscoroutinefunction(plan_start)


async def test_schedule_approval_gate_and_intervention_in_one_deployment(world: TimerWorld) -> None:
    """Every kind of wait in one deployment, decided by updates; its history is recorded
    (STAGEFLOW_RECORD_HISTORIES=1) so later workflow changes must replay it."""
    with Health(unhealthy_first=1) as health:
        handle = await world.start(
            {
                "schedule": {"time": "03:00"},
                "pre_deployment": {
                    "approvals": {"approvers": ["alice", "bob"], "policy": "sequence"},
                    **gates(health.url, interval="10m"),
                },
                "tasks": [
                    {
                        "name": "look",
                        "manual_intervention": {"instructions": "ok?", "approvers": ["alice"]},
                    },
                    *ECHO,
                ],
            },
            users={"alice": {"email": "alice@example.test"}, "bob": {"email": "bob@example.test"}},
        )
        scheduled = await status_is(handle, StageStatus.SCHEDULED)
        assert scheduled.waiting_until is not None
        await world.env.sleep(scheduled.waiting_until - await world.now())
        await status_is(handle, StageStatus.WAITING_FOR_APPROVAL)
        for user in ("alice", "bob"):
            verdict = await handle.execute_update(StageWorkflow.approve, Decision(by=user))
            assert verdict.outcome == "accepted", verdict
        await status_is(handle, StageStatus.EVALUATING_GATES)
        await world.env.sleep(timedelta(minutes=11))  # the second sample is healthy
        await status_is(handle, StageStatus.WAITING_FOR_INTERVENTION)
        verdict = await handle.execute_update(StageWorkflow.resume, Decision(by="alice"))
        assert verdict.outcome == "accepted", verdict
        result = await finish(handle)
    assert result.status == StageStatus.SUCCEEDED
    assert [g.status for g in result.gates] == ["passed"]
    assert result.gates[0].evaluation_count == 2
    assert [(t.task, t.status) for t in result.tasks] == [
        ("look", "succeeded"),
        ("deploy", "succeeded"),
    ]
    # Under `sequence` bob is mailed when his turn comes: two approval mails, one each.
    mails = sorted((world.root / "outbox").glob("*.eml"))
    approval_mails = [m for m in mails if "Approve" in m.read_text()]
    assert len(approval_mails) == 2
    if os.environ.get("STAGEFLOW_RECORD_HISTORIES"):
        history = await handle.fetch_history()
        data = {"workflow_id": history.workflow_id, **json.loads(history.to_json())}
        path = Path(__file__).parent / "histories" / "conditions-0-StageWorkflow.json"
        path.write_text(json.dumps(data, indent=1))
