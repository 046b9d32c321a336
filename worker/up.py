"""`stageflow up` and `stageflow server`: the local stack in the foreground.

`server` runs the Temporal dev server alone; `up` runs it with a control worker
and one agent in this process, and whatever more parts its caller hands it
(`Part`: the command line adds the HTTP API this way, so worker/ never names
starter/). When something stops:

- Ctrl-C or SIGTERM: everything stops, exit 0; a second one stops what is still
  stopping (an agent handing back its job) at once.
- the Temporal server exits (a crash, a kill): fatal. The rest stops and the
  command ends with exit 2, the server's exit code and the end of its log. It is
  not restarted: a server that dies has a cause to look at (the database, the
  disk, memory), and one restarted under running deployments would hide it.
- the control worker, the agent or a part crashes: it is restarted, saying so on
  stderr, at most `RESTARTS` times in a row (a run that lasted `STABLE_SECONDS`
  forgives the crashes before it); one crash more ends `up` with exit 2.
- `up` or `server` is killed -9: the kernel sends the server SIGTERM (devserver.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.agent import AgentOptions, run_agent
from worker.control import run_control_worker
from worker.devserver import (
    ServerFailed,
    check_ports,
    exit_reason,
    process_exit,
    start_dev_server,
    stop_process,
    wait_for_server,
)
from worker.settings import Settings, connect

RESTARTS = 3
STABLE_SECONDS = 60.0
STARTUP_SECONDS = 60.0  # the first start of the dev server creates its database
# How long the worker and the agent get to stop once the server is gone.
STOP_SECONDS = 10.0


class StackFailed(RuntimeError):
    """A part of `up` kept crashing: one line saying which and why."""


@dataclass
class RestartBudget:
    """How often a crashed part is restarted: `limit` times in a row, where a run that
    lasted `stable` seconds starts the count again; `pause` seconds times the count
    before each restart, so a crash loop does not spin."""

    limit: int = RESTARTS
    stable: float = STABLE_SECONDS
    pause: float = 1.0
    used: int = 0

    def allows_restart(self, ran_for: float) -> bool:
        if ran_for >= self.stable:
            self.used = 0
        if self.used >= self.limit:
            return False
        self.used += 1
        return True


@dataclass(frozen=True)
class Part:
    """One more thing `up` runs beside the control worker and the agent, given by the
    caller. `run(settings, stop)` runs until `stop` is set (settings with the stack's
    Temporal address) and is restarted like the others when it crashes; `banner`
    lines go in the banner, after the Web UI's."""

    name: str
    run: Callable[[Settings, asyncio.Event], Awaitable[None]]
    banner: tuple[str, ...] = ()


