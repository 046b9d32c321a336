"""Task logs end to end, as `stageflow logs` shows them: every try, the log of a canceled
task and of a lost agent kept and marked as cut short, pipes and bad attempts; and a
cancel that stops the task at once. Real dev server, control worker and agent processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from starter.releases import ReleaseRef, cancel_stage
from tests.conftest import ROOT, Stack, wait_for
from workflows.release import StageStatus

CUT_SHORT = "##[stageflow] --- cut short: the log ends here (agent lost or task killed)"


def group_alive(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    alive = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


async def read_pid(stack: Stack, name: str = "task.pid") -> int:
    async def pid() -> int:
        path = stack.root / name
        text = path.read_text().strip() if path.exists() else ""
        return int(text) if text else 0

    return await wait_for(pid, what=f"the task to write {name}")


async def heartbeated(stack: Stack, workflow_id: str) -> bool:
    """The running `run_task` activity of a stage has heartbeated."""
    description = await stack.client.get_workflow_handle(workflow_id).describe()
    return any(
        pending.activity_type.name == "run_task" and pending.heartbeat_details.payloads
        for pending in description.raw_description.pending_activities
    )


def logs(stack: Stack, ref: ReleaseRef, *args: str) -> subprocess.CompletedProcess[str]:
    return stack.cli("logs", f"{ref.pipeline}/{ref.number}", "--no-timestamps", *args)


SLEEPER = """
    name: sleeper-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: wait
            script: |
              echo "waiting on $STAGEFLOW_AGENT"
              echo $$ > "$DIR/task.pid"
              sleep 300
"""


@pytest.mark.e2e
async def test_cancel_stops_the_running_task_within_a_second(stack: Stack) -> None:
    pipeline = stack.write_pipeline(SLEEPER.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)
    pgid = await read_pid(stack)
    assert group_alive(pgid), "the task's processes run"
    # Once the task has heartbeated, the next heartbeat (which brings the cancel) is
    # the throttled one: that is the delay this pins.
    attempt = (await stack.status(ref)).stage("dev").latest
    assert attempt is not None
    await wait_for(
        lambda: heartbeated(stack, attempt.workflow_id), what="the task's first heartbeat"
    )

    started = time.monotonic()
    await cancel_stage(stack.client, ref, "dev", "dave")

    async def group_gone() -> bool:
        return not group_alive(pgid)

    await wait_for(group_gone, timeout=1.0, what=f"task process group {pgid} to die")
    print(f"\ncancel to task process dead: {time.monotonic() - started:.2f}s")
    status = await stack.wait_settled(ref)
    assert status.stage("dev").status == StageStatus.CANCELED


def last_line(text: str) -> str:
    lines = text.splitlines()
    return lines[-1] if lines else ""


@pytest.mark.e2e
async def test_canceled_task_keeps_its_log_marked_as_canceled(stack: Stack) -> None:
    pipeline = stack.write_pipeline(SLEEPER.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)
    await read_pid(stack)
    await cancel_stage(stack.client, ref, "dev", "dave")
    status = await stack.wait_settled(ref)
    assert status.stage("dev").status == StageStatus.CANCELED

    shown = await asyncio.to_thread(logs, stack, ref)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "==> dev #1 / wait (canceled) <=="
    assert "waiting on a1" in shown.stdout
    assert last_line(shown.stdout) == "##[stageflow] --- cut short: canceled"


LOST = """
    name: lost-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        agent_lost_retries: {retries}
        tasks:
          - name: long deploy
            script: |
              if [ -f "$DIR/killed" ]; then echo "finished on $STAGEFLOW_AGENT"; exit 0; fi
              echo "waiting on $STAGEFLOW_AGENT"
              echo $$ > "$DIR/task.pid"
              sleep 300
"""


async def kill_agent_during_task(stack: Stack, agents: dict[str, subprocess.Popen[bytes]]) -> str:
    """kill -9 the agent running the task once the task has printed its line; the
    task itself, orphaned, is killed too. Returns the killed agent's name."""
    pgid = await read_pid(stack)
    (stack.root / "killed").touch()
    for name, agent in agents.items():
        if agent.pid in {p.pid for p in psutil.Process(pgid).parents()}:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait()
            os.killpg(pgid, signal.SIGKILL)
            return name
    raise AssertionError(f"no agent of {list(agents)} runs task {pgid}")


@pytest.mark.e2e
async def test_log_of_a_lost_agent_is_kept_and_marked_cut_short(stack: Stack) -> None:
    pipeline = stack.write_pipeline(LOST.format(suffix=stack.suffix, dir=stack.root, retries=0))
    await stack.start_worker()
    agents = {"a1": await stack.start_agent("a1")}
    ref, _ = await stack.create(pipeline)
    await kill_agent_during_task(stack, agents)
    status = await stack.wait_settled(ref, timeout=60)
    assert status.stage("dev").status == StageStatus.FAILED

    shown = await asyncio.to_thread(logs, stack, ref)
    assert shown.returncode == 0, shown.stderr
    assert "waiting on a1" in shown.stdout
    assert last_line(shown.stdout) == CUT_SHORT


