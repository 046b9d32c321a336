"""Where the `stageflow` command line keeps its credentials: which API server, which token.

One small JSON file, `$XDG_CONFIG_HOME/stageflow/credentials` (else
`~/.config/stageflow/credentials`), readable by its owner only (0600, in a 0700
directory), a token per server and the server used last:

    {"current": "http://127.0.0.1:8080",
     "servers": {"http://127.0.0.1:8080": {"token": "sft_..."}}}

`STAGEFLOW_URL` and `STAGEFLOW_TOKEN` in the environment come before the file (for
scripts and CI, as `GH_TOKEN` does for `gh`): the URL chooses the server, the token
is used as it is; what one of them leaves open the file answers.

The file is replaced whole (written beside it, then renamed), so a reader never
sees half of it and it never exists, even for a moment, with a wider mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

FILE_MODE = 0o600
DIR_MODE = 0o700


class Credentials(NamedTuple):
    """A server's URL and the token to send it (`Authorization: Bearer <token>`)."""

    url: str
    token: str

    def __repr__(self) -> str:  # a token must not end up in a log or a traceback
        return f"Credentials(url={self.url!r}, token='***')"


class CredentialsUnreadable(ValueError):
    """The credentials file is there but is not one: one line naming it."""


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    """The credentials file: under $XDG_CONFIG_HOME when it is set (and absolute, as
    the XDG spec asks), else under ~/.config."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    config = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return config / "stageflow" / "credentials"


def save_credentials(url: str, token: str, path: Path | None = None) -> Path:
    """Keep `token` for the server at `url` and make that server the current one;
    other servers' tokens stay. Returns the file written (mode 0600)."""
    path = path or credentials_path()
    url = normalized(url)
    stored = _read(path)
    servers = stored.get("servers")
    stored["servers"] = servers = servers if isinstance(servers, dict) else {}
    servers[url] = {"token": token}
    stored["current"] = url
    _write(path, stored)
    return path


def current_credentials(
    env: Mapping[str, str] | None = None, path: Path | None = None
) -> Credentials | None:
    """The server and token to use: STAGEFLOW_URL / STAGEFLOW_TOKEN from the
    environment, else the file's (its current server, that server's token).
    None when either is unknown."""
    env = os.environ if env is None else env
    url = normalized(env.get("STAGEFLOW_URL", ""))
    token = env.get("STAGEFLOW_TOKEN", "").strip()
    if not (url and token):
        stored = _read(path or credentials_path(env))
        url = url or normalized(str(stored.get("current") or ""))
        if not token:
            servers = stored.get("servers")
            entry = servers.get(url) if isinstance(servers, dict) else None
            token = str(entry.get("token") or "") if isinstance(entry, dict) else ""
    return Credentials(url, token) if url and token else None


def current_url(env: Mapping[str, str] | None = None, path: Path | None = None) -> str | None:
    """The server the command line talks to: STAGEFLOW_URL, else the file's current one
    (whether or not there is a token for it)."""
    env = os.environ if env is None else env
    url = normalized(env.get("STAGEFLOW_URL", ""))
    if url:
        return url
    stored = _read(path or credentials_path(env))
    return normalized(str(stored.get("current") or "")) or None


def forget_credentials(url: str, path: Path | None = None) -> Path | None:
    """Remove the token kept for the server at `url` (`stageflow logout`); it is no longer
    the current server. The file written, or None when it held no token for `url`."""
    path = path or credentials_path()
    url = normalized(url)
    stored = _read(path)
    servers = stored.get("servers")
    if not isinstance(servers, dict) or url not in servers:
        return None
    del servers[url]
    if stored.get("current") == url:
        stored.pop("current")
    _write(path, stored)
    return path


def normalized(url: str) -> str:
    """One spelling per server: no surrounding spaces, no trailing slash."""
    return url.strip().rstrip("/")


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise CredentialsUnreadable(f"{path}: cannot read it ({err.strerror})") from err
    try:
        stored = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise CredentialsUnreadable(
            f"{path}: not a credentials file (bad JSON at line {err.lineno}): "
            "fix it, or remove it and sign in again"
        ) from err
    if not isinstance(stored, dict):
        raise CredentialsUnreadable(f"{path}: not a credentials file (not a JSON object)")
    return stored


def _write(path: Path, stored: dict[str, Any]) -> None:
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    # Ours, whoever made it: the directory of a secret is not for others to list.
    os.chmod(path.parent, DIR_MODE)
    # A new file next to it, made with mode 0600 from the start, then renamed over it.
    name = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(stored, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
