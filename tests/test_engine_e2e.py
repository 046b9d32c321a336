"""The core engine end to end: real dev server, control worker and agents as processes,
real subprocess tasks, logs in the log store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError

from activities.pipeline_loader import InvalidPipeline
from starter.releases import ReleaseRef, deploy_stage
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
            data = {"workflow_id": history.workflow_id, **json.loads(history.to_json())}
            path.write_text(json.dumps(data, indent=1))


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
    await deploy_stage(stack.client, ref, "qa", "tester", redeploy=True)

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


MANUAL_AND_UNTIL = """
    name: gated-{suffix}
    stages:
      - name: dev
        pool: POOL
        tasks: [{{name: dev, script: "echo dev"}}]
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks: [{{name: qa, script: "echo qa"}}]
      - name: prod
        trigger: {{after_stages: [qa]}}
        pool: POOL
        tasks: [{{name: prod, script: "echo prod"}}]
      - name: hotfix-check
        trigger: manual
        pool: POOL
        tasks: [{{name: check, script: "echo checked by $STAGEFLOW_STAGE"}}]
"""


@pytest.mark.e2e
async def test_until_stops_before_prod_and_manual_stage_waits_for_deploy(stack: Stack) -> None:
    pipeline = stack.write_pipeline(MANUAL_AND_UNTIL.format(suffix=stack.suffix))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline, until="qa")
    status = await stack.wait_settled(ref)
    assert statuses(status) == {
        "dev": "succeeded",
        "qa": "succeeded",
        "prod": "not_deployed",
        "hotfix-check": "not_deployed",
    }

    await deploy_stage(stack.client, ref, "hotfix-check", "carol")

    async def manual_done() -> ReleaseStatus | None:
        current = await stack.status(ref)
        return current if current.stage("hotfix-check").status.is_final else None

    status = await wait_for(manual_done, what="the manual stage")
    check = status.stage("hotfix-check").latest
    assert check is not None and check.triggered_by == "carol" and check.reason == "deploy"
    assert check.status == StageStatus.SUCCEEDED
    assert status.stage("prod").status == StageStatus.NOT_DEPLOYED  # still past the target

    await deploy_stage(stack.client, ref, "prod", "carol")

    async def prod_done() -> ReleaseStatus | None:
        current = await stack.status(ref)
        return current if current.stage("prod").status.is_final else None

    status = await wait_for(prod_done, what="prod")
    assert status.stage("prod").status == StageStatus.SUCCEEDED


PARALLEL = """
    name: parallel-{suffix}
    variables: {{DIR: {dir}}}
    stages:
""" + "".join(
    f"""
      - name: s{i}
        pool: POOL
        tasks:
          - name: hold
            script: |
              echo "$STAGEFLOW_AGENT" > "$DIR/started-s{i}"
              while [ ! -f "$DIR/go" ]; do sleep 0.05; done
"""
    for i in (1, 2, 3)
)


@pytest.mark.e2e
async def test_two_agents_run_two_jobs_at_once_and_a_third_waits(stack: Stack) -> None:
    pipeline = stack.write_pipeline(PARALLEL.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    await stack.start_agent("a2")
    ref, _ = await stack.create(pipeline)

    async def two_started() -> list[Path]:
        return (
            sorted(stack.root.glob("started-*"))
            if len(list(stack.root.glob("started-*"))) >= 2
            else []
        )

    started = await wait_for(two_started, what="two jobs running")
    agents = {path.read_text().strip() for path in started}
    assert agents == {"a1", "a2"}
    status = await stack.status(ref)
    waiting = [v.name for v in status.stages if v.status == StageStatus.QUEUED]
    running = [v.name for v in status.stages if v.status == StageStatus.IN_PROGRESS]
    assert len(waiting) == 1 and len(running) == 2, statuses(status)
    assert not (stack.root / f"started-{waiting[0]}").exists()

    (stack.root / "go").touch()
    status = await stack.wait_settled(ref)
    assert set(statuses(status).values()) == {"succeeded"}


FAILOVER = """
    name: failover-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: long deploy
            script: |
              if [ -f "$DIR/killed" ]; then echo "finished on $STAGEFLOW_AGENT"; exit 0; fi
              echo $$ > "$DIR/task.pid"
              echo "$STAGEFLOW_AGENT" > "$DIR/first-agent"
              sleep 120
