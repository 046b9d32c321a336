"""Signing in and who may do what: `login`, `logout`, `whoami`, `token`, `access`.

`login` checks a personal token with the API (GET /api/v1/me) before keeping it in
the credentials file (starter/credentials.py, mode 0600); every other command is
the API's identity routes (starter/api/routes_identity.py), asked and rendered.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from rich.table import Table

from starter import render
from starter.client import Api
from starter.credentials import (
    CredentialsUnreadable,
    current_credentials,
    current_url,
    forget_credentials,
    normalized,
    save_credentials,
)
from starter.exit_codes import Exit

DEFAULT_URL = "http://127.0.0.1:8080"


# --- signing in ----------------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    """Read a token (a prompt on a terminal, else one line of stdin), check it with the
    API, keep it for that server and make the server the current one."""
    url = _url(args.url)
    token = _read_token(url)
    api = Api(url, token)
    api.unauthorized = f"{url} refused the token: it is invalid, revoked or expired"
    try:
        me = api.get("/me")
    finally:
        api.close()
    try:
        path = save_credentials(url, token)
    except (CredentialsUnreadable, OSError) as err:
        raise ValueError(f"the token is good, but it could not be saved: {err}") from None
    if args.json:
        print(json.dumps({"url": url, **me, "credentials": str(path)}))
    else:
        print(f"signed in to {url} as {_who(me)}; credentials saved in {path}")
    if os.environ.get("STAGEFLOW_TOKEN"):
        print(
            "note: STAGEFLOW_TOKEN is set, and commands use it before the saved token",
            file=sys.stderr,
        )
    return Exit.OK


def _url(given: str | None) -> str:
    try:
        url = normalized(given or "") or current_url() or DEFAULT_URL
    except CredentialsUnreadable as err:
        raise ValueError(str(err)) from None
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an API URL: use http://HOST:PORT or https://HOST")
    return url


def _read_token(url: str) -> str:
    if sys.stdin.isatty():
        token = getpass.getpass(f"token for {url} (`stageflow token create`, or from an admin): ")
    else:
        token = sys.stdin.readline()
    token = token.strip()
    if not token:
        raise ValueError("no token given: paste one, or pipe it in (`... | stageflow login URL`)")
    return token


def logout(args: argparse.Namespace) -> int:
    """Forget the token saved for the server; it stays valid until it is revoked."""
    try:
        url = normalized(args.url or "") or current_url()
        path = forget_credentials(url) if url else None
    except CredentialsUnreadable as err:
        raise ValueError(str(err)) from None
    if url is None or path is None:
        print(f"not signed in to {url}: nothing to forget" if url else "not signed in")
        return Exit.OK
    print(
        f"signed out of {url} (its token is removed from {path}; it still works until "
        "revoked: `stageflow token revoke ID`)"
    )
    if os.environ.get("STAGEFLOW_TOKEN"):
        print("note: STAGEFLOW_TOKEN is set, and still signs you in", file=sys.stderr)
    return Exit.OK


def whoami(api: Api, args: argparse.Namespace) -> int:
    me = api.get("/me")
    if args.json:
        print(json.dumps({"url": api.url, **me}))
    else:
        print(f"{_who(me)} at {api.url}")
    return Exit.OK


def _who(me: dict[str, Any]) -> str:
    extra = [me["via"]] + (["admin"] if me.get("is_admin") else [])
    if me.get("groups"):
        extra.append("groups " + ", ".join(me["groups"]))
    return f"{me['user']} ({'; '.join(extra)})"


# --- tokens --------------------------------------------------------------------------


def token(api: Api, args: argparse.Namespace) -> int:
    if args.token_command == "create":
        return _create_token(api, args)
    if args.token_command == "list":
        return _list_tokens(api, args)
    revoked = api.delete(f"/tokens/{quote(args.token_id, safe='')}")
    if args.json:
        print(json.dumps(revoked))
    else:
        name = f" ({revoked['name']})" if revoked.get("name") else ""
        print(f"revoked token {revoked['token_id']}{name}: it signs nobody in any more")
    return Exit.OK


def _create_token(api: Api, args: argparse.Namespace) -> int:
    made = api.post("/tokens", {"name": args.name, "expires_in": args.expires})
    if args.json:
        print(json.dumps(made))
        return Exit.OK
    name = f" ({made['name']})" if made["name"] else ""
    expiry = f"expires {_when(made['expires_at'])} UTC" if made["expires_at"] else "no expiry"
    print(
        f"a token for {made['user']}, id {made['token_id']}{name}, {expiry}, shown only this once:"
    )
    print(made["token"])
    return Exit.OK


def _list_tokens(api: Api, args: argparse.Namespace) -> int:
    tokens: list[dict[str, Any]] = api.get("/tokens")
    if args.json:
        print(json.dumps(tokens))
        return Exit.OK
    if not tokens:
        print("no tokens")
        return Exit.OK
    in_use = _token_id_in_use()
    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "name", "created (UTC)", "expires (UTC)", "last used (UTC)", "state"):
        table.add_column(column)
    for found in tokens:
        table.add_row(
            found["token_id"],
            found["name"],
            _when(found["created_at"]),
            _when(found["expires_at"]) if found["expires_at"] else "never",
            _when(found["last_used_at"]),
            _state(found) + (" (signed in with it)" if found["token_id"] == in_use else ""),
        )
    render.console().print(table)
    return Exit.OK


def _state(found: dict[str, Any]) -> str:
    if found["revoked_at"]:
        return "revoked"
    expires = _time(found["expires_at"])
    if expires is not None and expires <= datetime.now(UTC):
        return "expired"
    return "active"


def _token_id_in_use() -> str | None:
    """The id of the token this command signed in with (`sft_<id>_<secret>`)."""
    try:
        credentials = current_credentials()
    except CredentialsUnreadable:
        return None
    parts = credentials.token.split("_", 2) if credentials else []
    return parts[1] if len(parts) == 3 and parts[0] == "sft" else None


# --- roles ---------------------------------------------------------------------------


def access(api: Api, args: argparse.Namespace) -> int:
    if args.access_command == "list":
        return _list_grants(api, args)
    body = {
        "pipeline": args.pipeline,
        "stage": args.stage,
        "subject": _subject(args.subject),
        "role": args.role,
    }
    on = args.pipeline if args.stage is None else f"{args.pipeline} stage {args.stage}"
    if args.access_command == "grant":
        given = api.post("/access", body)
        if args.json:
            print(json.dumps(given))
        else:
            print(f"granted {given['role']} on {on} to {given['subject']}")
        return Exit.OK
    api.delete("/access", body)
    if args.json:
        print(json.dumps({**body, "revoked": True}))
    else:
        print(f"revoked {args.role} on {on} from {body['subject']}")
    return Exit.OK


def _subject(text: str) -> str:
    """`alice` is `user:alice`; `user:…`, `group:…` and `group:oidc:…` stay as they are."""
    return text if ":" in text else f"user:{text}"


def _list_grants(api: Api, args: argparse.Namespace) -> int:
    grants: list[dict[str, Any]] = api.get("/access", {"pipeline": args.pipeline})
    if args.json:
        print(json.dumps(grants))
        return Exit.OK
    if not grants:
        print("no grants" + (f" on {args.pipeline}" if args.pipeline else ""))
        return Exit.OK
    table = Table(show_edge=False, header_style="bold")
    for column in ("pipeline", "stage", "subject", "role", "granted by", "at (UTC)"):
        table.add_column(column)
    for grant in grants:
        table.add_row(
            grant["pipeline"],
            grant["stage"] or "(all)",
            grant["subject"],
            grant["role"],
            grant["granted_by"],
            _when(grant["granted_at"]),
        )
    render.console().print(table)
    return Exit.OK


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _when(text: str | None) -> str:
    return render.when(_time(text))
