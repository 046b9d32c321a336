"""An agent process: leases jobs from one pool and runs their steps.

`stageflow agent --pool linux [--name N] [--capacity 1] [--work-dir D]`
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.agent import HEARTBEAT_THROTTLE, AgentActivities
from activities.gate_checks import run_check
from activities.log_store import DirectoryLogStore
from worker.settings import Settings
from workflows.names import agent_queue, pool_queue


@dataclass(frozen=True)
class AgentOptions:
    pool: str
    name: str
    capacity: int
    work_dir: Path

    @classmethod
    def build(
        cls, settings: Settings, pool: str, name: str | None, capacity: int, work_dir: str | None
    ) -> AgentOptions:
        name = name or socket.gethostname()
        return cls(
            pool=pool,
            name=name,
            capacity=capacity,
            work_dir=Path(work_dir).expanduser()
            if work_dir
            else settings.data_dir / "agents" / name,
        )


async def run_agent(
    client: Client, settings: Settings, options: AgentOptions, stop: asyncio.Event
) -> None:
    """Poll `pool/<pool>` for leases (one per free slot) and `agent/<id>` for steps."""
    agent_id = f"{options.name}-{uuid.uuid4().hex[:8]}"
    options.work_dir.mkdir(parents=True, exist_ok=True)
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
    )
    async with step_worker, pool_worker:
        print(
            f"agent {options.name} ({agent_id}) polling pool {options.pool!r} "
            f"with capacity {options.capacity}, work dir {options.work_dir}",
            flush=True,
        )
        await stop.wait()


def pool_activities(agent: AgentActivities) -> list[Callable[..., Any]]:
    """What an agent serves on `pool/<pool>`: leases, and script gate checks."""
    return [agent.lease_agent, run_check]


def step_activities(agent: AgentActivities) -> list[Callable[..., Any]]:
    """What an agent serves on its own `agent/<id>` queue: the steps of a leased job."""
    return [agent.download_artifacts, agent.run_task, agent.ship_logs, agent.cleanup]
