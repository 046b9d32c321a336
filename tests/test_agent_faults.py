"""A deploy step runs once, or again only as a visible new try (issue 11): a Temporal
server outage during a task, an agent killed -9, processes that escape the task's
process group, and an agent stopped with SIGTERM (drain). Real dev servers, control
workers and agents as processes, real tasks; every process a test starts it stops
by its PID."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.log_store import END_NOTE
from starter.polling import poll
from tests.conftest import Stack, wait_for
from worker.devserver import free_port, start_dev_server, stop_process, wait_for_server
from workflows.release import ReleaseStatus, StageStatus, TaskStatus

pytestmark = pytest.mark.e2e


def is_dead(pid: int) -> bool:
    """Gone, or a zombie (killed; some container inits never reap orphans)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def until_dead(pids: list[int], timeout: float = 10.0) -> float:
    """Wait until every pid is dead (looking every 5 ms); when that was seen."""

    async def all_dead() -> bool:
        return all(is_dead(pid) for pid in pids)

    if not await poll(all_dead, timeout=timeout, interval=0.005):
        raise AssertionError(f"processes {pids} still alive after {timeout}s")
    return time.monotonic()


async def read_pid(path: Path, timeout: float = 30.0) -> int:
    async def written() -> int:
        text = path.read_text().strip() if path.exists() else ""
        return int(text) if text.isdigit() else 0

    return await wait_for(written, timeout=timeout, what=f"{path.name}")


async def children_of(pid: int, timeout: float = 10.0) -> list[int]:
    async def some() -> list[int]:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]

    return await wait_for(some, timeout=timeout, what=f"children of {pid}")


def the_task(status: ReleaseStatus, name: str):  # type: ignore[no-untyped-def]
    latest = status.stage("dev").latest
    assert latest is not None, "dev was never deployed"
    return next(run for run in latest.tasks if run.task == name)


def summary(status: ReleaseStatus) -> str:
    """What went on in dev, short enough for an assertion message."""
    latest = status.stage("dev").latest
    if latest is None:
        return "dev never deployed"
    tasks = [(r.task, r.status.value, r.exit_code, r.tries, r.message) for r in latest.tasks]
    agents = [(a.agent, a.try_number, a.lost, a.handed_back) for a in latest.agents]
    return f"{latest.status.value}: {latest.message!r}; tasks {tasks}; agents {agents}"


async def start_agent(
    stack: Stack, name: str, *extra: str, work_dir: Path | None = None
) -> subprocess.Popen[bytes]:
    """An agent with extra flags (`--drain-timeout 60s`), polling once it returns."""
    from temporalio.api.enums.v1 import TaskQueueType

    from workflows.names import pool_queue

    work_dir = work_dir or stack.root / "agents" / name
    process = stack.spawn(
        ["agent", "--pool", stack.pool(), "--name", name, "--work-dir", str(work_dir), *extra],
        f"agent-{name}",
    )
    await stack.wait_for_poller(
        process, pool_queue(stack.pool()), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
    )
    return process


def agent_log(stack: Stack, name: str) -> str:
    return (stack.root / f"agent-{name}.log").read_text(errors="replace")


# --- 1. the Temporal server down during a task --------------------------------------------


class OwnServer:
    """A dev server of the test's own (SQLite file, so it survives a restart)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = start_dev_server(self.data_dir, self.port, headless=True)
        await wait_for_server(self.address, timeout=60, process=self.process)

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[OwnServer]:
    server = OwnServer(tmp_path / "temporal")
    await server.start()
    try:
        yield server
    finally:
        server.stop()


OUTAGE = """
    name: outage-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: deploy
            script: |
              echo "started on $STAGEFLOW_AGENT" >> "$DIR/starts"
              sleep {seconds}
              echo "deployed"
          # Runs on the same lease after the outage: the lease was renewed, not lost.
          - name: smoke test
            script: echo "smoke test on $STAGEFLOW_AGENT"
