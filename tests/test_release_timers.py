"""ReleaseWorkflow timers on the time-skipping test server: retention, abandon."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.record import default_database_url, history, release
from activities.record.recorder import Recorder
from worker.control import SANDBOX, WORKFLOWS
from workflows.pipeline import Pipeline
from workflows.release import AbandonRequest, DeployRequest, ReleaseSpec
from workflows.release_workflow import ReleaseInput, ReleaseWorkflow


def manual_release(retention: str = "2h") -> ReleaseSpec:
    pipeline = Pipeline.model_validate(
        {
            "name": "timers",
            "retention": retention,
            "stages": [
                {
                    "name": "dev",
                    "trigger": "manual",
                    "pool": "none",
                    "tasks": [{"name": "t", "script": "true"}],
                },
                {
                    "name": "prod",
                    "trigger": {"after_stages": ["dev"]},
                    "pool": "none",
                    "tasks": [{"name": "t", "script": "true"}],
                },
            ],
        }
    )
    return ReleaseSpec(
        pipeline=pipeline,
        number=1,
        name="Release-1",
        created_by="alice",
        created_at=datetime.now(UTC),
        revision="0" * 64,
    )


def control(env: WorkflowEnvironment, queue: str, recorder: Recorder) -> Worker:
    return Worker(
        env.client,
        task_queue=queue,
        workflows=WORKFLOWS,
        workflow_runner=SANDBOX,
        activities=[recorder.record],
    )


async def test_idle_release_closes_when_its_retention_passes(
    time_skipping: WorkflowEnvironment, tmp_path: Path
) -> None:
    queue = f"timers-{uuid.uuid4().hex[:6]}"
    recorder = Recorder(default_database_url(tmp_path))
    async with control(time_skipping, queue, recorder):
        handle = await time_skipping.client.start_workflow(
            ReleaseWorkflow.run,
            ReleaseInput(spec=manual_release("2h")),
            id=f"release/timers/{queue}",
            task_queue=queue,
        )
        result = await handle.result()
        events = await handle.query(ReleaseWorkflow.history)
    # The trail's own times: the server's clock may skip on once the workflow has ended.
    waited = events[-1].time - events[0].time
    assert result.state == "closed" and result.status == "closed"
    assert timedelta(hours=2) <= waited < timedelta(hours=2, minutes=1)
    assert [e.action for e in events] == ["create", "close"]
    assert events[-1].detail == "retention passed with no activity"
    # The workflow closes only once its end is in the record.
    db = await recorder.database()
    recorded = await release(db, "timers", 1)
    assert recorded is not None and (recorded.state, recorded.status) == ("closed", "closed")
    assert await history(db, "timers", 1) == events
    await recorder.close()


async def test_abandon_closes_the_release_and_refuses_later_deploys(
    time_skipping: WorkflowEnvironment, tmp_path: Path
) -> None:
    queue = f"timers-{uuid.uuid4().hex[:6]}"
    # Both signals wait for the worker, so the release sees them in one go.
    handle = await time_skipping.client.start_workflow(
        ReleaseWorkflow.run,
        ReleaseInput(spec=manual_release("30d")),
        id=f"release/timers/{queue}",
        task_queue=queue,
    )
    # The signals releases started before updates were sent: still taken.
    await handle.signal(
        ReleaseWorkflow.abandon_signal, AbandonRequest(by="bob", reason="bad build")
    )
    await handle.signal(ReleaseWorkflow.deploy_signal, DeployRequest(stage="dev", by="carol"))
    recorder = Recorder(default_database_url(tmp_path))
    async with control(time_skipping, queue, recorder):
        result = await handle.result()
        events = await handle.query(ReleaseWorkflow.history)
    assert result.state == "abandoned"
    assert all(view.status == "not_deployed" for view in result.stages)
    refused = next(e for e in events if e.action == "deploy")
    assert (refused.actor, refused.outcome, refused.detail) == (
        "carol",
        "refused",
        "the release is abandoned",
    )
    abandon = next(e for e in events if e.action == "abandon")
    assert (abandon.actor, abandon.detail) == ("bob", "bad build")
