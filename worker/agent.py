"""An agent process: leases jobs from one pool and runs their steps.

`stageflow agent --pool linux [--name N] [--capacity 1] [--work-dir D] [--drain-timeout 10m]`

Before it polls, an agent kills whatever its previous life in the same work dir
left running (processes carrying the work dir's mark, `activities/reaper.py`),
and it holds the work dir with a lock so no second agent shares it. The first
SIGTERM or SIGINT drains it: it takes no new job, lets running tasks finish for
up to the drain timeout, stops the rest and hands each job back (not a lost
agent: the job goes on elsewhere), then exits 0. A second signal ends it at once;
its tasks die with it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, NoReturn

from temporalio.client import Client
from temporalio.worker import Worker

from activities.agent import HEARTBEAT_THROTTLE, AgentActivities
from activities.gate_checks import run_check
from activities.log_store import DirectoryLogStore
from activities.reaper import kill_marked
from worker.settings import Settings
from workflows.names import agent_queue, pool_queue

DEFAULT_DRAIN_TIMEOUT = timedelta(minutes=10)
# After the drain: time for the lease activities to report their hand-back.
HAND_BACK_GRACE = timedelta(seconds=60)
# After the hand-back, the agent's own queue is served this long more: a step the
# workflow sent before it learnt of the hand-back is refused (LeaseHandedBack), so
# it does not wait on a queue nobody polls.
STRAGGLERS_SECONDS = 3.0
FORCED_EXIT_CODE = 1


class WorkDirInUse(RuntimeError):
    """Another agent process holds this work dir."""


@dataclass(frozen=True)
class AgentOptions:
    pool: str
    name: str
    capacity: int
    work_dir: Path
    drain_timeout: timedelta = DEFAULT_DRAIN_TIMEOUT

    @classmethod
    def build(
        cls,
        settings: Settings,
        pool: str,
        name: str | None,
        capacity: int,
        work_dir: str | None,
        drain_timeout: timedelta | None = None,
    ) -> AgentOptions:
        name = name or socket.gethostname()
        return cls(
            pool=pool,
            name=name,
            capacity=capacity,
            # Absolute: the work dir is the mark its tasks' processes carry.
            work_dir=(
                Path(work_dir).expanduser() if work_dir else settings.data_dir / "agents" / name
            ).absolute(),
            drain_timeout=DEFAULT_DRAIN_TIMEOUT if drain_timeout is None else drain_timeout,
        )


@dataclass
class AgentStop:
    """What stops an agent: the first signal drains it, a second ends it at once."""

    drain: asyncio.Event = field(default_factory=asyncio.Event)
    now: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def on_signals(cls) -> AgentStop:
        stop = cls()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.signaled)
        return stop

    def signaled(self) -> None:
        (self.now if self.drain.is_set() else self.drain).set()


async def run_agent(
    client: Client,
    settings: Settings,
    options: AgentOptions,
    stop: asyncio.Event | AgentStop,
) -> None:
    """Poll `pool/<pool>` for leases (one per free slot) and `agent/<id>` for steps
    until `stop` (its `drain` event, for an `AgentStop`); then drain."""
    stop = stop if isinstance(stop, AgentStop) else AgentStop(drain=stop)
    agent_id = f"{options.name}-{uuid.uuid4().hex[:8]}"
    options.work_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_work_dir(options.work_dir)
    try:
        sweep_previous_life(options.work_dir)
        activities = AgentActivities(
            client,
            agent_id=agent_id,
            agent_name=options.name,
            work_dir=options.work_dir,
            log_store=DirectoryLogStore(settings.log_dir),
            base_env=dict(os.environ),
            data_dir=settings.data_dir,
        )
        # The pool worker only polls while it has a free slot: one job per slot.
        pool_worker = Worker(
            client,
            task_queue=pool_queue(options.pool),
            activities=pool_activities(activities),
            max_concurrent_activities=options.capacity,
            identity=f"{agent_id} pid {os.getpid()}@{socket.gethostname()} pool {options.pool}",
            # A drain stops polling at once but lets the leases run to their hand-back.
            graceful_shutdown_timeout=options.drain_timeout + HAND_BACK_GRACE,
        )
        step_worker = Worker(
            client,
            task_queue=agent_queue(agent_id),
            activities=step_activities(activities),
            max_concurrent_activities=max(4, options.capacity * 4),
            # A cancel reaches a running step only in a heartbeat's answer: send them
            # often enough that `stageflow cancel` stops a task in well under a second.
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            identity=f"{agent_id} pid {os.getpid()}@{socket.gethostname()}",
            graceful_shutdown_timeout=HAND_BACK_GRACE,
        )
        async with step_worker, pool_worker:
            print(
                f"agent {options.name} ({agent_id}) polling pool {options.pool!r} "
                f"with capacity {options.capacity}, work dir {options.work_dir}",
                flush=True,
            )
            await stop.drain.wait()
            await _drain(activities, pool_worker, options, stop)
    finally:
        lock.close()


async def _drain(
    activities: AgentActivities, pool_worker: Worker, options: AgentOptions, stop: AgentStop
) -> None:
    running = activities.running()
    print(
        f"agent {options.name} draining: no new jobs; {len(running)} running task(s) get up "
        f"to {options.drain_timeout.total_seconds():g}s to finish, then the jobs go back "
        "(a second signal stops it at once)",
        flush=True,
    )
    stopping = asyncio.ensure_future(pool_worker.shutdown())  # no new lease from now on
    drained = asyncio.ensure_future(activities.drain(options.drain_timeout.total_seconds()))
    forced = asyncio.ensure_future(stop.now.wait())
    for step in (drained, stopping):
        await asyncio.wait({step, forced}, return_when=asyncio.FIRST_COMPLETED)
        if forced.done():
            _stop_at_once(activities, options)
    print(
        f"agent {options.name} drained: every job finished or handed back "
        f"({activities.handed_back} handed back)",
        flush=True,
    )
    if activities.handed_back:
        await asyncio.wait({forced}, timeout=STRAGGLERS_SECONDS)
        if forced.done():
            _stop_at_once(activities, options)
    forced.cancel()


def _stop_at_once(activities: AgentActivities, options: AgentOptions) -> NoReturn:
    left = activities.running()
    print(
        f"agent {options.name}: second signal, stopping at once; "
        f"{len(left)} running task(s) die with it",
        flush=True,
    )
    os._exit(FORCED_EXIT_CODE)  # the tasks' supervisors take their processes down


def hold_work_dir(work_dir: Path) -> IO[str]:
    """Lock the work dir for this process (released when it ends, even by kill -9):
    a second agent there would take the first one's tasks for leftovers."""
    lock = open(work_dir / "agent.lock", "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise WorkDirInUse(
            f"work dir {work_dir} is in use by {holder}: give each agent its own --work-dir"
        ) from None
    lock.truncate(0)
    lock.write(f"agent pid {os.getpid()}\n")
    lock.flush()
    return lock


def sweep_previous_life(work_dir: Path) -> None:
    """Kill what an earlier agent in this work dir left running (it died without
    its tasks' supervisors taking them down) and remove its jobs' work dirs."""
    for process in kill_marked(str(work_dir)):
        print(
            f"killed pid {process.pid} left running by an earlier agent in {work_dir} "
            f"(task try {process.run}): {process.cmdline}",
            flush=True,
        )
    shutil.rmtree(work_dir / "jobs", ignore_errors=True)


def pool_activities(agent: AgentActivities) -> list[Callable[..., Any]]:
    """What an agent serves on `pool/<pool>`: leases, and script gate checks."""
    return [agent.lease_agent, run_check]


def step_activities(agent: AgentActivities) -> list[Callable[..., Any]]:
    """What an agent serves on its own `agent/<id>` queue: the steps of a leased job."""
    return [
        agent.renew_lease,
        agent.download_artifacts,
        agent.run_task,
        agent.ship_logs,
        agent.cleanup,
    ]
