"""`python -m bench.bare_worker --address A --task-queue Q`: the bare shape's worker.

A process of its own, with the same converter, sandbox settings and workflow
task slots as Stageflow's control worker; it runs the bare activities too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from bench.bare import ACTIVITIES, WORKFLOWS
from worker.control import SANDBOX


async def serve(address: str, task_queue: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=ACTIVITIES,
        workflow_runner=SANDBOX,
        max_concurrent_workflow_tasks=100,
        identity=f"bare pid {os.getpid()}@{socket.gethostname()}",
    )
    async with worker:
        print(f"bare worker polling {task_queue}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--task-queue", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.address, args.task_queue))
    os._exit(0)  # sdk-python #300: do not let runtime teardown change the exit code


if __name__ == "__main__":
    main()
