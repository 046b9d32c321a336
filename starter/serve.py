"""`stageflow serve`: the HTTP API (starter/api/app.py) on uvicorn, and the same API as
one part of `stageflow up`.

The listening socket is bound before anything else starts, so a taken port is one
line (PortTaken, exit 2) and not a server that half started. The record is
migrated before the first request (a fresh data dir works). SIGTERM or SIGINT stop
it gracefully: no new connections, running requests get `GRACE_SECONDS` to finish,
then exit 0; a second signal stops at once.

uvicorn's own signal handlers are not used: they re-raise the signal once the
server has stopped (the process then dies of it instead of exiting 0), and inside
`up` they would take the signals from the stack's handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import uvicorn
from sqlalchemy.exc import SQLAlchemyError
from uvicorn.config import LOGGING_CONFIG

from activities.record import safe_url, upgrade
from starter.exit_codes import Exit
from starter.reading import RecordUnavailable
from worker.devserver import PortTaken
from worker.settings import Settings
from worker.up import Part

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
# How long running requests (a followed log, say) may go on once asked to stop.
GRACE_SECONDS = 10


class ApiFailed(RuntimeError):
    """The API server did not start (its log says why above this line)."""


@dataclass
class Listener:
    """The API's bound socket and the URL it answers on."""

    socket: socket.socket
    host: str

    @property
    def port(self) -> int:
        port: int = self.socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.socket.close()


def bind_api(host: str, port: int, flag: str = "--port") -> Listener:
    """A socket bound to host:port (port 0: one the system chooses); PortTaken when
    the port is held, naming the flag that chooses another."""
    if not 0 <= port < 65536:
        raise ValueError(f"{flag} {port} is not a port (0-65535)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ValueError(f"--host {host}: {err.strerror}") from err
    sock = socket.socket(family, kind, proto)
    # As uvicorn binds: a server that just stopped leaves TIME_WAIT connections behind.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise PortTaken(
            f"port {port} on {host} is taken ({err.strerror}): stop what holds it or use {flag}"
        ) from err
    return Listener(sock, host)


async def run_api(settings: Settings, host: str, port: int) -> int:
    """`stageflow serve`: bind, migrate the record, serve until a signal (exit 0).
    Prints `API at http://HOST:PORT` once it listens."""
    listener = bind_api(host, port)
    try:
        await migrate_record(settings)
        signals = _Signals()

        def listening() -> None:
            print(f"API at {listener.url}", flush=True)

        try:
            await serve_api(
                settings, listener, signals.stop, force=signals.force, on_listening=listening
            )
        except ApiFailed as err:
            print(f"error: {err}", file=sys.stderr)
            return Exit.USAGE
        return Exit.OK
    finally:
        listener.close()


def api_part(
    listener: Listener, on_ready: Callable[[Settings], Awaitable[None]] | None = None
) -> Part:
    """The API as a part of `stageflow up`, served on `listener` (bound by the caller
    before the stack starts, so a taken port stops `up` before anything runs).

    It runs in `up`'s own process, beside the control worker and the agent, rather
    than as a child `python -m starter.cli serve`: a child started from worker/up.py
    would have worker name a starter module (the upward dependency the layers
    forbid, only hidden in a command line), and would need its own start-up wait,
    restart and stop handling, which run_stack already gives each part. Started
    from here, worker/ knows only that it runs a part. `on_ready(settings)` runs
    once the record is migrated, before the API listens (`up` makes its first
    admin there).
    """

    async def run(settings: Settings, stop: asyncio.Event) -> None:
        await migrate_record(settings)
        if on_ready is not None:
            await on_ready(settings)
        await serve_api(settings, listener, stop, quiet=True)

    return Part(name="the API", run=run, banner=(f"API:     {listener.url}",))


async def migrate_record(settings: Settings) -> None:
    """Bring the record's schema up to date; RecordUnavailable (one line) when it cannot."""
    url = settings.record_url
    try:
        await upgrade(url)
    except (SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise RecordUnavailable(f"cannot migrate the record at {safe_url(url)} ({reason})") from err


async def serve_api(
    settings: Settings,
    listener: Listener,
    stop: asyncio.Event,
    *,
    force: asyncio.Event | None = None,
    on_listening: Callable[[], None] | None = None,
    quiet: bool = False,
) -> None:
    """Serve the API on `listener` until `stop` is set, then finish what is running
    (at most GRACE_SECONDS, or until `force` is set). `quiet` (in `up`): warnings and
    errors only, no access log. Raises ApiFailed when the app does not start."""
    from starter.api.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        log_config=_stdout_logging(),
        log_level="warning" if quiet else "info",
        access_log=not quiet,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_SECONDS,
        server_header=False,
    )
    server = _Server(config, on_listening)
    stopping = asyncio.create_task(_stop_when(server, stop, force))
    try:
        # A copy of the socket each time: uvicorn closes the sockets it served on,
        # and `up` may start this again after a crash on the same bound port.
        await server.serve(sockets=[listener.socket.dup()])
    except SystemExit as err:  # uvicorn's answer to a failed application start-up
        raise ApiFailed("the API did not start: its application start-up failed") from err
    finally:
        stopping.cancel()


class _Server(uvicorn.Server):
    """uvicorn's server, told when to stop by an event instead of its signal handlers,
    saying when it listens."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_listening is not None:
            self._on_listening()


async def _stop_when(
    server: uvicorn.Server, stop: asyncio.Event, force: asyncio.Event | None
) -> None:
    await stop.wait()
    server.should_exit = True
    if force is not None:
        await force.wait()
        server.force_exit = True


class _Signals:
    """SIGINT and SIGTERM: the first sets `stop`, the next `force`."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._received)

    def _received(self) -> None:
        if self.stop.is_set():
            self.force.set()
        self.stop.set()


def _stdout_logging() -> dict[str, object]:
    """uvicorn's logging, all of it on stdout (its default sends all but the access log
    to stderr)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stdout"
    return config