"""
# The outage, and when in the task it begins: the test's inputs, not waits for events.
OUTAGE_SECONDS = 15
OUTAGE_STARTS_AFTER = 2


@pytest.mark.parametrize(
    "seconds",
    [
        pytest.param(25, id="the task outlasts the outage"),
        # Its result cannot be delivered until the server is back: it is kept for the retry.
        pytest.param(5, id="the task ends during the outage"),
    ],
)
async def test_a_server_outage_during_a_task_changes_nothing(
    own_server: OwnServer, tmp_path: Path, seconds: int
) -> None:
    client = await Client.connect(own_server.address, data_converter=pydantic_data_converter)
    root = tmp_path / "world"
    root.mkdir()
    stack = Stack(client=client, address=own_server.address, root=root)
    try:
        pipeline = stack.write_pipeline(
            OUTAGE.format(suffix=stack.suffix, dir=root, seconds=seconds)
        )
        await stack.start_worker()
        await stack.start_agent("a1")
        ref, _ = await stack.create(pipeline)
        starts = root / "starts"

        async def started() -> bool:
            return starts.exists() and len(starts.read_text().splitlines()) == 1

        await wait_for(started, what="the task to start")
        await asyncio.sleep(OUTAGE_STARTS_AFTER)
        own_server.kill()
        await asyncio.sleep(OUTAGE_SECONDS)
        await own_server.start()
        stack.client = await Client.connect(
            own_server.address, data_converter=pydantic_data_converter
        )

        status = await stack.wait_settled(ref, timeout=120)

        run = the_task(status, "deploy")
        assert status.stage("dev").status == StageStatus.SUCCEEDED, summary(status)
        assert starts.read_text().splitlines() == ["started on a1"]
        assert (run.status, run.tries, len(run.logs)) == (TaskStatus.SUCCEEDED, 1, 1)
        log = stack.log_text(run.log)
        assert log.count("deployed") == 1 and "task ended: exit code 0" in log
        smoke = the_task(status, "smoke test")
        assert (smoke.status, smoke.tries, smoke.agent) == (TaskStatus.SUCCEEDED, 1, "a1")
        attempt = status.stage("dev").latest
        assert attempt is not None
        assert [(s.agent, s.lost) for s in attempt.agents] == [("a1", False)]
        # Which way the lease came through depends on which the server saw first once
        # back: its heartbeat (the lease goes on) or its timeout (renew_lease).
        renewed = "renewed, the job goes on" in agent_log(stack, "a1")
        print(f"\noutage of {OUTAGE_SECONDS}s, task of {seconds}s: lease renewed: {renewed}")
    finally:
        stack.stop_all()


# --- 2. an agent killed -9 during a task that prints nothing -------------------------------

SILENT = """
    name: silent-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: deploy
            script: |
              if [ -f "$DIR/killed" ]; then echo "finished on $STAGEFLOW_AGENT"; exit 0; fi
              echo $$ > "$DIR/task.pid"
              echo "$STAGEFLOW_AGENT" > "$DIR/first-agent"
              sleep 30; touch "$DIR/done"
"""


async def test_a_killed_agents_task_dies_with_it_and_runs_again_as_a_new_try(
    stack: Stack,
) -> None:
    pipeline = stack.write_pipeline(SILENT.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    agents = {"a1": await stack.start_agent("a1"), "a2": await stack.start_agent("a2")}
    ref, _ = await stack.create(pipeline)

    shell = await read_pid(stack.root / "task.pid")
    victim = (stack.root / "first-agent").read_text().strip()
    task_processes = [shell, *await children_of(shell)]  # bash and its sleep
    (stack.root / "killed").touch()
    killed_at = time.monotonic()
    os.kill(agents[victim].pid, signal.SIGKILL)
    took = await until_dead(task_processes) - killed_at
    agents[victim].wait()
    print(f"\nkill -9 of the agent: its task's processes gone {took * 1000:.0f} ms later")

    status = await stack.wait_settled(ref, timeout=60)
    survivor = {"a1": "a2", "a2": "a1"}[victim]
    run = the_task(status, "deploy")
    assert status.stage("dev").status == StageStatus.SUCCEEDED, summary(status)
    attempt = status.stage("dev").latest
    assert attempt is not None
    assert [(s.agent, s.lost, s.try_number) for s in attempt.agents] == [
        (victim, True, 1),
        (survivor, False, 2),
    ]
    # The first try's partial log is kept and listed; the second is the one shown.
    assert len(run.logs) == 2 and run.log == run.logs[1]
    first = stack.log_text(run.logs[0])
    assert f"on agent {victim}" in first and END_NOTE not in first  # cut short
    assert f"finished on {survivor}" in stack.log_text(run.log)
    assert not (stack.root / "done").exists()  # the first try's deploy step never ran on


LEFTOVER = """
    name: leftover-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        agent_lost_retries: 2
        tasks:
          - name: deploy
            script: |
              if [ -f "$DIR/killed" ]; then echo "finished on $STAGEFLOW_AGENT"; exit 0; fi
              echo $$ > "$DIR/task.pid"
              sleep 300
