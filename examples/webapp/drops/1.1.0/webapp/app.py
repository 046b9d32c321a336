"""A tiny WSGI web app, standard library only: one page that greets its visitors.

Its settings come from an INI file that the deployment renders per stage:

    [webapp]
    stage = qa
    release = Release-7
    greeting = Hello from qa
    port = 8002
    log_level = INFO

`application` reads `config.ini` beside this package (the release directory), or
the file named by $WEBAPP_CONFIG. `python -m webapp` serves it on the configured port.

New in 1.1.0: `GET /health` answers JSON for load balancers and deployment gates.
"""

from __future__ import annotations

import configparser
import html
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RELEASE_DIR = Path(__file__).resolve().parent.parent
VERSION = (RELEASE_DIR / "VERSION").read_text().strip()

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Config:
    stage: str
    release: str
    greeting: str
    port: int
    log_level: str


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read the `[webapp]` section of an INI file; a missing key is an error."""
    parser = configparser.ConfigParser(interpolation=None)
    with open(path, encoding="utf-8") as file:
        parser.read_file(file)
    section = parser["webapp"]
    level = section["log_level"].upper()
    if not isinstance(logging.getLevelName(level), int):
        raise ValueError(f"{path}: log_level {level!r} is not a logging level")
    return Config(
        stage=section["stage"],
        release=section["release"],
        greeting=section["greeting"],
        port=section.getint("port"),
        log_level=level,
    )


def make_app(config: Config) -> WsgiApp:
    """The WSGI callable for one configuration."""
    log = logging.getLogger("webapp")
    log.setLevel(config.log_level)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        log.debug("%s %s", environ.get("REQUEST_METHOD", "GET"), path)
        if path == "/health":
            health = {"status": "ok", "version": VERSION, "stage": config.stage}
            return _respond(start_response, "200 OK", "application/json", json.dumps(health))
        if path != "/":
            return _respond(start_response, "404 Not Found", "text/plain", "not found\n")
        page = (
            "<!doctype html>\n"
            f"<title>webapp {VERSION}</title>\n"
            f"<h1>{html.escape(config.greeting)}</h1>\n"
            f"<p>webapp {VERSION}, {html.escape(config.release)} on {html.escape(config.stage)}</p>\n"
            '<p><a href="/health">health</a></p>\n'
        )
        return _respond(start_response, "200 OK", "text/html; charset=utf-8", page)

    return app


def _respond(start_response: StartResponse, status: str, kind: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


_app: WsgiApp | None = None


def config_path() -> Path:
    return Path(os.environ.get("WEBAPP_CONFIG") or RELEASE_DIR / "config.ini")


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point for servers (`webapp.app:application`); loads the config once."""
    global _app
    if _app is None:
        _app = make_app(load_config(config_path()))
    return _app(environ, start_response)


def main() -> None:
    """Serve on the configured port until Ctrl-C (wsgiref: for trying it out, not for load)."""
    from wsgiref.simple_server import make_server

    config = load_config(config_path())
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(message)s")
    with make_server("127.0.0.1", config.port, make_app(config)) as server:
        logging.getLogger("webapp").info(
            "webapp %s (%s) on http://127.0.0.1:%d", VERSION, config.stage, config.port
        )
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
