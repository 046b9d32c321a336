"""A throwaway PostgreSQL cluster for tests: Debian's server binaries, initdb in a temp
dir, listening on 127.0.0.1 on a free port (its socket in the temp dir), stopped by
its PID.

initdb refuses to run as root (CI runs as root): there the cluster is made and run
as an unprivileged user (`postgres` if the system has one, else `nobody`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from worker.devserver import free_port

PG_BIN = Path(os.environ.get("STAGEFLOW_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "stageflow"


def missing_binaries() -> str | None:
    """Why no cluster can be started here, or None when it can."""
    for binary in ("initdb", "postgres", "pg_isready"):
        if not (PG_BIN / binary).is_file():
            return f"no PostgreSQL server binaries: {PG_BIN / binary} does not exist"
    return None


def _run_as() -> dict[str, Any]:
    """subprocess options that run a command as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root with neither a `postgres` nor a `nobody` user")


@dataclass
class PostgresCluster:
    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    databases: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, database="postgres"
        )
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        self.databases.append(name)
        return self.url(name)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 60) -> None:
        """Start the server on the cluster's data and port; return once it answers."""
        self.process = process = _serve(self.root, self.port)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                text = self.log()
                self.stop()
                raise RuntimeError(f"postgres exited with {process.returncode}:\n{text[-2000:]}")
            ready = subprocess.run(
                [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)]
                + ["-U", SUPERUSER],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres did not answer within {timeout}s")
            # The next look in 50 ms, or at once if the server exits (checked above).
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.05)

    def kill(self) -> None:
        """kill -9 the postmaster by its PID, and its backends (its session): a crash."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        """Fast shutdown by the postmaster's PID, then remove the cluster's files."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(timeout: float = 60) -> PostgresCluster:
    """initdb a new cluster in a temp dir and start its server; wait until it answers."""
    as_user = _run_as()
    # Not under pytest's tmp dir: as root that is 0700 and the cluster's user could not enter.
    root = Path(tempfile.mkdtemp(prefix="stageflow-pg-"))
    if as_user:
        os.chown(root, as_user["user"], as_user["group"])
    subprocess.run(
        [
            str(PG_BIN / "initdb"),
            "-D",
            str(root / "data"),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        env=_ENV,
        cwd=root,
        **as_user,
    )
    sockets = root / "sockets"
    sockets.mkdir()
    if as_user:
        os.chown(sockets, as_user["user"], as_user["group"])
    cluster = PostgresCluster(root=root, port=free_port())
    cluster.start(timeout)
    return cluster


_ENV = {**os.environ, "LC_ALL": "C", "LANG": "C"}


def _serve(root: Path, port: int) -> subprocess.Popen[bytes]:
    """The cluster's server (postmaster) on `port`, its own session, logging to the root."""
    with open(root / "postgres.log", "ab") as log:
        return subprocess.Popen(
            [
                str(PG_BIN / "postgres"),
                "-D",
                str(root / "data"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-k",
                str(root / "sockets"),
                # A throwaway cluster: durability buys nothing here.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_ENV,
            cwd=root,
            start_new_session=True,
            **_run_as(),
        )
