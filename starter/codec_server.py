"""`stageflow codec-server`: the codec endpoint of the Temporal Web UI.

With `STAGEFLOW_CODEC_KEY` set, every payload in Temporal is encrypted
(`worker/codec.py`), so the Web UI shows `binary/encrypted` blobs. Set the Web
UI's "codec endpoint" to this server and the browser posts the payloads here to
be opened: `POST /decode` (and `/encode`) take and give `{"payloads": [...]}` in
proto JSON, as the Web UI and `temporal --codec-endpoint` send them.

Whoever can reach the server can read the payloads, so it listens on 127.0.0.1
only: each engineer who may see them runs it beside their browser, with the key.
The browser calls it across origins, so only the Web UI origins given may
(CORS); a request for another namespace (the `X-Namespace` header) is refused.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Awaitable, Callable, Sequence

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from worker.codec import EncryptionCodec, PayloadKeyError, codec_key
from worker.settings import Settings

DEFAULT_PORT = 8081
# The Web UI of `stageflow server` / `up` (port 7233 + 1000), by either local name.
DEFAULT_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")

Transform = Callable[[Sequence[Payload]], Awaitable[list[Payload]]]


def codec_app(codec: EncryptionCodec, namespace: str, allow_origins: Sequence[str]) -> FastAPI:
    """The codec endpoints for one key and one namespace, callable from `allow_origins`."""
    app = FastAPI(title="Stageflow codec server", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(allow_origins),
        allow_methods=["POST"],
        allow_headers=["content-type", "x-namespace"],
        # The Web UI's "include cross-origin credentials" sends its cookies.
        allow_credentials=True,
    )

    async def apply(request: Request, transform: Transform) -> Response:
        asked = request.headers.get("x-namespace")
        if asked and asked != namespace:
            return problem(403, f"this codec server serves namespace {namespace!r}, not {asked!r}")
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except json_format.ParseError as err:
            return problem(400, f'the body is not {{"payloads": [...]}} in proto JSON: {err}')
        try:
            done = await transform(payloads.payloads)
        except PayloadKeyError as err:
            return problem(400, str(err))
        return Response(
            json_format.MessageToJson(Payloads(payloads=done)), media_type="application/json"
        )

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        """Open sealed payloads; others come back as they are."""
        return await apply(request, codec.decode)

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        """Seal payloads, as every Stageflow process does."""
        return await apply(request, codec.encode)

    return app


def problem(status: int, detail: str) -> JSONResponse:
    """An error as problem JSON (RFC 9457)."""
    return JSONResponse(
        {"type": "about:blank", "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def serve(settings: Settings, port: int, allow_origins: Sequence[str]) -> None:
    """Serve the codec endpoints on 127.0.0.1:`port` until SIGINT or SIGTERM.

    A ValueError says what is wrong before anything is served: no key, a key that
    is not one, a port that is taken.
    """
    key = codec_key(settings.codec_key)
    if key is None:
        raise ValueError(
            "STAGEFLOW_CODEC_KEY is not set: the codec server decrypts with the key "
            "every Stageflow process uses"
        )
    codec = EncryptionCodec(key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as err:
        listener.close()
        raise ValueError(f"port {port} is taken ({err.strerror}): use --port") from err
    app = codec_app(codec, settings.namespace, allow_origins)
    print(
        f"codec server on http://127.0.0.1:{port} for namespace {settings.namespace!r} "
        f"(key {codec.key_id}); Web UI origins: {', '.join(allow_origins)}",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    # uvicorn stops gracefully on SIGTERM, then raises it again for the handler it
    # found: let that be a clean exit, as `stageflow worker` and `agent` make.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    server.run(sockets=[listener])


def _exit_cleanly(signum: int, frame: object) -> None:
    raise SystemExit(0)