"""


async def test_a_restarted_agent_kills_what_its_previous_life_left_before_it_polls(
    stack: Stack,
) -> None:
    pipeline = stack.write_pipeline(LEFTOVER.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    agent = await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)
    shell = await read_pid(stack.root / "task.pid")
    leftovers = await children_of(shell)  # the sleep; the shell dies with the agent
    # The task's watcher dies first, so only the kernel's signal to the shell takes
    # anything down with the agent: as if the OOM killer had taken both.
    watcher = next(
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and p.info["cmdline"][-5:-2] == ["watch", str(agent.pid), str(shell)]
    )
    (stack.root / "killed").touch()
    watcher.kill()
    agent.kill()
    agent.wait()
    await until_dead([shell])
    assert not any(is_dead(pid) for pid in leftovers), "the sleep should still run"

    await stack.start_agent("a1")  # the same --work-dir

    await until_dead(leftovers, timeout=2)
    log = agent_log(stack, "a1")
    for pid in leftovers:
        assert f"killed pid {pid} left running by an earlier agent" in log
    status = await stack.wait_settled(ref, timeout=60)
    assert status.stage("dev").status == StageStatus.SUCCEEDED, summary(status)
    assert "finished on a1" in stack.log_text(the_task(status, "deploy").log)


# --- 3. processes that escape the task's process group ------------------------------------

ESCAPES = """
    name: escapes-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: setsid in the background
            continue_on_error: true
            script: |
              setsid sh -c 'echo $$ > "$DIR/escaped-1.pid"; exec sleep 1000' &
              while [ ! -s "$DIR/escaped-1.pid" ]; do sleep 0.01; done
              echo started one
          - name: setsid in a subshell
            script: |
              (setsid sh -c 'echo $$ > "$DIR/escaped-2.pid"; exec sleep 1000' > /dev/null 2>&1 &)
              while [ ! -s "$DIR/escaped-2.pid" ]; do sleep 0.01; done
              echo started two
"""


async def test_processes_that_escape_the_group_are_killed_named_and_fail_the_task(
    stack: Stack,
) -> None:
    pipeline = stack.write_pipeline(ESCAPES.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    ref, _ = await stack.create(pipeline)
    status = await stack.wait_settled(ref)

    assert status.stage("dev").status == StageStatus.FAILED, summary(status)
    escaped = [int((stack.root / f"escaped-{n}.pid").read_text()) for n in (1, 2)]
    await until_dead(escaped)
    for name, pid in zip(
        ("setsid in the background", "setsid in a subshell"), escaped, strict=True
    ):
        run = the_task(status, name)
        assert (run.status, run.exit_code) == (TaskStatus.FAILED, 0), run
        assert "still running (killed; see the log)" in run.message
        log = stack.log_text(run.log)
        assert "1 process(es) it started had left its process group; killed:" in log
        assert f"pid {pid}: sleep 1000" in log


# --- 4. SIGTERM drains the agent -----------------------------------------------------------

DRAIN = """
    name: drain-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        agent_lost_retries: 0
        tasks:
          - name: five seconds
            script: |
              echo "started on $STAGEFLOW_AGENT"
              touch "$DIR/first-started"
              sleep 5
              echo "finished on $STAGEFLOW_AGENT"
          - name: after
            script: echo "after on $STAGEFLOW_AGENT"
