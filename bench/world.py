"""The benchmark's world: one dev server, Stageflow's processes, the bare worker.

Everything is started on loopback, on free ports, in one temporary directory,
and stopped by PID (process group) when the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode

from activities.artifact_pinning import resolve_artifacts
from activities.pipeline_loader import load_pipeline
from starter.polling import poll
from starter.releases import ReleaseRef, create_release
from worker.devserver import (
    dev_server_command,
    free_port,
    start_dev_server,
    stop_process,
    wait_for_server,
)
from workflows.names import pipeline_workflow_id, pool_queue
from workflows.pipeline_workflow import NewRelease, PipelineState, PipelineWorkflow

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

WORKFLOW = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW
ACTIVITY = TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY

CHILD_DONE = {
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT,
    EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED,
}


async def wait_for(
    check: Callable[[], Awaitable[T]], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll `check` until it returns something truthy; TimeoutError after `timeout` s."""
    last = await poll(check, timeout=timeout, interval=interval)
    if last:
        return last
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def event_time(event: HistoryEvent) -> float:
    """An event's server time as unix seconds (the server runs on this machine)."""
    return event.event_time.ToNanoseconds() / 1e9


async def wait_for_children(
    client: Client, workflow_id: str, count: int, timeout: float
) -> list[HistoryEvent]:
    """Long-poll a workflow's history until `count` children have ended; their end events.

    The server pushes new events, so nothing polls a worker (a query would) and
    the times are the server's own.
    """

    async def follow() -> list[HistoryEvent]:
        done: list[HistoryEvent] = []
        handle = client.get_workflow_handle(workflow_id)
        async for event in handle.fetch_history_events(wait_new_event=True):
            if event.event_type in CHILD_DONE:
                done.append(event)
                if len(done) >= count:
                    return done
        raise RuntimeError(f"{workflow_id} closed after {len(done)} of {count} children")

    return await asyncio.wait_for(follow(), timeout)


