"""The core engine end to end: real dev server, control worker and agents as processes,
real subprocess tasks, logs in the log store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from temporalio.client import Client

from starter.releases import request_deploy
from tests.conftest import Stack, wait_for
from workflows.release import ReleaseStatus, StageStatus, TaskStatus

HISTORIES = Path(__file__).parent / "histories"

THREE_STAGES = """
    name: shop-{suffix}
    variables:
      TARGET: {target}
    artifacts:
      - alias: app
        type: local
        path: ./drop
    stages:
      - name: dev
        pool: POOL
        variables: {{PORT: 8001}}
        tasks:
          - name: install
            script: |
              mkdir -p "$TARGET/$STAGEFLOW_STAGE"
              cp -r "$STAGEFLOW_ARTIFACTS/app/." "$TARGET/$STAGEFLOW_STAGE/"
              echo "installed $(cat $STAGEFLOW_ARTIFACTS/app/VERSION) on port $PORT"
          - name: smoke test
            shell: python
            script: |
              import os
              print("version", open(os.environ["TARGET"] + "/dev/VERSION").read().strip())
              print("release", os.environ["STAGEFLOW_RELEASE"], os.environ["STAGEFLOW_RELEASE_NUMBER"])
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks:
          - name: install
            script: cp -r "$STAGEFLOW_ARTIFACTS/app/." "$TARGET/qa/" 2>/dev/null || (mkdir -p "$TARGET/qa" && cp -r "$STAGEFLOW_ARTIFACTS/app/." "$TARGET/qa/"); echo qa done
      - name: prod
        trigger: {{after_stages: [qa]}}
        pool: POOL
        tasks:
          - name: install
            script: mkdir -p "$TARGET/prod" && cp -r "$STAGEFLOW_ARTIFACTS/app/." "$TARGET/prod/" && echo prod attempt $STAGEFLOW_ATTEMPT
"""


def make_drop(root: Path, version: str = "1.0.0") -> None:
    folder = root / "drop" / version
    folder.mkdir(parents=True)
    (folder / "VERSION").write_text(version + "\n")
    (folder / "app.py").write_text("print('hello')\n")


def statuses(status: ReleaseStatus) -> dict[str, str]:
    return {view.name: view.status.value for view in status.stages}


def task(status: ReleaseStatus, stage: str, name: str):  # type: ignore[no-untyped-def]
    latest = status.stage(stage).latest
    assert latest is not None, f"{stage} was never deployed"
    return next(run for run in latest.tasks if run.task == name)


async def replay_release(
    client: Client, status: ReleaseStatus, record_as: str | None = None
) -> None:
    """Replay every workflow history of a release with today's workflow code."""
    from temporalio.worker import Replayer

    from worker.control import SANDBOX, WORKFLOWS

    ids = [f"pipeline/{status.pipeline}", f"release/{status.pipeline}/{status.number}"]
    ids += [a.workflow_id for view in status.stages for a in view.attempts]
    histories = [await client.get_workflow_handle(i).fetch_history() for i in ids]
    replayer = Replayer(
        workflows=WORKFLOWS, workflow_runner=SANDBOX, data_converter=client.data_converter
    )
    for history in histories:
        await replayer.replay_workflow(history)
    if record_as and os.environ.get("STAGEFLOW_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        for index, history in enumerate(histories):
            kind = history.events[0].workflow_execution_started_event_attributes.workflow_type.name
            path = HISTORIES / f"{record_as}-{index}-{kind}.json"
            path.write_text(json.dumps(json.loads(history.to_json()), indent=1))


@pytest.mark.e2e
async def test_three_stage_release_deploys_files_and_keeps_each_task_log(stack: Stack) -> None:
    make_drop(stack.root)
    target = stack.root / "srv"
    pipeline = stack.write_pipeline(THREE_STAGES.format(suffix=stack.suffix, target=target))
    await stack.start_worker()
    await stack.start_agent("a1")

    started = time.monotonic()
    ref, created = await stack.create(pipeline)
    status = await stack.wait_settled(ref)
    elapsed = time.monotonic() - started
    print(f"\nthree-stage release, create to settled: {elapsed:.2f}s")

    assert created.name == "Release-1"
    assert statuses(status) == {"dev": "succeeded", "qa": "succeeded", "prod": "succeeded"}
    for stage in ("dev", "qa", "prod"):
        assert (target / stage / "VERSION").read_text() == "1.0.0\n"
    assert "installed 1.0.0 on port 8001" in stack.log_text(task(status, "dev", "install").log)
    smoke = stack.log_text(task(status, "dev", "smoke test").log)
    assert "version 1.0.0" in smoke and "release Release-1 1" in smoke
    assert "prod attempt 1" in stack.log_text(task(status, "prod", "install").log)
    assert status.stage("qa").latest.reason == "after dev"  # type: ignore[union-attr]
    await replay_release(stack.client, status, record_as="three-stages")


FAILURES = """
    name: fail-{suffix}
    variables:
      DIR: {dir}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: flaky
            retries: 2
            script: |
              n=$(cat "$DIR/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$DIR/count"
              echo "try $n"; [ "$n" -ge 3 ]
          - name: optional lint
            continue_on_error: true
            script: echo lint warnings; exit 3
      - name: qa
        trigger: {{after_stages: [dev], when_partially_succeeded: true}}
        pool: POOL
        tasks:
          - name: migrate
            script: echo migrating; test -f "$DIR/fixed"
          - name: never runs
            script: echo should not run
          - name: on failure
            condition: failed
            script: echo rolling back
          - name: clean up
            condition: always
            script: echo cleaned > "$DIR/cleaned"
      - name: prod
        trigger: {{after_stages: [qa]}}
        pool: POOL
        tasks: [{{name: deploy, script: "echo prod"}}]
"""


@pytest.mark.e2e
async def test_failing_task_fails_stage_then_redeploy_after_fix_succeeds(stack: Stack) -> None:
    pipeline = stack.write_pipeline(FAILURES.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)
    status = await stack.wait_settled(ref)

    assert statuses(status) == {
        "dev": "partially_succeeded",
        "qa": "failed",
        "prod": "not_deployed",
    }
    flaky = task(status, "dev", "flaky")
    assert (flaky.status, flaky.tries) == (TaskStatus.SUCCEEDED, 3)
    assert "try 3" in stack.log_text(flaky.log)
    lint = task(status, "dev", "optional lint")
    assert (lint.status, lint.exit_code) == (TaskStatus.FAILED, 3)
    assert task(status, "qa", "migrate").status == TaskStatus.FAILED
    assert task(status, "qa", "never runs").status == TaskStatus.SKIPPED
    assert "rolling back" in stack.log_text(task(status, "qa", "on failure").log)
    assert (stack.root / "cleaned").read_text() == "cleaned\n"

    (stack.root / "fixed").touch()
    await request_deploy(stack.client, ref, "qa", "tester", redeploy=True)

    async def qa_attempt_2_done() -> ReleaseStatus | None:
        current = await stack.status(ref)
        qa = current.stage("qa")
        return (
            current
            if len(qa.attempts) == 2
            and qa.status.is_final
            and current.stage("prod").status.is_final
            else None
        )

    status = await wait_for(qa_attempt_2_done, what="qa attempt 2 and prod")
    qa = status.stage("qa")
    assert [a.status for a in qa.attempts] == [StageStatus.FAILED, StageStatus.SUCCEEDED]
    assert qa.attempts[1].triggered_by == "tester" and qa.attempts[1].reason == "redeploy"
    assert status.stage("prod").status == StageStatus.SUCCEEDED
    await replay_release(stack.client, status, record_as="failure-redeploy")