@pytest.mark.e2e
async def test_log_of_a_lost_agent_is_shown_before_the_job_rerun(stack: Stack) -> None:
    pipeline = stack.write_pipeline(LOST.format(suffix=stack.suffix, dir=stack.root, retries=1))
    await stack.start_worker()
    agents = {"a1": await stack.start_agent("a1"), "a2": await stack.start_agent("a2")}
    ref, _ = await stack.create(pipeline)
    victim = await kill_agent_during_task(stack, agents)
    survivor = {"a1": "a2", "a2": "a1"}[victim]
    status = await stack.wait_settled(ref, timeout=60)
    assert status.stage("dev").status == StageStatus.SUCCEEDED

    shown = (await asyncio.to_thread(logs, stack, ref)).stdout
    first, second = shown.split("==> dev #1 / long deploy (succeeded), job try 2, try 1 <==")
    assert first.splitlines()[0] == "==> dev #1 / long deploy (succeeded), try 1 <=="
    assert f"waiting on {victim}" in first and last_line(first) == CUT_SHORT
    assert f"finished on {survivor}" in second
    assert last_line(second).startswith("##[stageflow] --- task ended: exit code 0 after ")


RETRIED = """
    name: retried-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: deploy
            retries: 2
            script: |
              n=$(cat "$DIR/count" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$DIR/count"
              echo "deploy try $n"; [ "$n" -ge 3 ]
          - name: deploy db
            script: echo "db deployed"
          - name: chatty
            script: seq 1 300000
"""


async def retried_release(stack: Stack) -> ReleaseRef:
    pipeline = stack.write_pipeline(RETRIED.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)
    status = await stack.wait_settled(ref)
    assert status.stage("dev").status == StageStatus.SUCCEEDED
    return ref


@pytest.mark.e2e
async def test_logs_shows_every_try_of_a_task_in_order(stack: Stack) -> None:
    ref = await retried_release(stack)

    shown = await asyncio.to_thread(logs, stack, ref, "--task", "deploy")
    assert shown.returncode == 0, shown.stderr
    headers = [line for line in shown.stdout.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> dev #1 / deploy (succeeded), try {n} <==" for n in (1, 2, 3)]
    tries = shown.stdout.split("==> ")[1:]
    for n, text in enumerate(tries, 1):
        assert f"deploy try {n}\n" in text
        assert f"--- task ended: exit code {0 if n == 3 else 1} after " in text
    assert "db deployed" not in shown.stdout  # `01-deploy` is not `02-deploy-db`

    db = await asyncio.to_thread(logs, stack, ref, "--task", "deploy db")
    assert db.stdout.splitlines()[0] == "==> dev #1 / deploy db (succeeded) <=="
    assert "db deployed" in db.stdout and "deploy try" not in db.stdout


@pytest.mark.e2e
async def test_logs_into_a_pipe_closed_early_ends_quietly(stack: Stack) -> None:
    ref = await retried_release(stack)

    # `stageflow logs … | head -n 2`: the reader goes away after two lines.
    command = " ".join(
        [sys.executable, "-m", "starter.cli", "logs", f"{ref.pipeline}/{ref.number}"]
    )
    piped = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", f"set -o pipefail; {command} 2>stderr.txt | head -n 2"],
        cwd=stack.root,
        env=stack.env(PYTHONPATH=str(ROOT), **stack.signed_in()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.stdout.startswith("==> dev #1 / deploy (succeeded), try 1 <==\n")
    assert len(piped.stdout.splitlines()) == 2
    assert (stack.root / "stderr.txt").read_text() == ""
    assert piped.returncode == 0


@pytest.mark.e2e
async def test_logs_of_a_missing_attempt_exit_2_naming_the_attempts(stack: Stack) -> None:
    ref = await retried_release(stack)

    missing = await asyncio.to_thread(logs, stack, ref, "--stage", "dev", "--attempt", "5")
    assert missing.returncode == 2
    assert missing.stdout == ""
    assert missing.stderr == (
        f"error: stage 'dev' of {ref.pipeline}/{ref.number} has no attempt 5 (attempts dev: 1)\n"
    )
    everywhere = await asyncio.to_thread(logs, stack, ref, "--attempt", "5")
    assert everywhere.returncode == 2
    assert everywhere.stderr.splitlines() == [
        f"error: {ref.pipeline}/{ref.number} has no attempt 5 (attempts dev: 1)"
    ]
    first = await asyncio.to_thread(logs, stack, ref, "--attempt", "1", "--task", "deploy db")
    assert first.returncode == 0 and "db deployed" in first.stdout