"""


@pytest.mark.e2e
async def test_killed_agent_job_moves_to_another_agent_and_release_succeeds(stack: Stack) -> None:
    pipeline = stack.write_pipeline(FAILOVER.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    agents = {"a1": await stack.start_agent("a1"), "a2": await stack.start_agent("a2")}
    ref, _ = await stack.create(pipeline)

    async def first_agent() -> str:
        path = stack.root / "first-agent"
        return path.read_text().strip() if path.exists() else ""

    victim = await wait_for(first_agent, what="the task to start")
    (stack.root / "killed").touch()
    killed_at = time.monotonic()
    os.kill(agents[victim].pid, signal.SIGKILL)
    try:
        status = await stack.wait_settled(ref, timeout=60)
        print(f"\nkill -9 of the agent to release settled: {time.monotonic() - killed_at:.1f}s")
    finally:
        # The killed agent's task is an orphan now: stop it by the PID it wrote.
        pid = int((stack.root / "task.pid").read_text())
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    assert status.stage("dev").status == StageStatus.SUCCEEDED
    attempt = status.stage("dev").latest
    assert attempt is not None
    assert [(s.agent, s.lost, s.try_number) for s in attempt.agents] == [
        (victim, True, 1),
        ({"a1": "a2", "a2": "a1"}[victim], False, 2),
    ]
    survivor = {"a1": "a2", "a2": "a1"}[victim]
    assert f"finished on {survivor}" in stack.log_text(task(status, "dev", "long deploy").log)
    await replay_release(stack.client, status, record_as="agent-failover")


WORKER_CRASH = """
    name: crash-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: wait for go
            script: |
              touch "$DIR/running"
              while [ ! -f "$DIR/go" ]; do sleep 0.05; done
              echo went
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks: [{{name: qa, script: "echo qa after crash"}}]
"""


@pytest.mark.e2e
async def test_killed_control_worker_is_replaced_and_the_release_finishes(stack: Stack) -> None:
    pipeline = stack.write_pipeline(WORKER_CRASH.format(suffix=stack.suffix, dir=stack.root))
    worker = await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)

    async def running() -> bool:
        return (stack.root / "running").exists()

    await wait_for(running, what="the task to start")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    (stack.root / "go").touch()
    await stack.start_worker()
    status = await stack.wait_settled(ref, timeout=90)
    assert statuses(status) == {"dev": "succeeded", "qa": "succeeded"}
    assert "went" in stack.log_text(task(status, "dev", "wait for go").log)
    assert "qa after crash" in stack.log_text(task(status, "qa", "qa").log)
    await replay_release(stack.client, status, record_as="worker-crash")


SECRETS = """
    name: secret-{suffix}
    variables:
      DB_PASSWORD: {{secret: env:SF_TEST_DB_PASSWORD}}
      API_TOKEN: {{secret: file:{token_file}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: use secrets
            script: |
              echo "password is $DB_PASSWORD"
              echo "token is $API_TOKEN and again $API_TOKEN"
              test "$DB_PASSWORD" = "hunter2-very-secret"
"""


@pytest.mark.e2e
async def test_secret_is_masked_in_the_log_and_absent_from_workflow_history(stack: Stack) -> None:
    token_file = stack.root / "token"
    token_file.write_text("tok-abc-123-xyz\n")
    pipeline = stack.write_pipeline(SECRETS.format(suffix=stack.suffix, token_file=token_file))
    await stack.start_worker()
    await stack.start_agent("a1", SF_TEST_DB_PASSWORD="hunter2-very-secret")
    ref, _ = await stack.create(pipeline)
    status = await stack.wait_settled(ref)

    assert status.stage("dev").status == StageStatus.SUCCEEDED
    log = stack.log_text(task(status, "dev", "use secrets").log)
    assert "password is ***" in log and "token is *** and again ***" in log
    assert "hunter2" not in log and "tok-abc" not in log
    for workflow_id in (
        f"release/{ref.pipeline}/{ref.number}",
        status.stage("dev").attempts[0].workflow_id,
    ):
        history: WorkflowHistory = await stack.client.get_workflow_handle(
            workflow_id
        ).fetch_history()
        text = history.to_json()
        assert "hunter2" not in text and "tok-abc" not in text
        assert "env:SF_TEST_DB_PASSWORD" in text or workflow_id.startswith("release/")


BIG_OUTPUT = """
    name: big-{suffix}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: chatty
            shell: sh  # bash runs with -o pipefail, and `yes` dies of SIGPIPE here
            script: yes "a line of build output that goes on and on" | head -c 200000000
"""


def _memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.mark.e2e
async def test_task_printing_200_mb_keeps_agent_memory_flat(stack: Stack) -> None:
    pipeline = stack.write_pipeline(BIG_OUTPUT.format(suffix=stack.suffix))
    await stack.start_worker()
    agent = await stack.start_agent("a1")
    before = _memory_kb(agent.pid, "VmRSS")
    ref, _ = await stack.create(pipeline)
    status = await stack.wait_settled(ref, timeout=120)
    peak = _memory_kb(agent.pid, "VmHWM")
    print(
        f"\nagent RSS before {before / 1024:.0f} MB, peak during 200 MB task {peak / 1024:.0f} MB"
    )

    assert status.stage("dev").status == StageStatus.SUCCEEDED
    run = task(status, "dev", "chatty")
    log = stack.data_dir / "logs" / str(run.log)
    assert log.stat().st_size >= 200_000_000
    assert peak - before < 60 * 1024, f"agent grew from {before} kB to a peak of {peak} kB"


@pytest.mark.e2e
async def test_invalid_pipeline_is_refused_before_any_workflow_starts(stack: Stack) -> None:
    pipeline = stack.write_pipeline(
        f"""
        name: broken-{stack.suffix}
        stages:
          - name: dev
            pool: POOL
            tasks:
              - name: oops
                script: echo hi
                timout: 5m
          - name: qa
            trigger: {{after_stages: [nope]}}
            pool: POOL
            tasks: [{{name: t, script: "true"}}]
        """
    )
    with pytest.raises(InvalidPipeline) as refused:
        await stack.create(pipeline)
    text = str(refused.value)
    assert "stages[0].tasks[0].timout" in text and "did you mean 'timeout'" in text
    assert f"{pipeline}:9:" in text
    count = await stack.client.count_workflows(f"WorkflowId = 'pipeline/broken-{stack.suffix}'")
    assert count.count == 0
    with pytest.raises(RPCError):
        await stack.client.get_workflow_handle(f"pipeline/broken-{stack.suffix}").describe()


@pytest.mark.e2e
async def test_release_numbers_are_sequential_and_revisions_recorded(stack: Stack) -> None:
    from workflows.pipeline_workflow import PipelineWorkflow

    pipeline = stack.write_pipeline(MANUAL_AND_UNTIL.format(suffix=stack.suffix))
    await stack.start_worker()

    results = await asyncio.gather(*(stack.create(pipeline, until="dev") for _ in range(5)))
    numbers = sorted(ref.number for ref, _ in results)
    assert numbers == [1, 2, 3, 4, 5]
    assert {created.name for _, created in results} == {f"Release-{n}" for n in numbers}
    handle = stack.client.get_workflow_handle_for(
        PipelineWorkflow.run, f"pipeline/gated-{stack.suffix}"
    )
    revisions = await handle.query(PipelineWorkflow.revisions)
    assert len(revisions) == 1 and revisions[0].author == "tester"
    assert ReleaseRef("x", 1).workflow_id == "release/x/1"


CANCEL = """
    name: cancel-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: long
            script: |
              echo $$ > "$DIR/task.pid"
              sleep 300
          - name: after
            condition: always
            script: echo should not run after a cancel
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks: [{{name: t, script: "true"}}]
"""


@pytest.mark.e2e
async def test_cancel_kills_the_running_task_and_marks_the_stage_canceled(stack: Stack) -> None:
    from starter.releases import cancel_stage

    pipeline = stack.write_pipeline(CANCEL.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)

    async def task_pid() -> int:
        path = stack.root / "task.pid"
        return int(path.read_text()) if path.exists() and path.read_text().strip() else 0

    pid = await wait_for(task_pid, what="the task to start")
    await cancel_stage(stack.client, ref, "dev", "dave")
    status = await stack.wait_settled(ref)

    assert statuses(status) == {"dev": "canceled", "qa": "not_deployed"}
    attempt = status.stage("dev").latest
    assert attempt is not None and attempt.message == "canceled by dave"
    assert task(status, "dev", "long").status == TaskStatus.CANCELED
    assert task(status, "dev", "after").status == TaskStatus.CANCELED

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.split(")")[-1].split()[0] == "Z"  # a zombie is dead (PID 1 reaps late)

    async def process_gone() -> bool:
        return gone()

    await wait_for(process_gone, what=f"task process {pid} to die")