def quiet_runtime() -> Runtime:
    """A client runtime that logs errors only: the throughput burst makes the SDK warn on
    every retried update, and the benchmark counts those itself."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


def spawn_python(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`python ARGV` from the repository root in its own process group; output to a file."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), **env}
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()


def start_server_with_pragmas(
    data_dir: Path, port: int, pragmas: list[str] | None, dynamic_config: list[str]
) -> subprocess.Popen[bytes]:
    """Stageflow's dev server command with other `--sqlite-pragma` values (None: the same)
    and `--dynamic-config-value KEY=VALUE` settings."""
    command = dev_server_command(data_dir, port, headless=True)
    kept: list[str] = []
    skip = False
    for arg in command:
        if skip:
            skip = False
        elif arg == "--sqlite-pragma" and pragmas is not None:
            skip = True
        else:
            kept.append(arg)
    for pragma in pragmas or []:
        kept += ["--sqlite-pragma", pragma]
    for setting in dynamic_config:
        kept += ["--dynamic-config-value", setting]
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "temporal.log", "ab") as log:
        return subprocess.Popen(
            kept,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass
class World:
    """One benchmark run's server and processes."""

    root: Path
    address: str
    client: Client
    server: subprocess.Popen[bytes]
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server_seconds: float = 0.0
    retries: Counter[str] = field(default_factory=Counter)  # by create_persistently
    # The API user commands go through (`signed_in`), and the people's tokens.
    api_url: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def task_queue(self) -> str:
        return f"bench-stageflow-{self.suffix}"

    @property
    def bare_queue(self) -> str:
        return f"bench-bare-{self.suffix}"

    @property
    def bare_remote_queue(self) -> str:
        return f"bench-bare-remote-{self.suffix}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def pool(self, name: str) -> str:
        return f"bench-{name}-{self.suffix}"

    @classmethod
    async def start(
        cls, root: Path, pragmas: list[str] | None = None, dynamic_config: list[str] | None = None
    ) -> World:
        """Start the dev server as `stageflow server` does (SQLite, WAL, synchronous=full),
        or with other SQLite pragmas, to compare settings."""
        port = free_port()
        started = time.monotonic()
        if pragmas is None and not dynamic_config:
            server = start_dev_server(root / "temporal", port, headless=True)
        else:
            server = start_server_with_pragmas(
                root / "temporal", port, pragmas, dynamic_config or []
            )
        address = f"127.0.0.1:{port}"
        try:
            await wait_for_server(address, timeout=60)
            client = await Client.connect(
                address, data_converter=pydantic_data_converter, runtime=quiet_runtime()
            )
        except BaseException:
            stop_process(server)
            raise
        world = cls(root=root, address=address, client=client, server=server)
        world.server_seconds = time.monotonic() - started
        return world

    # --- processes ---------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TEMPORAL_ADDRESS=self.address,
            TEMPORAL_NAMESPACE="default",
            STAGEFLOW_DATA_DIR=str(self.data_dir),
            STAGEFLOW_TASK_QUEUE=self.task_queue,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def spawn(self, argv: list[str], log_name: str, **env: str) -> subprocess.Popen[bytes]:
        """Start `python ARGV` in its own process group, output to `<root>/<log_name>.log`."""
        process = spawn_python(argv, self.root / f"{log_name}.log", self.env(**env))
        self.processes.append(process)
        return process

    async def start_worker(self) -> subprocess.Popen[bytes]:
        """A Stageflow control worker process (`stageflow worker`)."""
        process = self.spawn(["-m", "starter.cli", "worker"], "worker")
        await self.wait_for_poller(process, self.task_queue, WORKFLOW)
        return process

    async def start_agent(self, name: str, pool: str, capacity: int = 1) -> subprocess.Popen[bytes]:
        """A Stageflow agent process (`stageflow agent`) in `pool` (a name from `pool()`)."""
        process = self.spawn(
            [
                "-m",
                "starter.cli",
                "agent",
                "--pool",
                pool,
                "--name",
                name,
                "--capacity",
                str(capacity),
                "--work-dir",
                str(self.root / "agents" / name),
            ],
            f"agent-{name}",
        )
        await self.wait_for_poller(process, pool_queue(pool), ACTIVITY)
        return process

    async def signed_in(self, user: str) -> dict[str, str]:
        """The environment of a `stageflow` user command run by `user`: an API of this
        world (`stageflow serve`, started by the first call) and a token of theirs."""
        if self.api_url is None:
            self.api_url = await self.start_api()
        if user not in self.tokens:
            self.tokens[user] = await self._token(user)
        return {"STAGEFLOW_URL": self.api_url, "STAGEFLOW_TOKEN": self.tokens[user]}

    async def start_api(self) -> str:
        """`stageflow serve` on a free port; its URL once it listens."""
        process = self.spawn(["-m", "starter.cli", "serve", "--port", "0"], "api")
        log = self.root / "api.log"

        async def listening() -> str | None:
            if process.poll() is not None:
                raise RuntimeError(f"stageflow serve exited with {process.returncode}; see {log}")
            found = re.search(r"^API at (http://\S+)$", log.read_text(), re.MULTILINE)
            return found.group(1) if found else None

        url = await poll(listening, timeout=60)
        if url is None:
            raise TimeoutError(f"stageflow serve did not listen within 60 s; see {log}")
        return url

    async def _token(self, user: str) -> str:
        """A person of the world's record (the API has migrated it), an admin of Stageflow
        (who may read everything; decisions still count only where a pipeline names
        them), and a token of theirs."""
        from activities.record import open_database
        from activities.record.identity import add_user, create_token
        from worker.settings import Settings

        db = open_database(Settings.from_env(self.env()).record_url)
        try:
            made = await create_token(db, await add_user(db, user, admin=True), name="bench")
        finally:
            await db.close()
        return made.token.get_secret_value()

    async def start_bare_worker(self, queue: str | None = None) -> subprocess.Popen[bytes]:
        """The bare shape's worker process (workflows and activities)."""
        queue = queue or self.bare_queue
        process = self.spawn(
            ["-m", "bench.bare_worker", "--address", self.address, "--task-queue", queue],
            f"bare-{queue}",
        )
        await self.wait_for_poller(process, queue, WORKFLOW)
        await self.wait_for_poller(process, queue, ACTIVITY)
        return process

    async def pollers(self, queue: str, kind: TaskQueueType.ValueType) -> set[str]:
        response = await self.client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace="default", task_queue=TaskQueue(name=queue), task_queue_type=kind
            )
        )
        return {p.identity for p in response.pollers}

    async def wait_for_poller(
        self, process: subprocess.Popen[bytes], queue: str, kind: TaskQueueType.ValueType
    ) -> None:
        """Wait until the new process polls `queue` (its identity carries its PID)."""

        async def polling() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
            return any(f"pid {process.pid}" in i for i in await self.pollers(queue, kind))

        await wait_for(polling, timeout=60, what=f"pid {process.pid} polling {queue}")

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(process)

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """kill -9 of one process we started (not its group: its task stays orphaned)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def close(self) -> None:
        for process in reversed(self.processes):
            stop_process(process)
        stop_process(self.server)

    # --- Stageflow releases --------------------------------------------------------

    def write_pipeline(self, name: str, text: str) -> Path:
        path = self.root / "pipelines" / f"{name}.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    async def create(self, pipeline: Path, user: str = "bench") -> ReleaseRef:
        """A release, created as `stageflow release create` does."""
        created = await create_release(self.client, pipeline, user=user, task_queue=self.task_queue)
        return ReleaseRef(created.workflow_id.split("/")[1], created.number)

    async def create_persistently(self, pipeline: Path, user: str = "bench") -> ReleaseRef:
        """What `create_release` sends, sent again (same request id, so at most one
        release) while the server refuses it — too many in-flight updates on the pipeline
        workflow — or the update outlasts the RPC. Each retry is counted in `retries`."""
        definition, revision = load_pipeline(pipeline)
        request = NewRelease(
            pipeline=definition,
            revision=revision,
            artifacts=resolve_artifacts(definition.artifacts, pipeline.resolve(), {}),
            created_by=user,
            request_id=uuid.uuid4().hex,
        )
        deadline = time.monotonic() + 600
        backoff = 0.2
        while True:
            try:
                created = await self.client.execute_update_with_start_workflow(
                    PipelineWorkflow.create_release,
                    request,
                    start_workflow_operation=WithStartWorkflowOperation(
                        PipelineWorkflow.run,
                        PipelineState(name=definition.name),
                        id=pipeline_workflow_id(definition.name),
                        task_queue=self.task_queue,
                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                    ),
                )
                return ReleaseRef(created.workflow_id.split("/")[1], created.number)
            except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as err:
                retryable = isinstance(err, WorkflowUpdateRPCTimeoutOrCancelledError) or (
                    err.status in (RPCStatusCode.RESOURCE_EXHAUSTED, RPCStatusCode.UNAVAILABLE)
                )
                if not retryable or time.monotonic() > deadline:
                    raise
                self.retries[type(err).__name__ + ": " + str(err)[:80]] += 1
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)
