"""A workflow terminated from outside Stageflow (`temporal workflow terminate`) shows as
terminated in `release show`, `release list` and `history`, never as in progress."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Stack, wait_for
from workflows.names import stage_workflow_id

pytestmark = pytest.mark.e2e
TEMPORAL = str(Path(sys.executable).parent / "temporal")


def terminate(stack: Stack, workflow_id: str, reason: str) -> None:
    subprocess.run(
        [
            TEMPORAL,
            "workflow",
            "terminate",
            "--address",
            stack.address,
            "--namespace",
            "default",
            "--workflow-id",
            workflow_id,
            "--reason",
            reason,
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def show(stack: Stack, *args: str) -> object:
    done = stack.cli("--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def test_terminated_stage_and_release_show_terminated(stack: Stack) -> None:
    path = stack.write_pipeline(f"""
        name: term-{stack.suffix}
        stages:
          - name: dev
            pool: POOL
            tasks: [{{name: wait, script: "sleep 60"}}]
          - name: qa
            pool: POOL
            trigger: manual
            tasks: [{{name: wait, script: "sleep 60"}}]
    """)
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(path)

    async def dev_running() -> bool:
        attempt = (await stack.status(ref)).stage("dev").latest
        return attempt is not None and any(t.status == "in_progress" for t in attempt.tasks)

    await wait_for(dev_running, what="dev's task to run")
    stage_id = stage_workflow_id(ref.pipeline, ref.number, "dev", 1)
    await asyncio.to_thread(terminate, stack, stage_id, "stuck, by hand")

    async def dev_terminated() -> dict | None:  # type: ignore[type-arg]
        shown = await asyncio.to_thread(show, stack, "release", "show", str(ref))
        dev = next(s for s in shown["stages"] if s["name"] == "dev")  # type: ignore[index]
        return shown if dev["status"] == "terminated" else None  # type: ignore[return-value]

    await wait_for(dev_terminated, what="dev to show terminated")

    await asyncio.to_thread(terminate, stack, ref.workflow_id, "release cleanup")
    shown = await asyncio.to_thread(show, stack, "release", "show", str(ref))
    assert shown["state"] == "terminated" and shown["status"] == "terminated"  # type: ignore[index]
    history = await asyncio.to_thread(show, stack, "history", str(ref))
    last = history[-1]  # type: ignore[index]
    assert (last["action"], last["detail"]) == ("terminate", "release cleanup")

    async def listed() -> bool:
        rows = await asyncio.to_thread(show, stack, "release", "list", "--pipeline", ref.pipeline)
        return [r["status"] for r in rows] == ["terminated"]  # type: ignore[union-attr]

    await wait_for(listed, what="release list to say terminated")
