"""Running a Temporal worker until told to stop, without letting it die unseen."""

from __future__ import annotations

import asyncio

from temporalio.worker import Worker


class WorkerStopped(RuntimeError):
    """A worker ended by itself (its polling failed for good): the process must know."""


async def run_until_stopped(worker: Worker, stop: asyncio.Event) -> None:
    """Run `worker` until `stop` is set, then shut it down gracefully.

    A worker that fails raises its error here, and one that ends by itself raises
    WorkerStopped, so the process (or `stageflow up`, which restarts it) sees it,
    instead of waiting on `stop` with nothing polling.
    """
    running = asyncio.create_task(worker.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if running.done():
        running.result()
        raise WorkerStopped(f"the worker on {worker.task_queue!r} stopped by itself")
    await worker.shutdown()
    await running
