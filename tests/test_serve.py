"""`stageflow serve`, `stageflow user add` and the first admin of `stageflow up`, run as a
user does: real subprocesses on free ports, each stopped by its PID, waited on with
deadlines. Each test has its own data dir and config home (credentials)."""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activities.record import default_database_url, open_database
from activities.record.identity import TOKEN_PATTERN, get_user, list_tokens
from starter.credentials import current_credentials
from starter.people import bootstrap_admin
from tests.conftest import ROOT, wait_for
from worker.devserver import free_port, stop_process
from worker.settings import Settings

SERVE_SECONDS = 30.0
UP_SECONDS = 90.0  # `up` starts a dev server first (a new database takes a while)
STOP_SECONDS = 30.0


class World:
    """One test's data dir, config home and the processes it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_home(self) -> Path:
        return self.root / "config"

    @property
    def credentials(self) -> Path:
        return self.config_home / "stageflow" / "credentials"

    def env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("STAGEFLOW_", "TEMPORAL_"))
        }
        env.update(
            STAGEFLOW_DATA_DIR=str(self.data_dir),
            XDG_CONFIG_HOME=str(self.config_home),
            # Nothing here needs Temporal until `up` gives its own address.
            TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
            PYTHONUNBUFFERED="1",
        )
        return env

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "starter.cli", *args],
            cwd=ROOT,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log(args[0]), "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "starter.cli", *args],
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self, command: str) -> Path:
        return self.root / f"{command}.log"

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process(process)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    here = World(tmp_path)
    try:
        yield here
    finally:
        here.stop_all()


async def wait_healthy(
    world: World, process: subprocess.Popen[bytes], command: str, url: str, timeout: float
) -> None:
    """Until GET /healthz answers 200 (failing at once if `command` ended)."""

    async def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"{command} exited with {process.returncode}:\n{world.log(command).read_text()}"
            )
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                response = await http.get(f"{url}/healthz")
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json() == {"status": "ok"}

    await wait_for(healthy, timeout=timeout, what=f"{url}/healthz")


async def wait_exit(process: subprocess.Popen[bytes], what: str) -> int:
    async def ended() -> bool:
        return process.poll() is not None

    await wait_for(ended, timeout=STOP_SECONDS, what=what)
    return process.returncode


def me(url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{url}/api/v1/me", headers=headers, timeout=10)


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.splitlines()[-1]


# --- stageflow serve ------------------------------------------------------------------------


async def test_serve_on_a_fresh_data_dir_answers_healthz_to_anyone_and_me_only_with_a_token(
    world: World,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = world.spawn("serve", "--port", str(port))
    await wait_healthy(world, serve, "serve", url, SERVE_SECONDS)
    assert f"API at {url}\n" in world.log("serve").read_text()

    anonymous = me(url, None)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    assert me(url, "sft_0123456789abcdef_" + "x" * 43).status_code == 401

    # The running server migrated the record: `user add` beside it finds the schema.
    added = world.cli("user", "add", "alice", "--admin")
    assert added.returncode == 0, added.stderr
    token = last_line(added)
    answer = me(url, token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"] == "alice"
    assert answer.json()["is_admin"] is True

    serve.send_signal(signal.SIGTERM)
    assert await wait_exit(serve, "serve to stop on SIGTERM") == 0
    log = world.log("serve").read_text()
    assert token not in log
    assert "Traceback" not in log


async def test_serve_stops_on_sigint_with_exit_0(world: World) -> None:
    port = free_port()
    serve = world.spawn("serve", "--port", str(port))
    await wait_healthy(world, serve, "serve", f"http://127.0.0.1:{port}", SERVE_SECONDS)

    serve.send_signal(signal.SIGINT)

    assert await wait_exit(serve, "serve to stop on SIGINT") == 0
    assert "Traceback" not in world.log("serve").read_text()


def test_serve_on_a_taken_port_exits_2_with_one_line(world: World) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = world.cli("serve", "--port", str(port), timeout=SERVE_SECONDS)

    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: port {port} on 127.0.0.1 is taken"), line
    assert line.endswith("stop what holds it or use --port"), line
    assert "API at" not in result.stdout


# --- stageflow user add ---------------------------------------------------------------------


def test_user_add_prints_the_new_persons_token_alone_on_its_last_line(world: World) -> None:
    result = world.cli("user", "add", "bob", "--email", "bob@example.com")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "created user bob (bob@example.com)"
    assert TOKEN_PATTERN.fullmatch(lines[-1]), lines[-1]
    assert sum(lines[-1] in line for line in lines) == 1
    assert result.stderr == ""


def test_user_add_json_gives_the_user_and_the_token(world: World) -> None:
    result = world.cli("user", "add", "carol", "--admin", "--json")

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert set(answer) == {"user", "token"}
    assert answer["user"]["name"] == "carol"
    assert answer["user"]["is_admin"] is True
    assert TOKEN_PATTERN.fullmatch(answer["token"])


async def test_user_add_of_an_existing_name_exits_2_naming_it_and_creates_nothing(
    world: World,
) -> None:
    assert world.cli("user", "add", "alice").returncode == 0

    again = world.cli("user", "add", "alice", "--email", "other@example.com", "--admin")

    assert again.returncode == 2
    assert again.stderr == "error: a user named 'alice' exists already\n"
    assert again.stdout == ""
    db = open_database(default_database_url(world.data_dir))
    try:
        alice = await get_user(db, "alice")
        assert alice is not None
        assert (alice.email, alice.is_admin) == (None, False)
        assert len(await list_tokens(db, alice)) == 1
    finally:
        await db.close()


# --- the first admin (stageflow up) ------------------------------------------------------


async def test_the_first_admin_is_made_only_on_a_record_with_nobody_in_it(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    credentials = tmp_path / "config" / "stageflow" / "credentials"

    made = await bootstrap_admin(settings, "root", "http://127.0.0.1:8080", credentials)

    assert made is not None
    user, path = made
    assert (user.name, user.is_admin, path) == ("root", True, credentials)
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    written = credentials.read_text()
    assert await bootstrap_admin(settings, "someone", "http://127.0.0.1:9090", credentials) is None
    assert credentials.read_text() == written


async def test_up_on_a_new_data_dir_makes_the_os_user_admin_with_credentials_that_work(
    world: World,
) -> None:
    api_port = free_port()
    url = f"http://127.0.0.1:{api_port}"
    up = world.spawn("up", "--port", str(free_port()), "--headless", "--api-port", str(api_port))

    await wait_healthy(world, up, "up", url, UP_SECONDS)

    # The first admin is made before the API listens: its credentials are there now.
    assert stat.S_IMODE(world.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(world.credentials.parent.stat().st_mode) == 0o700
    found = current_credentials({"XDG_CONFIG_HOME": str(world.config_home)})
    assert found is not None
    assert found.url == url
    answer = me(url, found.token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["user"] == getpass.getuser()
    assert answer.json()["is_admin"] is True

    up.send_signal(signal.SIGTERM)
    assert await wait_exit(up, "up to stop on SIGTERM") == 0
    log = world.log("up").read_text()
    assert f"API:     {url}\n" in log
    assert f"credentials for {url} saved in {world.credentials}" in log
    assert found.token not in log
    assert "Traceback" not in log
