"""`stageflow serve`: the HTTP API (FastAPI), the one front door to Stageflow.

Reads come from the record (activities/record), so they answer whether or not
a worker is up; actions become Temporal updates sent by this server, always as
the authenticated person (starter/api/auth.py), after the checks of
starter/api/access.py. `GET /healthz` is the only route without credentials.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from temporalio.client import Client
from temporalio.service import RPCError

from activities.record import Database, open_database
from starter.api.access import Access
from starter.api.auth import Authenticator, Principal
from starter.api.oidc import OidcSettings, OidcVerifier
from starter.api.problems import PROBLEM_RESPONSES, Problem, install, not_found, problem_response
from worker.settings import Settings, connect

API = "/api/v1"
# How long an action may wait for Temporal to take it.
CONNECT_TIMEOUT = 10.0


@dataclass
class Service:
    """What every request of one server shares."""

    settings: Settings
    db: Database
    authenticator: Authenticator
    _client: Client | None = None
    _connecting: asyncio.Lock = field(default_factory=asyncio.Lock)
    http: httpx.AsyncClient | None = None
    _connect: asyncio.Task[None] | None = None

    async def client(self) -> Client:
        """The Temporal client, connected on first use (reads never need it)."""
        async with self._connecting:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        connect(self.settings, identity="stageflow api"), CONNECT_TIMEOUT
                    )
                except (TimeoutError, RuntimeError, RPCError, OSError) as err:
                    raise Problem(
                        503,
                        "Temporal unavailable",
                        f"cannot reach Temporal at {self.settings.address}: {err}",
                    ) from None
            return self._client

    def connected(self) -> Client | None:
        """The Temporal client if it is connected; else None, and it connects in the
        background (a read's live view must not wait the connect timeout for it)."""
        if self._client is None and (self._connect is None or self._connect.done()):
            self._connect = asyncio.create_task(self._connect_quietly())
        return self._client

    async def _connect_quietly(self) -> None:
        try:
            await self.client()
        except Problem:
            pass  # the next read tries again


def service(request: Request) -> Service:
    found: Service = request.app.state.service
    return found


async def principal(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Principal:
    return await service(request).authenticator(authorization)


async def access(request: Request, who: Annotated[Principal, Depends(principal)]) -> Access:
    return Access(service(request).db, who)


ServiceDep = Annotated[Service, Depends(service)]
PrincipalDep = Annotated[Principal, Depends(principal)]
AccessDep = Annotated[Access, Depends(access)]


def create_app(
    settings: Settings,
    db: Database | None = None,
    oidc: OidcSettings | None = None,
    client: Client | None = None,
) -> FastAPI:
    """The API for `settings`' record and Temporal; `oidc` None reads STAGEFLOW_OIDC_*."""
    from starter.api import (
        routes,
        routes_changes,
        routes_identity,
        routes_logs,
        routes_pipelines,
    )
    from starter.web import pages

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = db or open_database(settings.record_url)
        oidc_settings = oidc if oidc is not None else OidcSettings.from_env(_environ())
        http = httpx.AsyncClient(timeout=10.0)
        verifier = OidcVerifier(oidc_settings, http) if oidc_settings else None
        app.state.service = Service(
            settings=settings,
            db=database,
            authenticator=Authenticator(database, verifier),
            _client=client,
            http=http,
        )
        try:
            yield
        finally:
            await http.aclose()
            if db is None:
                await database.close()

    app = FastAPI(
        title="Stageflow",
        version="1",
        summary="Releases through stages, on Temporal",
        # Served below, to a signed-in person: /healthz is the only anonymous route.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    install(app)
    _answer_unavailable_record(app)

    @app.get("/healthz", tags=["service"], summary="the server is up (no credentials)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(f"{API}/openapi.json", include_in_schema=False)
    async def openapi(_who: PrincipalDep) -> dict[str, Any]:
        return app.openapi()

    api = APIRouter(prefix=API, responses=PROBLEM_RESPONSES)
    routes.add_routes(api)
    routes_identity.add_identity_routes(api)
    routes_logs.add_log_routes(api)
    routes_pipelines.add_pipeline_routes(api)
    routes_pipelines.add_trigger_routes(api)
    routes_changes.add_change_routes(api)
    app.include_router(api)
    pages.add_pages(app, web_ui=settings.temporal_ui_url)
    return app


def _answer_unavailable_record(app: FastAPI) -> None:
    """A record store that does not answer (PostgreSQL down or restarting, the pool
    exhausted, SQLite locked past its timeout) is a 503 the client may retry, not a
    500: nothing was done. Other database errors (a constraint, a bug) stay 500s. The
    detail names the kind of failure only: the driver's message may carry the URL."""
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    async def unavailable(_request: Request, error: Exception) -> Response:
        reason = type(getattr(error, "orig", None) or error).__name__
        return problem_response(
            Problem(503, "Record unavailable", f"the record store did not answer ({reason})")
        )

    for kind in (OperationalError, InterfaceError, PoolTimeout, ConnectionError):
        app.add_exception_handler(kind, unavailable)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


async def found(value: Awaitable[Any], what: str) -> Any:
    result = await value
    if result is None:
        raise not_found(f"{what} not found")
    return result