class Signals:
    """SIGINT and SIGTERM: the first sets `stop`; the next cancels the `impatient` tasks."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.impatient: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._received)

    def _received(self) -> None:
        if self.stop.is_set():
            for task in self.impatient:
                task.cancel()
        self.stop.set()


async def run_server(settings: Settings, port: int, *, headless: bool) -> int:
    """The dev server alone, until a signal (exit 0) or its own end (ServerFailed)."""
    signals = Signals()
    log_file = settings.data_dir / "temporal.log"
    server = await _start_server(settings.data_dir, port, headless, log_file, signals.stop)
    if server is None:
        return 0
    try:
        print(
            f"Temporal dev server on 127.0.0.1:{port} (pid {server.pid}), "
            f"data in {settings.data_dir}, log in {log_file}"
        )
        if not headless:
            print(f"Web UI: http://127.0.0.1:{port + 1000}")
        print("Ctrl-C stops it.", flush=True)
        ended = asyncio.create_task(process_exit(server))
        stopped = asyncio.create_task(signals.stop.wait())
        await asyncio.wait({ended, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if server.poll() is not None:
            raise ServerFailed(exit_reason(server, log_file))
        return 0
    finally:
        stop_process(server)


async def run_stack(
    settings: Settings, port: int, *, headless: bool, pool: str, parts: Sequence[Part] = ()
) -> int:
    """Start everything (the server, the worker, the agent and `parts`), print where to
    look and what to try, stop it all on Ctrl-C.

    Raises ServerFailed when the server cannot start or dies, StackFailed when the
    worker, the agent or a part keeps crashing.
    """
    settings = settings.with_flags(address=f"127.0.0.1:{port}")
    signals = Signals()
    stop = signals.stop
    log_file = settings.data_dir / "temporal.log"
    server = await _start_server(settings.data_dir, port, headless, log_file, stop)
    if server is None:
        return 0
    try:
        client = await connect(settings, identity="stageflow up")
        web_ui = None if headless else f"http://127.0.0.1:{port + 1000}"
        options = AgentOptions.build(settings, pool, "local-agent", 1, None)
        running = [
            asyncio.create_task(
                keep_running(
                    "the control worker",
                    lambda: run_control_worker(client, settings, stop, web_ui),
                    stop,
                )
            ),
            asyncio.create_task(
                keep_running("the agent", lambda: run_agent(client, settings, options, stop), stop)
            ),
            *(
                asyncio.create_task(keep_running(part.name, _bound(part, settings, stop), stop))
                for part in parts
            ),
        ]
        signals.impatient = running
        _print_banner(
            settings, port, headless, log_file, [line for p in parts for line in p.banner]
        )
        server_ended = asyncio.create_task(process_exit(server))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({server_ended, stopped, *running}, return_when=asyncio.FIRST_COMPLETED)
        stop.set()  # whatever ended first, the rest stops now
        if server.poll() is not None:
            await _settle(running, STOP_SECONDS)
            raise ServerFailed(exit_reason(server, log_file))
        gave_up = [p for p in running if p.done() and not p.cancelled() and p.exception()]
        await _settle(running, STOP_SECONDS if gave_up else None)
        error = next((part.exception() for part in gave_up), None)
        if error is not None:
            raise error
        return 0
    finally:
        stop_process(server)


async def keep_running(
    name: str,
    run: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    budget: RestartBudget | None = None,
) -> None:
    """Run `run` until `stop` is set, restarting it when it crashes while the budget allows."""
    budget = budget or RestartBudget()
    while True:
        began = time.monotonic()
        try:
            await run()
            failure = "stopped by itself"
        except Exception as err:
            failure = f"crashed: {type(err).__name__}: {_first_line(err)}"
        if stop.is_set():
            return
        if not budget.allows_restart(time.monotonic() - began):
            raise StackFailed(f"{name} {failure} (restarted {budget.limit} times; giving up)")
        print(
            f"up: {name} {failure}; restarting it ({budget.used} of {budget.limit})",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=budget.pause * budget.used)
        if stop.is_set():
            return


async def _start_server(
    data_dir: Path, port: int, headless: bool, log_file: Path, stop: asyncio.Event
) -> subprocess.Popen[bytes] | None:
    """The dev server once it answers from the process we started; None if a signal came
    first. Raises PortTaken before starting when a port is held, ServerFailed when it exits."""
    check_ports(port, headless=headless)
    server = start_dev_server(data_dir, port, headless=headless, log_file=log_file)
    try:
        ready = asyncio.create_task(
            wait_for_server(
                f"127.0.0.1:{port}", timeout=STARTUP_SECONDS, process=server, log_file=log_file
            )
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not ready.done():
            ready.cancel()
            stop_process(server)
            return None
        ready.result()
        return server
    except BaseException:
        stop_process(server)
        raise


async def _settle(tasks: list[asyncio.Task[None]], timeout: float | None) -> None:
    """Wait for `tasks` to end (at most `timeout` seconds, then cancel them)."""
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _bound(part: Part, settings: Settings, stop: asyncio.Event) -> Callable[[], Awaitable[None]]:
    return lambda: part.run(settings, stop)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


def _print_banner(
    settings: Settings, port: int, headless: bool, log_file: Path, more: list[str]
) -> None:
    print(f"Stageflow is up: Temporal at {settings.address}, data in {settings.data_dir}")
    print(settings.mail_destination())
    if not headless:
        print(f"Web UI:  http://127.0.0.1:{port + 1000}")
    for line in more:
        print(line)
    print(
        f"Server log: {log_file}\n"
        "Try (signed in as the admin `up` made, or `stageflow login`):\n"
        "  stageflow release create examples/webapp/pipeline.yml --wait\n"
        "  stageflow release list\n"
        "  stageflow release show webapp/1\n"
        "Ctrl-C stops them all.",
        flush=True,
    )
