"""A worker that fails is seen by its process (and so by `stageflow up`, which
restarts it), instead of dying while the process waits on its stop event."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from worker.control import SANDBOX, WORKFLOWS
from worker.running import run_until_stopped


async def test_a_worker_that_cannot_run_raises_instead_of_hanging(dev_server: str) -> None:
    # A namespace that does not exist: the worker's first poll fails for good.
    client = await Client.connect(
        dev_server, namespace="no-such-namespace", data_converter=pydantic_data_converter
    )
    worker = Worker(client, task_queue="q", workflows=WORKFLOWS, workflow_runner=SANDBOX)
    with pytest.raises(Exception, match="(?i)namespace"):
        await asyncio.wait_for(run_until_stopped(worker, asyncio.Event()), timeout=60)


async def test_a_stopped_worker_shuts_down_and_returns(client: Client) -> None:
    worker = Worker(client, task_queue="running-test", workflows=WORKFLOWS, workflow_runner=SANDBOX)
    stop = asyncio.Event()
    running = asyncio.create_task(run_until_stopped(worker, stop))
    stop.set()
    await asyncio.wait_for(running, timeout=30)
    assert running.exception() is None
