"""Triggers end to end: Temporal Schedules made by `pipeline apply`, firing
TriggerWorkflows on a real control worker. A new drop-folder version, or a new commit
on an included branch, makes exactly one release within two polls; an excluded
branch makes none; a schedule with only_if_changed makes one on its first firing and
none on the next; a release asked for by `stageflow trigger` and the poll that sees
the same version make one release; triggers list, pause and resume."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import ScheduleOverlapPolicy
from temporalio.service import RPCError

from tests.conftest import Stack, wait_for
from tests.test_git_changes import commit, git
from workflows.names import pipeline_workflow_id
from workflows.pipeline_workflow import PipelineWorkflow

POLL_SECONDS = 2

DROP = """
    name: drop-{suffix}
    artifacts:
      - {{alias: app, type: local, path: drop}}
    triggers:
      - {{artifact: app, poll: {poll}s}}
    stages:
      - name: dev
        trigger: manual
        pool: POOL
        tasks:
          - {{name: deploy, script: echo dev}}
"""

GIT = """
    name: git-{suffix}
    artifacts:
      - {{alias: app, type: git, repository: repo, ref: main}}
    triggers:
      - artifact: app
        branches: {{include: [main, release/*], exclude: [release/old-*]}}
        poll: {poll}s
    stages:
      - name: dev
        trigger: manual
        pool: POOL
        tasks:
          - {{name: deploy, script: echo dev}}
"""

NIGHTLY_TRIGGERS = """triggers:
      - schedule: {cron: "0 3 * * mon-fri", timezone: Europe/Berlin, only_if_changed: true}"""
NIGHTLY = """
    name: nightly-{suffix}
    artifacts:
      - {{alias: app, type: local, path: drop}}
    {triggers}
    stages:
      - name: dev
        trigger: manual
        pool: POOL
        tasks:
          - {{name: deploy, script: echo dev}}
"""


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def releases(stack: Stack, pipeline: str) -> list[dict[str, Any]]:
    return list(
        json.loads(
            ok(stack.cli("--json", "release", "list", "--pipeline", pipeline, "--limit", "50"))
        )
    )


async def seen(stack: Stack, pipeline: str, trigger: str) -> dict[str, str] | None:
    try:
        return await stack.client.get_workflow_handle(pipeline_workflow_id(pipeline)).query(
            PipelineWorkflow.trigger_seen, trigger
        )
    except RPCError:
        return None


async def runs(stack: Stack, pipeline: str) -> int:
    return int(json.loads(ok(stack.cli("--json", "triggers", pipeline)))[0]["runs"])


async def two_more_polls(stack: Stack, pipeline: str) -> None:
    """Let the trigger fire twice more: what it would make, it has made by then."""
    before = await runs(stack, pipeline)

    async def fired() -> bool:
        return await runs(stack, pipeline) >= before + 2

    await wait_for(fired, timeout=POLL_SECONDS * 2 + 20, what="two more polls")


@pytest.fixture
async def schedules(stack: Stack) -> AsyncIterator[list[str]]:
    """The Schedules a test made, deleted at its end (the dev server is shared)."""
    made: list[str] = []
    yield made
    for schedule_id in made:
        try:
            await stack.client.get_schedule_handle(schedule_id).delete()
        except RPCError:
            pass


@pytest.mark.e2e
async def test_a_new_drop_version_makes_one_release_and_the_webhook_does_not_make_another(
    stack: Stack, schedules: list[str]
) -> None:
    await stack.start_worker()
    pipeline = f"drop-{stack.suffix}"
    (stack.root / "drop" / "1.0.0").mkdir(parents=True)
    path = stack.write_pipeline(DROP.format(suffix=stack.suffix, poll=POLL_SECONDS))
    ok(stack.cli("pipeline", "apply", str(path)))
    schedules.append(f"trigger/{pipeline}/artifact-app")

    # The first look notes 1.0.0 and makes nothing.
    await wait_for(lambda: seen(stack, pipeline, "artifact-app"), timeout=30, what="a first look")
    assert await seen(stack, pipeline, "artifact-app") == {"": "1.0.0"}
    assert releases(stack, pipeline) == []

    (stack.root / "drop" / "1.1.0").mkdir()
    appeared = time.monotonic()

    async def one_release() -> list[dict[str, Any]]:
        return releases(stack, pipeline)

    (made,) = await wait_for(one_release, timeout=POLL_SECONDS * 2 + 15, what="a release")
    took = time.monotonic() - appeared
    print(f"a release {took:.1f}s after the new version (poll every {POLL_SECONDS}s)")
    # Within two polls; the slack is the firing's own work and seeing it through the CLI
    # on a busy machine (1.2-1.6 s in all here, on a quiet one).
    assert took <= POLL_SECONDS * 2 + 5, took
    assert made["created_by"] == "trigger:artifact-app"
    shown = json.loads(ok(stack.cli("--json", "release", "show", f"{pipeline}/{made['number']}")))
    assert [a["version"] for a in shown["artifacts"]] == ["1.1.0"]
    assert shown["description"] == "app 1.1.0 is new"
    await two_more_polls(stack, pipeline)
    assert len(releases(stack, pipeline)) == 1

    # 1.2.0: asked for at once, and seen by the poll: one release.
    (stack.root / "drop" / "1.2.0").mkdir()
    asked = ok(stack.cli("trigger", pipeline, "--artifact", "app=1.2.0"))
    assert asked.startswith(f"created {pipeline} Release-2") or "has these versions" in asked
    await wait_for(
        lambda: _seen_is(stack, pipeline, {"": "1.2.0"}), timeout=30, what="the poll of 1.2.0"
    )
    await two_more_polls(stack, pipeline)
    listed = releases(stack, pipeline)
    assert len(listed) == 2, listed
    again = ok(stack.cli("trigger", pipeline, "--artifact", "app=1.2.0"))
    assert again == "no release: release 2 has these versions\n"

    table = ok(stack.cli("triggers", pipeline))
    assert "artifact-app" in table and f"artifact app, every {POLL_SECONDS}s" in table


async def _seen_is(stack: Stack, pipeline: str, expected: dict[str, str]) -> bool:
    return await seen(stack, pipeline, "artifact-app") == expected


@pytest.mark.e2e
async def test_a_commit_on_an_included_branch_makes_one_release_an_excluded_one_none(
    stack: Stack, schedules: list[str]
) -> None:
    await stack.start_worker()
    pipeline = f"git-{stack.suffix}"
    repo = stack.root / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "app.txt").write_text("1\n")
    git(repo, "add", "app.txt")
    commit(repo, "first")
    path = stack.write_pipeline(GIT.format(suffix=stack.suffix, poll=POLL_SECONDS))
    ok(stack.cli("pipeline", "apply", str(path)))
    schedules.append(f"trigger/{pipeline}/artifact-app")
    await wait_for(lambda: seen(stack, pipeline, "artifact-app"), timeout=30, what="a first look")

    # An excluded branch: nothing, over two polls.
    git(repo, "checkout", "--quiet", "-b", "release/old-1")
    commit(repo, "ABC-1: an old fix")
    await wait_for(
        lambda: _has_branch(stack, pipeline, "release/old-1", absent=True),
        timeout=5,
        what="the excluded branch left out",
    )
    await two_more_polls(stack, pipeline)
    assert releases(stack, pipeline) == []

    # A commit on main: one release, pinned to it.
    git(repo, "checkout", "--quiet", "main")
    head = commit(repo, "ABC-2: the new page")
    (made,) = await wait_for(
        lambda: _releases_async(stack, pipeline), timeout=POLL_SECONDS * 2 + 15, what="a release"
    )
    await two_more_polls(stack, pipeline)
    assert len(releases(stack, pipeline)) == 1
    shown = json.loads(ok(stack.cli("--json", "release", "show", f"{pipeline}/{made['number']}")))
    (app,) = shown["artifacts"]
    assert (app["version"], app["commit"]) == ("main", head)
    assert shown["changes"]["own"]["work_items"] == ["ABC-2"]
    assert made["created_by"] == "trigger:artifact-app"


async def _releases_async(stack: Stack, pipeline: str) -> list[dict[str, Any]]:
    return releases(stack, pipeline)


async def _has_branch(stack: Stack, pipeline: str, branch: str, absent: bool) -> bool:
    found = await seen(stack, pipeline, "artifact-app") or {}
    return (branch not in found) if absent else (branch in found)


@pytest.mark.e2e
async def test_a_schedule_only_if_changed_makes_one_then_none_and_pauses(
    stack: Stack, schedules: list[str]
) -> None:
    await stack.start_worker()
    pipeline = f"nightly-{stack.suffix}"
    (stack.root / "drop" / "2.0.0").mkdir(parents=True)
    path = stack.write_pipeline(NIGHTLY.format(suffix=stack.suffix, triggers=NIGHTLY_TRIGGERS))
    ok(stack.cli("pipeline", "apply", str(path)))
    schedule_id = f"trigger/{pipeline}/schedule-1"
    schedules.append(schedule_id)
    listed = json.loads(ok(stack.cli("--json", "triggers", pipeline)))
    (nightly,) = listed
    assert nightly["watches"] == "cron 0 3 * * mon-fri Europe/Berlin, only if changed"
    assert nightly["next_run"] is not None and not nightly["paused"]
    handle = stack.client.get_schedule_handle(schedule_id)

    async def fired(count: int) -> bool:
        described = await handle.describe()
        done = [a for a in described.info.recent_actions]
        if len(done) < count:
            return False
        last = done[-1].action
        result = await stack.client.get_workflow_handle(
            last.workflow_id, run_id=last.first_execution_run_id
        ).describe()
        return result.status is not None and result.status.name == "COMPLETED"

    await handle.trigger(overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    await wait_for(lambda: fired(1), timeout=30, what="the first firing")
    (made,) = releases(stack, pipeline)
    assert made["created_by"] == "trigger:schedule-1"
    await handle.trigger(overlap=ScheduleOverlapPolicy.ALLOW_ALL)
    await wait_for(lambda: fired(2), timeout=30, what="the second firing")
    assert len(releases(stack, pipeline)) == 1

    paused = json.loads(
        ok(stack.cli("--json", "triggers", pipeline, "--pause", "schedule-1", "--reason", "freeze"))
    )
    assert paused[0]["paused"] and paused[0]["note"] == "paused by tester: freeze"
    assert (await handle.describe()).schedule.state.paused
    resumed = json.loads(ok(stack.cli("--json", "triggers", pipeline, "--resume", "schedule-1")))
    assert not resumed[0]["paused"]
    unknown = stack.cli("triggers", pipeline, "--pause", "nope")
    assert unknown.returncode == 2 and "has no trigger 'nope'" in unknown.stderr

    # A revision without the trigger deletes its Schedule.
    stack.write_pipeline(NIGHTLY.format(suffix=stack.suffix, triggers=""))
    ok(stack.cli("pipeline", "apply", str(path)))
    with pytest.raises(RPCError):
        await handle.describe()
