"""`make demo`: the local stack, one release of examples/webapp through dev → qa → prod.

Starts `stageflow up` in the background, waits until the server answers, its
agent polls the `linux` pool and its API answers (the commands below go through
it, signed in with the credentials `up` saves on a new data dir), creates a
release with `--wait`, shows it, says
where the files landed, then stops what it started. Every run makes the next
release (Release-1, Release-2, ...); releases and files stay in the data dir.

Settings: $STAGEFLOW_DEMO_PORT (default 7233; the Web UI is on port + 1000),
$STAGEFLOW_DEMO_API_PORT (default 8080) and $STAGEFLOW_DATA_DIR (default ~/.stageflow). Exit code: the release's (0 when every
stage succeeded, 1 when one failed), 2 when the port is taken, 1 when the stack
does not come up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, GetSystemInfoRequest
from temporalio.client import Client

from workflows.names import pool_queue

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = Path("examples/webapp/pipeline.yml")  # relative to ROOT, as a user would type it
POOL = "linux"
STAGES = ("dev", "qa", "prod")
STARTUP_SECONDS = 120.0  # the first start of the dev server creates its database
RELEASE_SECONDS = 600.0
STOP_SECONDS = 20.0
CREATED = re.compile(r"^created (\S+) (.+) \((\S+/\d+)\)$")


@dataclass(frozen=True)
class DemoSettings:
    port: int
    data_dir: Path
    api_port: int = 8080

    @classmethod
    def from_env(cls) -> DemoSettings:
        ports = []
        for name, default in (("STAGEFLOW_DEMO_PORT", "7233"), ("STAGEFLOW_DEMO_API_PORT", "8080")):
            text = os.environ.get(name, default)
            if not text.isdigit() or not 0 < int(text) < 64536:
                raise ValueError(f"{name}={text!r} is not a port (1-64535)")
            ports.append(int(text))
        data_dir = Path(os.environ.get("STAGEFLOW_DATA_DIR") or "~/.stageflow").expanduser()
        return cls(port=ports[0], data_dir=data_dir, api_port=ports[1])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def web_ui(self) -> str:
        return f"http://127.0.0.1:{self.port + 1000}/namespaces/default/workflows"

    @property
    def up_log(self) -> Path:
        return self.data_dir / "demo-up.log"

    def child_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TEMPORAL_ADDRESS": self.address,
            "STAGEFLOW_DATA_DIR": str(self.data_dir),
            # The commands go through this stack's API, with the token saved for it.
            "STAGEFLOW_URL": self.api_url,
            "PYTHONUNBUFFERED": "1",
        }


class StackDidNotStart(Exception):
    pass


def main() -> NoReturn:
    """Run the demo; leaves with os._exit so a client torn down badly at interpreter
    exit (sdk-python #300) cannot change the exit code."""
    try:
        code = run()
    except KeyboardInterrupt:
        code = 130
    except subprocess.TimeoutExpired as err:
        print(f"demo: {err}", file=sys.stderr)
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def run() -> int:
    try:
        settings = DemoSettings.from_env()
    except ValueError as err:
        print(f"demo: {err}", file=sys.stderr)
        return 2
    ports = (settings.port, settings.port + 1000, settings.api_port)
    taken = [port for port in ports if not _port_free(port)]
    if taken:
        print(
            f"demo: port {taken[0]} on 127.0.0.1 is taken (is `stageflow up` already running?);"
            " stop it or choose other ports with STAGEFLOW_DEMO_PORT / STAGEFLOW_DEMO_API_PORT",
            file=sys.stderr,
        )
        return 2
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"demo: starting the local stack on {settings.address} (log: {settings.up_log})", flush=True
    )
    up = _start_up(settings)
    try:
        try:
            asyncio.run(_wait_until_ready(settings, up))
        except StackDidNotStart as err:
            print(f"demo: {err}; the end of {settings.up_log}:", file=sys.stderr)
            print(_tail(settings.up_log), file=sys.stderr)
            server_log = settings.data_dir / "temporal.log"  # where `up` sends the server's output
            print(f"demo: the end of {server_log}:", file=sys.stderr)
            print(_tail(server_log, lines=5), file=sys.stderr)
            return 1
        print(f"demo: ready; creating a release of {PIPELINE}\n", flush=True)
        code, reference = _create_release(settings)
        if reference is None:
            return code or 1
        print(f"\n$ stageflow release show {reference}", flush=True)
        _stageflow(settings, "release", "show", reference)
        _print_where(settings, reference)
        return code
    finally:
        _stop(settings, up)


