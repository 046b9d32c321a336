"""Guided failure end to end: a task fails on a stage with `on_failure`, the stage
waits for a person (`waiting_for_intervention`), and their choice — retry (a new try
with its own log), skip (partially succeeded) or fail — or the timeout's default
decides; each choice is in the trail with who made it."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import pytest

from activities.pipeline_loader import InvalidPipeline, load_pipeline
from starter.releases import ReleaseRef, decide
from tests.conftest import Stack, wait_for
from tests.test_engine_e2e import replay_release
from workflows.audit import SYSTEM
from workflows.release import ReleaseStatus, StageStatus, TaskStatus

GUIDED = """
    name: guided-{suffix}
    users:
      alice: {{email: alice@example.com}}
    stages:
      - name: prod
        pool: POOL
        on_failure: {{ask: [alice], timeout: {timeout}, default: {default}}}
        tasks:
          - name: migrate
            script: |
              echo "try $STAGEFLOW_TRY"
              test -f "{marker}" || {{ echo "no marker yet"; exit 3; }}
              echo "marker found"
          - name: smoke
            script: echo smoke ran
"""


def pipeline(stack: Stack, timeout: str = "1h", default: str = "fail") -> Path:
    text = GUIDED.format(
        suffix=stack.suffix, timeout=timeout, default=default, marker=stack.root / "fixed"
    )
    return stack.write_pipeline(text)


async def waiting(stack: Stack, ref: ReleaseRef) -> ReleaseStatus:
    async def asks() -> ReleaseStatus | None:
        status = await stack.status(ref)
        return status if status.stage("prod").status == "waiting_for_intervention" else None

    return await wait_for(asks, timeout=60, what=f"{ref} to ask about the failed task")


def run_of(status: ReleaseStatus, task: str):  # type: ignore[no-untyped-def]
    latest = status.stage("prod").latest
    assert latest is not None
    return next(run for run in latest.tasks if run.task == task)


@pytest.mark.e2e
async def test_retry_runs_the_task_again_as_a_new_try_with_its_own_log(stack: Stack) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline(stack))
    status = await waiting(stack, ref)
    latest = status.stage("prod").latest
    assert latest is not None and "--retry | --skip | --fail" in latest.waiting_reason
    assert run_of(status, "migrate").status == TaskStatus.FAILED

    # Not alice: refused, and kept in the trail. Resume without a choice: refused.
    refused = await decide(stack.client, ref, "prod", "mallory", "resume", choice="retry")
    assert refused.outcome == "refused" and "mallory may not decide" in refused.detail
    vague = await decide(stack.client, ref, "prod", "alice", "resume")
    assert vague.outcome == "refused" and "choose --retry, --skip or --fail" in vague.detail

    # alice is mailed what failed and the commands that choose.
    async def mailed() -> str | None:
        mails = [m.read_text() for m in (stack.data_dir / "outbox").glob("*.eml")]
        return next((m for m in mails if "alice@example.com" in m), None)

    mail = await wait_for(mailed, timeout=30, what="the mail to alice")
    assert "task 'migrate' failed (exit code 3)" in mail
    assert f"stageflow resume {ref} prod --retry | --skip | --fail" in mail
    assert "stageflow reject" not in mail  # the three choices say it all

    (stack.root / "fixed").touch()
    retried = await decide(
        stack.client, ref, "prod", "alice", "resume", choice="retry", comment="marker added"
    )
    assert retried.outcome == "accepted" and retried.action == "retry"
    status = await stack.wait_settled(ref)
    assert status.stage("prod").status == StageStatus.SUCCEEDED
    migrate = run_of(status, "migrate")
    assert migrate.status == TaskStatus.SUCCEEDED and migrate.tries == 2
    assert len(migrate.logs) == 2 and len(set(migrate.logs)) == 2
    first, second = (stack.log_text(key) for key in migrate.logs)
    assert "try 1" in first and "no marker yet" in first
    assert "try 2" in second and "marker found" in second
    assert run_of(status, "smoke").status == TaskStatus.SUCCEEDED
    events = status.stage("prod").attempts[-1].events
    assert [(e.actor, e.action, e.outcome) for e in events] == [
        ("mallory", "resume", "refused"),
        ("alice", "resume", "refused"),
        ("alice", "retry", "accepted"),
    ]
    assert events[-1].detail == "failed task 'migrate': marker added"
    await replay_release(stack.client, status, record_as="guided-retry")


@pytest.mark.e2e
async def test_skip_goes_on_partially_succeeded_and_fail_fails_through_the_cli(
    stack: Stack,
) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    path = pipeline(stack)
    skipped, _ = await stack.create(path)
    await waiting(stack, skipped)
    shown = stack.cli("release", "show", str(skipped))
    # The next command (its cell may wrap before `| --fail`).
    assert f"stageflow resume {skipped} prod --retry | --skip" in shown.stdout
    chose = stack.cli(
        "resume", str(skipped), "prod", "--skip", "--comment", "known flake", user="alice"
    )
    assert chose.returncode == 0, chose.stderr
    status = await stack.wait_settled(skipped)
    assert status.stage("prod").status == StageStatus.PARTIALLY_SUCCEEDED
    assert run_of(status, "migrate").status == TaskStatus.FAILED
    assert run_of(status, "smoke").status == TaskStatus.SUCCEEDED
    assert "skip by alice: known flake" in run_of(status, "migrate").message
    (event,) = [e for e in status.stage("prod").attempts[-1].events if e.action == "skip"]
    assert (event.actor, event.outcome) == ("alice", "accepted")
    assert event.detail == "failed task 'migrate': known flake"

    failed, _ = await stack.create(path)
    await waiting(stack, failed)
    chose = stack.cli("resume", str(failed), "prod", "--fail", user="alice")
    assert chose.returncode == 0, chose.stderr
    status = await stack.wait_settled(failed)
    assert status.stage("prod").status == StageStatus.FAILED
    assert run_of(status, "smoke").status == TaskStatus.SKIPPED
    history = stack.cli("history", str(failed), "--json")
    events = [(e["actor"], e["action"]) for e in json.loads(history.stdout)]
    assert ("alice", "fail") in events


@pytest.mark.e2e
async def test_the_timeout_applies_the_default_decided_by_stageflow(stack: Stack) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline(stack, timeout="2s", default="skip"))
    status = await stack.wait_settled(ref)
    assert status.stage("prod").status == StageStatus.PARTIALLY_SUCCEEDED
    (event,) = [e for e in status.stage("prod").attempts[-1].events if e.action == "skip"]
    assert event.actor == SYSTEM
    assert event.detail == "failed task 'migrate': no choice in 2s"


def test_on_failure_validates_and_a_bad_default_names_its_place(tmp_path: Path) -> None:
    text = """
        name: guided
        stages:
          - name: prod
            pool: linux
            on_failure: {ask: [alice], timeout: 30m, default: %s}
            tasks:
              - {name: migrate, script: "true"}
    """
    path = tmp_path / "guided.yml"
    path.write_text(dedent(text % "retry").lstrip("\n"))
    loaded, _ = load_pipeline(path)
    on_failure = loaded.stages[0].on_failure
    assert on_failure is not None and (on_failure.default, on_failure.ask) == ("retry", ["alice"])
    path.write_text(dedent(text % "shrug").lstrip("\n"))
    with pytest.raises(InvalidPipeline) as caught:
        load_pipeline(path)
    (problem,) = caught.value.problems
    assert (problem.line, problem.path) == (5, "stages[0].on_failure.default")
    assert "'fail', 'skip' or 'retry'" in problem.message
