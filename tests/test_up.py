"""`stageflow server` and `stageflow up` started and stopped as a user does: subprocesses
on free ports, stopped by their PID; their Temporal child dies with them, a taken port
is refused before anything starts, and a dead server ends `up` with the reason."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, wait_for
from worker.devserver import (
    PortTaken,
    free_port,
    start_dev_server,
    stop_process,
    wait_for_server,
)
from worker.up import RestartBudget, StackFailed, keep_running

START_SECONDS = 60.0  # the first start of a dev server creates its database
STOP_SECONDS = 30.0


class Launcher:
    """Starts `stageflow COMMAND --port P --data-dir D` and cleans up whatever is left."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []
        self.seen: list[psutil.Process] = []

    def start(self, command: str, port: int, *options: str) -> subprocess.Popen[bytes]:
        with open(self.log(command), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "starter.cli", command, "--port", str(port)]
                + ["--data-dir", str(self.root / "data"), *options],
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def log(self, command: str) -> Path:
        return self.root / f"{command}.log"

    async def temporal_child(
        self, process: subprocess.Popen[bytes], command: str, ready_line: str
    ) -> psutil.Process:
        """The `temporal` process under `process`, once `ready_line` is in its log."""

        async def ready() -> psutil.Process | None:
            if process.poll() is not None:
                raise AssertionError(
                    f"{command} exited with {process.returncode}:\n{self.log(command).read_text()}"
                )
            if ready_line not in self.log(command).read_text():
                return None
            return next(iter(temporal_children(process)), None)

        child = await wait_for(ready, timeout=START_SECONDS, what=f"{command} to be up")
        self.seen.append(child)
        return child

    def clean_up(self) -> None:
        for process in self.started:
            stop_process(process)
        for child in self.seen:
            if not gone(child):
                child.kill()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launched = Launcher(tmp_path)
    try:
        yield launched
    finally:
        launched.clean_up()


