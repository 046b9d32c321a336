"""`stageflow up`: the local stack in the foreground — dev server, control worker, one agent."""

from __future__ import annotations

import asyncio
import signal

from worker.agent import AgentOptions, run_agent
from worker.control import run_control_worker
from worker.devserver import start_dev_server, stop_process, wait_for_server
from worker.settings import Settings, connect


async def run_stack(settings: Settings, port: int, *, headless: bool, pool: str) -> int:
    """Start everything, print where to look and what to try, stop it all on Ctrl-C."""
    settings = settings.with_flags(address=f"127.0.0.1:{port}")
    server = start_dev_server(settings.data_dir, port, headless=headless)
    try:
        await wait_for_server(
            settings.address,
            timeout=60,
            process=server,
            log_file=settings.data_dir / "temporal.log",
        )
        client = await connect(settings, identity="stageflow up")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        options = AgentOptions.build(settings, pool, "local-agent", 1, None)
        tasks = [
            asyncio.create_task(
                run_control_worker(
                    client, settings, stop, None if headless else f"http://127.0.0.1:{port + 1000}"
                )
            ),
            asyncio.create_task(run_agent(client, settings, options, stop)),
        ]
        print(f"Stageflow is up: Temporal at {settings.address}, data in {settings.data_dir}")
        print(settings.mail_destination())
        if not headless:
            print(f"Web UI:  http://127.0.0.1:{port + 1000}")
        print(
            "Try:\n"
            f"  export TEMPORAL_ADDRESS={settings.address}\n"
            "  stageflow release create examples/webapp/pipeline.yml --wait\n"
            "  stageflow release list\n"
            "  stageflow release show webapp/1\n"
            "Ctrl-C stops the server, the worker and the agent.",
            flush=True,
        )
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
        return 0
    finally:
        stop_process(server)