# --- the stack ------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_up(settings: DemoSettings) -> subprocess.Popen[bytes]:
    """`stageflow up` in its own process group, so we can stop it and all it runs."""
    with open(settings.up_log, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "starter.cli", "up", "--port", str(settings.port)]
            + ["--api-port", str(settings.api_port)],
            cwd=ROOT,
            env=settings.child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _wait_until_ready(settings: DemoSettings, up: subprocess.Popen[bytes]) -> None:
    """Until the server answers, the stack's own agent polls the pool and its API answers,
    with a deadline."""
    deadline = time.monotonic() + STARTUP_SECONDS
    client: Client | None = None
    polled = False
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise StackDidNotStart(f"`stageflow up` exited with code {up.returncode}")
        try:
            if client is None:
                candidate = await asyncio.wait_for(Client.connect(settings.address), 5)
                await candidate.workflow_service.get_system_info(GetSystemInfoRequest())
                client = candidate
            polled = polled or await _agent_polls(client, up.pid)
            if polled and await _api_answers(settings):
                return
        except Exception:  # not up yet; try again until the deadline
            pass
        await asyncio.sleep(0.2)
    waited_for = (
        "the Temporal server"
        if client is None
        else f"an agent polling pool {POOL!r}"
        if not polled
        else f"the API at {settings.api_url}"
    )
    raise StackDidNotStart(f"gave up after {STARTUP_SECONDS:.0f}s waiting for {waited_for}")


async def _api_answers(settings: DemoSettings) -> bool:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(f"{settings.api_url}/healthz")).status_code == 200


async def _agent_polls(client: Client, pid: int) -> bool:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace="default",
            task_queue=TaskQueue(name=pool_queue(POOL)),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    # The agent inside `stageflow up` names its process in its identity.
    return any(f"pid {pid}@" in poller.identity for poller in response.pollers)


def _stop(settings: DemoSettings, up: subprocess.Popen[bytes]) -> None:
    """Stop `stageflow up` by its process group: SIGINT (it stops the server, worker and
    agent cleanly), then SIGKILL after a deadline."""
    if up.poll() is not None:
        return
    print("demo: stopping the local stack", flush=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(up.pid, signal.SIGINT)
    try:
        up.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
        up.wait()
        # The dev server runs in a process group of its own, which `up` would have stopped.
        print(
            f"demo: `stageflow up` did not stop within {STOP_SECONDS:.0f}s and was killed;"
            f" its Temporal dev server may still run on port {settings.port}",
            file=sys.stderr,
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"(cannot read it: {err.strerror})"


# --- the release ----------------------------------------------------------------------


def _stageflow(settings: DemoSettings, *args: str) -> int:
    """Run a `stageflow` command as a user would; its output goes to ours."""
    return subprocess.run(
        [sys.executable, "-m", "starter.cli", *args],
        cwd=ROOT,
        env=settings.child_env(),
        stdin=subprocess.DEVNULL,
        timeout=120,
    ).returncode


def _create_release(settings: DemoSettings) -> tuple[int, str | None]:
    """`stageflow release create ... --wait`, echoed live; (exit code, `webapp/N`)."""
    print(f"$ stageflow release create {PIPELINE} --wait", flush=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "starter.cli", "release", "create", str(PIPELINE), "--wait"],
        cwd=ROOT,
        env=settings.child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    # A deadline for the whole release, so a stuck stage cannot hang the demo.
    timer = threading.Timer(RELEASE_SECONDS, process.kill)
    timer.start()
    reference = None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            match = CREATED.match(line.rstrip("\n"))
            if reference is None and match:
                reference = match.group(3)
        code = process.wait()
    finally:
        timer.cancel()
    if code < 0:
        print(f"demo: the release did not settle within {RELEASE_SECONDS:.0f}s", file=sys.stderr)
        code = 1
    return code, reference


def _print_where(settings: DemoSettings, reference: str) -> None:
    pipeline = reference.split("/")[0]
    deployments = settings.data_dir / "deployments" / pipeline
    print(f"\nWeb UI: {settings.web_ui}")
    print("  (the demo stops the stack when it ends; `make up` keeps it running to browse)")
    print(f"\nFiles of {reference} under {deployments}:")
    for stage in STAGES:
        current = deployments / stage / "current"
        if current.is_symlink():
            print(f"  {stage:<5} {current} -> {os.readlink(current)}  ({current.resolve()})")
        else:
            print(f"  {stage:<5} {current}: not deployed")
    config = deployments / "prod" / "current" / "config.ini"
    if config.is_file():
        print(f"\nprod's rendered config, {config.resolve()}:")
        for line in config.read_text().splitlines():
            print(f"  {line}")
    print(
        f"\nTask logs: {settings.data_dir / 'logs' / pipeline}  (or `stageflow logs {reference}`)"
    )


if __name__ == "__main__":
    main()