def temporal_children(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [child for child in children if child.name() == "temporal" and not gone(child)]


def gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def wait_gone(process: psutil.Process, what: str) -> None:
    async def check() -> bool:
        return gone(process)

    await wait_for(check, timeout=STOP_SECONDS, what=what)


async def wait_exit(process: subprocess.Popen[bytes], what: str) -> int:
    async def check() -> bool:
        return process.poll() is not None

    await wait_for(check, timeout=STOP_SECONDS, what=what)
    return process.returncode


def processes_on_port(port: int) -> list[int]:
    """Every live process whose command line names the port (a temporal started for it)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and "start-dev" in cmdline:
            if str(port) in cmdline:
                found.append(process.pid)
    return found


# --- stageflow server ---------------------------------------------------------------------


async def test_sigterm_to_server_stops_its_temporal_child_and_frees_the_port(
    launcher: Launcher,
) -> None:
    port = free_port()
    server = launcher.start("server", port, "--headless")
    child = await launcher.temporal_child(server, "server", "Temporal dev server on")

    server.send_signal(signal.SIGTERM)

    assert await wait_exit(server, "stageflow server to exit") == 0
    await wait_gone(child, f"temporal pid {child.pid} to end")

    async def freed() -> bool:
        return port_free(port)

    await wait_for(freed, timeout=STOP_SECONDS, what=f"port {port} to be free")


async def test_server_killed_9_takes_its_temporal_child_along(launcher: Launcher) -> None:
    port = free_port()
    server = launcher.start("server", port, "--headless")
    child = await launcher.temporal_child(server, "server", "Temporal dev server on")

    server.kill()

    assert await wait_exit(server, "stageflow server to die") == -signal.SIGKILL
    await wait_gone(child, f"temporal pid {child.pid} to end after its parent was killed")


async def test_a_server_that_fails_to_bind_is_not_taken_for_the_one_answering(
    tmp_path: Path,
) -> None:
    port = free_port()
    first = start_dev_server(tmp_path / "first", port, headless=True)
    try:
        await wait_for_server(f"127.0.0.1:{port}", timeout=START_SECONDS, process=first)
        second = start_dev_server(tmp_path / "second", port, headless=True)
        try:
            with pytest.raises(PortTaken, match=rf"port {port} is taken \(by pid {first.pid}"):
                await wait_for_server(f"127.0.0.1:{port}", timeout=START_SECONDS, process=second)
        finally:
            stop_process(second)
    finally:
        stop_process(first)


# --- stageflow up ---------------------------------------------------------------------------


@pytest.mark.parametrize("listening", [True, False], ids=["listening", "only-bound"])
async def test_up_on_a_taken_port_exits_2_with_one_line_and_starts_nothing(
    tmp_path: Path, listening: bool
) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        if listening:
            holder.listen()
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "starter.cli", "up", "--port", str(port), "--headless"]
            + ["--data-dir", str(tmp_path / "data")],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert processes_on_port(port) == []

    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    # A socket only bound, not listening, is not in /proc/net/tcp: no pid to name then.
    held = f" (by pid {os.getpid()}, " if listening else ":"
    assert line.startswith(f"error: port {port} is taken{held}"), line
    assert line.endswith(": stop it or use --port"), line
    assert "Stageflow is up" not in result.stdout


async def test_up_refuses_a_taken_web_ui_port(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + 1000))
        holder.listen()
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "starter.cli", "up", "--port", str(port)]
            + ["--data-dir", str(tmp_path / "data")],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: port {port + 1000} (the Web UI, --port + 1000) is taken")
    assert line.endswith("stop it, use another --port or --headless")


async def test_up_ends_with_exit_2_naming_the_cause_when_its_temporal_child_is_killed(
    launcher: Launcher,
) -> None:
    port = free_port()
    up = launcher.start("up", port, "--headless")
    child = await launcher.temporal_child(up, "up", "agent local-agent")

    child.kill()

    assert await wait_exit(up, "stageflow up to end after its server died") == 2
    log = launcher.log("up").read_text()
    assert f"error: the Temporal dev server (pid {child.pid}) was killed by SIGKILL" in log
    assert "Traceback" not in log


async def test_sigterm_to_up_stops_all_its_children(launcher: Launcher) -> None:
    port = free_port()
    up = launcher.start("up", port, "--headless")
    await launcher.temporal_child(up, "up", "agent local-agent")
    children = psutil.Process(up.pid).children(recursive=True)
    assert children

    up.send_signal(signal.SIGTERM)

    assert await wait_exit(up, "stageflow up to stop") == 0
    for child in children:
        await wait_gone(child, f"{child.pid} to end with up")
    assert port_free(port)


async def test_up_killed_9_takes_its_temporal_child_along(launcher: Launcher) -> None:
    port = free_port()
    up = launcher.start("up", port, "--headless")
    child = await launcher.temporal_child(up, "up", "agent local-agent")

    up.kill()

    assert await wait_exit(up, "stageflow up to die") == -signal.SIGKILL
    await wait_gone(child, f"temporal pid {child.pid} to end after up was killed")


# --- restarting the worker and the agent --------------------------------------------------


def test_a_part_crashing_in_a_row_is_restarted_three_times_then_given_up() -> None:
    budget = RestartBudget(limit=3, stable=60)
    assert [budget.allows_restart(ran_for=1) for _ in range(4)] == [True, True, True, False]


def test_a_part_that_ran_long_enough_gets_its_restarts_back() -> None:
    budget = RestartBudget(limit=3, stable=60)
    assert all(budget.allows_restart(ran_for=1) for _ in range(3))
    assert budget.allows_restart(ran_for=61)
    assert budget.used == 1


async def test_keep_running_restarts_a_crashing_part_and_then_gives_up_with_the_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = 0

    async def agent() -> None:
        nonlocal runs
        runs += 1
        raise OSError("disk full")

    with pytest.raises(StackFailed, match=r"the agent crashed: OSError: disk full \(restarted 2"):
        await keep_running("the agent", agent, asyncio.Event(), RestartBudget(limit=2, pause=0))
    assert runs == 3
    said = capsys.readouterr().err.splitlines()
    assert said == [
        "up: the agent crashed: OSError: disk full; restarting it (1 of 2)",
        "up: the agent crashed: OSError: disk full; restarting it (2 of 2)",
    ]


async def test_keep_running_ends_quietly_when_stopped() -> None:
    stop = asyncio.Event()

    async def worker() -> None:
        await stop.wait()

    stop_soon = asyncio.get_running_loop().call_soon(stop.set)
    await keep_running("the control worker", worker, stop, RestartBudget(limit=0))
    stop_soon.cancel()
