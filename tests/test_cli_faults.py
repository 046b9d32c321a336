"""The API killed with -9 while `stageflow approve` waits for its verdict: the CLI sends
the same request once more, and when that gets no answer either it says the decision
may or may not have been recorded and how to look; looking, and deciding again, ends
with the decision recorded exactly once. Real dev server, control worker, agent and
`stageflow serve` as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from sqlalchemy import select

from activities.record import ApiRequestRow, open_database
from tests.conftest import ROOT, Stack, wait_for
from worker.settings import Settings

pytestmark = pytest.mark.e2e

WAITING_ON_ALICE = """
    name: {name}
    stages:
      - name: prod
        pool: POOL
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks: [{{name: ship, script: "echo shipped"}}]
"""


async def test_a_decision_whose_api_died_is_said_to_be_unknown_and_is_recorded_once(
    stack: Stack,
) -> None:
    worker = await stack.start_worker()
    await stack.start_agent("a1")
    path = stack.write_pipeline(WAITING_ON_ALICE.format(name=f"cli-kill-{stack.suffix}"))
    ref, _ = await stack.create(path)

    async def waiting() -> bool:
        return (await stack.status(ref)).stage("prod").status.value == "waiting_for_approval"

    await wait_for(waiting, what="prod waiting for alice")
    env = await asyncio.to_thread(stack.signed_in, "alice")
    url = env["STAGEFLOW_URL"]
    # No control worker: the API's update waits for one, so the CLI waits for the API.
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    approve = subprocess.Popen(
        [sys.executable, "-m", "starter.cli", "approve", str(ref), "prod"],
        cwd=stack.root,
        env=stack.env(PYTHONPATH=str(ROOT), **env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = open_database(Settings.from_env(stack.env()).record_url)
    try:

        async def sent() -> bool:
            async with db.reading() as session:
                rows = (await session.execute(select(ApiRequestRow.outcome))).scalars()
                return "sent" in list(rows)

        await wait_for(sent, what="the API to send the decision to Temporal")
    finally:
        await db.close()
    api = stack.apis[url]
    os.kill(api.pid, signal.SIGKILL)
    api.wait()
    out, err = await asyncio.to_thread(approve.communicate, timeout=120)

    assert approve.returncode == 2 and out == ""
    retried, gave_up = err.splitlines()
    request_id = retried.rsplit("request id ", 1)[1].rstrip(")")
    assert retried.startswith(f"the API at {url} gave no answer (")
    assert retried.endswith(f"sending the same request again (request id {request_id})")
    assert gave_up.startswith(f"error: the API at {url} gave no answer again (")
    assert gave_up.endswith(
        f"the action may or may not have been recorded; `stageflow history {ref}` shows "
        f"whether it was (request id {request_id})"
    )

    # Look, as the CLI said, through a new API; then decide again if it was not recorded.
    await stack.start_worker()
    again = await asyncio.to_thread(stack.start_api)

    def approvals() -> list[dict[str, object]]:
        done = stack.cli("--json", "history", str(ref), STAGEFLOW_URL=again)
        assert done.returncode == 0, done.stderr
        events = json.loads(done.stdout)
        return [e for e in events if e["action"] == "approve" and e["outcome"] == "accepted"]

    if not await asyncio.to_thread(approvals):
        decided = await asyncio.to_thread(
            stack.cli, "approve", str(ref), "prod", user="alice", STAGEFLOW_URL=again
        )
        assert decided.returncode in (0, 2), decided.stderr  # 2: the first got there meanwhile

    async def succeeded() -> bool:
        return (await stack.status(ref)).stage("prod").status.value == "succeeded"

    await wait_for(succeeded, timeout=60, what="prod deployed")

    async def recorded_once() -> list[dict[str, object]] | None:
        found = await asyncio.to_thread(approvals)
        return found or None

    accepted = await wait_for(recorded_once, what="alice's approval in the record")
    assert [e["actor"] for e in accepted] == ["alice"]
