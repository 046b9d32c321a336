"""The log routes of the API (starter/api/routes_logs.py) over real releases: which tasks
and tries have logs, one log's lines with their timestamps (from an offset), a running
task's log streamed until it ends, and who may read any of it. A real `stageflow serve`
on a free port, the dev server, a control worker and an agent as processes."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from activities.record import open_database
from activities.record.identity import grant
from tests.conftest import Stack, wait_for
from worker.settings import Settings
from workflows.release import StageStatus

pytestmark = pytest.mark.e2e

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")

RETRIED = """
    name: api-logs-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: deploy
            retries: 1
            script: |
              if [ ! -f "$DIR/tried" ]; then touch "$DIR/tried"; echo "first try"; exit 1; fi
              echo "second try"
"""

FOLLOWED = """
    name: api-follow-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: ship
            script: |
              echo "shipping"
              for i in $(seq 1 600); do echo "line $i"; [ -f "$DIR/go" ] && break; sleep 0.05; done
              echo "shipped"
"""


def api_client(stack: Stack, user: str | None = "tester", admin: bool = True) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {stack.token(user, admin)}"} if user else {}
    return httpx.AsyncClient(base_url=f"{stack.api()}/api/v1", headers=headers, timeout=30)


async def test_a_release_lists_each_try_and_serves_each_log_with_its_times(
    stack: Stack,
) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(
        stack.write_pipeline(RETRIED.format(suffix=stack.suffix, dir=stack.root))
    )
    assert (await stack.wait_settled(ref)).stage("dev").status == StageStatus.SUCCEEDED
    release = f"/releases/{ref.pipeline}/{ref.number}"
    await asyncio.to_thread(stack.api)

    async with api_client(stack) as http:

        async def recorded() -> list[dict[str, Any]] | None:
            answer = await http.get(f"{release}/logs")
            found = answer.json() if answer.status_code == 200 else []
            return found if found and found[0]["status"] == "succeeded" else None

        [task] = await wait_for(recorded, what="the task's end in the record")
        assert (task["stage"], task["attempt"], task["job"], task["task"]) == (
            "dev",
            1,
            "job",
            "deploy",
        )
        keys = [log["key"] for log in task["logs"]]
        assert keys == [f"{ref.pipeline}/1/dev/1/job/01-deploy{s}.log" for s in ("", ".try2")]
        assert [(log["job_try"], log["task_try"]) for log in task["logs"]] == [(1, 1), (1, 2)]

        first = await http.get(f"{release}/logs/{keys[0]}")
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/plain")
        lines = first.text.splitlines()
        assert all(STAMP.match(line) for line in lines), lines
        assert "first try" in first.text and "second try" not in first.text
        assert lines[-1].split(" ", 1)[1].startswith("##[stageflow] --- task ended: exit code 1")

        bare = (await http.get(f"{release}/logs/{keys[1]}", params={"timestamps": False})).text
        assert "second try\n" in bare and not STAMP.match(bare)
        offset = bare.index("second try")
        tail = await http.get(
            f"{release}/logs/{keys[1]}", params={"timestamps": False, "offset": offset}
        )
        assert tail.text == bare[offset:]

        # Filters, and what they do not find: 404 with what there is.
        assert (await http.get(f"{release}/logs", params={"task": "nothing"})).json() == []
        stage = await http.get(f"{release}/logs", params={"stage": "prod"})
        assert stage.status_code == 404 and "has no stage 'prod' (stages: dev)" in stage.text
        attempt = await http.get(f"{release}/logs", params={"attempt": 3})
        assert attempt.status_code == 404
        assert attempt.json()["detail"] == f"{ref} has no attempt 3 (attempts dev: 1)"
        # Only the logs of this release's tasks, by the keys the listing gives.
        for key in (
            f"{ref.pipeline}/1/dev/1/job/01-deploy.log.idx",
            f"{ref.pipeline}/2/dev/1/job/01-deploy.log",
            "elsewhere.log",
        ):
            answer = await http.get(f"{release}/logs/{key}")
            assert answer.status_code == 404, key
            assert answer.headers["content-type"] == "application/problem+json"

    # Who may read: no one without credentials; a person with no role on the pipeline
    # is refused and learns nothing; a viewer reads.
    async with api_client(stack, user=None) as anonymous:
        assert (await anonymous.get(f"{release}/logs")).status_code == 401
    async with api_client(stack, "outsider", admin=False) as outsider:
        for path in (
            f"{release}/logs",
            f"{release}/logs/{keys[0]}",
            f"{release}/stages/dev/follow?task=deploy",
        ):
            refused = await outsider.get(path)
            assert refused.status_code == 403, path
            assert refused.json()["detail"] == f"outsider may not view pipeline {ref.pipeline!r}"
        db = open_database(Settings.from_env(stack.env()).record_url)
        try:
            await grant(db, ref.pipeline, None, "user:outsider", "viewer", by="tester")
        finally:
            await db.close()
        assert (await outsider.get(f"{release}/logs/{keys[0]}")).status_code == 200
    # The CLI prints the same, a header before each try.
    shown = await asyncio.to_thread(stack.cli, "logs", str(ref))
    assert shown.returncode == 0, shown.stderr
    headers = [line for line in shown.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> dev #1 / deploy (succeeded), try {n} <==" for n in (1, 2)]


async def test_a_running_task_is_streamed_until_it_ends(stack: Stack) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    path = stack.write_pipeline(FOLLOWED.format(suffix=stack.suffix, dir=stack.root))
    ref, _ = await stack.create(path)

    async def running() -> bool:
        attempt = (await stack.status(ref)).stage("dev").latest
        return attempt is not None and any(t.status == "in_progress" for t in attempt.tasks)

    await wait_for(running, what="the task to run")
    follow = f"/releases/{ref.pipeline}/{ref.number}/stages/dev/follow"
    async with api_client(stack) as http:
        async with http.stream("GET", follow, params={"task": "ship"}, timeout=None) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            seen = [await anext(lines) for _ in range(3)]
            assert seen[0].startswith("##[stageflow] task 'ship'"), seen
            assert "shipping" in seen and any(line.startswith("line ") for line in seen), seen
            # Still running: the answer goes on only as the task writes.
            (stack.root / "go").touch()
            rest = [line async for line in lines]
        assert "shipped" in rest
        assert rest[-1].startswith("##[stageflow] --- task ended: exit code 0"), rest[-3:]
        # Followed once it has ended: its log, whole.
        ended = await http.get(follow, params={"task": "job/ship"})
        assert ended.status_code == 200
        assert ended.text.splitlines()[-1].startswith("##[stageflow] --- task ended")
        unknown = await http.get(follow, params={"task": "nothing"})
        assert unknown.status_code == 404
        assert unknown.json()["detail"] == f"stage 'dev' of {ref} has no task 'nothing'"