"""


async def exit_code(process: subprocess.Popen[bytes], timeout: float) -> int:
    async def exited() -> bool:
        return process.poll() is not None

    await wait_for(exited, timeout=timeout, what=f"pid {process.pid} to exit")
    assert process.returncode is not None
    return process.returncode


async def test_sigterm_lets_the_task_finish_and_hands_the_job_back(stack: Stack) -> None:
    pipeline = stack.write_pipeline(DRAIN.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    first = await start_agent(stack, "a1", "--drain-timeout", "60s")
    ref, _ = await stack.create(pipeline)

    async def started() -> bool:
        return (stack.root / "first-started").exists()

    await wait_for(started, what="the first task to start")
    first.send_signal(signal.SIGTERM)
    await start_agent(stack, "a2")

    status = await stack.wait_settled(ref, timeout=60)
    assert await exit_code(first, timeout=30) == 0
    assert status.stage("dev").status == StageStatus.SUCCEEDED, summary(status)
    five, after = the_task(status, "five seconds"), the_task(status, "after")
    assert (five.status, five.tries, five.agent) == (TaskStatus.SUCCEEDED, 1, "a1")
    assert "finished on a1" in stack.log_text(five.log)
    assert "task ended: exit code 0" in stack.log_text(five.log)
    assert (after.status, after.agent) == (TaskStatus.SUCCEEDED, "a2")
    assert "after on a2" in stack.log_text(after.log)
    attempt = status.stage("dev").latest
    assert attempt is not None
    assert [(s.agent, s.lost, s.handed_back) for s in attempt.agents] == [
        ("a1", False, True),
        ("a2", False, False),
    ]
    assert "drained" in agent_log(stack, "a1")


STUCK = """
    name: stuck-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        agent_lost_retries: 0
        tasks:
          - name: long
            script: |
              if [ -f "$DIR/moved" ]; then echo "finished on $STAGEFLOW_AGENT"; exit 0; fi
              echo $$ > "$DIR/task.pid"
              sleep 300
"""


async def test_at_the_drain_timeout_the_task_is_stopped_and_runs_again_elsewhere(
    stack: Stack,
) -> None:
    pipeline = stack.write_pipeline(STUCK.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    first = await start_agent(stack, "a1", "--drain-timeout", "2s")
    ref, _ = await stack.create(pipeline)
    shell = await read_pid(stack.root / "task.pid")
    (stack.root / "moved").touch()
    first.send_signal(signal.SIGTERM)
    await start_agent(stack, "a2")

    status = await stack.wait_settled(ref, timeout=60)
    assert await exit_code(first, timeout=30) == 0
    await until_dead([shell])
    assert status.stage("dev").status == StageStatus.SUCCEEDED, summary(status)
    run = the_task(status, "long")
    assert len(run.logs) == 2 and run.log == run.logs[1]
    cut = stack.log_text(run.logs[0])
    assert "cut short: interrupted: agent a1 is stopping" in cut
    assert "finished on a2" in stack.log_text(run.log)


async def test_a_second_sigterm_stops_the_agent_at_once(stack: Stack) -> None:
    pipeline = stack.write_pipeline(STUCK.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    agent = await start_agent(stack, "a1", "--drain-timeout", "10m")
    await stack.create(pipeline)
    shell = await read_pid(stack.root / "task.pid")
    task_processes = [shell, *await children_of(shell)]
    agent.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        return "draining" in agent_log(stack, "a1")

    await wait_for(draining, what="the agent to drain")
    signaled = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    assert await exit_code(agent, timeout=5) != 0
    stopped = time.monotonic() - signaled
    dead = await until_dead(task_processes, timeout=5) - signaled
    print(f"\nsecond SIGTERM: agent gone in {stopped:.2f}s, its task {dead:.2f}s after the signal")
