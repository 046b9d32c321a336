"""Signing in and who may do what, from the command line: `stageflow login` (a token on
stdin, checked with the API before it is kept), `whoami`, `logout`, `token create |
list | revoke` and `access grant | revoke | list`, as a user runs them against a real
`stageflow serve` (these routes need no Temporal worker). The tests share one API
(they start no workflow), each with its own people and a config home of its own for
its credentials."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
from typing import Any

from starter.credentials import credentials_path
from tests.conftest import Stack


def from_file(
    stack: Stack, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`stageflow ARGS` with nothing in the environment to sign in with: what the
    credentials file (in this test's config home) says."""
    return stack.cli(
        *args,
        input=input,
        STAGEFLOW_URL="",
        STAGEFLOW_TOKEN="",
        XDG_CONFIG_HOME=str(stack.root / "config"),
    )


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return done.stdout


async def test_login_keeps_a_checked_token_whoami_names_its_person_logout_forgets_it(
    api_only: Stack,
) -> None:
    url = await asyncio.to_thread(api_only.api)
    token = api_only.token("dora", admin=False)
    config = api_only.root / "config"

    wrong = await asyncio.to_thread(from_file, api_only, "login", url, input="sft_nope_nope\n")
    assert wrong.returncode == 2
    assert wrong.stderr == f"error: {url} refused the token: it is invalid, revoked or expired\n"
    assert not credentials_path({"XDG_CONFIG_HOME": str(config)}).exists()
    empty = await asyncio.to_thread(from_file, api_only, "login", url, input="\n")
    assert empty.returncode == 2 and "no token given" in empty.stderr

    signed_in = ok(await asyncio.to_thread(from_file, api_only, "login", url, input=token + "\n"))
    path = credentials_path({"XDG_CONFIG_HOME": str(config)})
    assert signed_in.startswith(f"signed in to {url} as dora (token ")
    assert signed_in.rstrip().endswith(f"credentials saved in {path}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["servers"][url]["token"] == token

    whoami = ok(await asyncio.to_thread(from_file, api_only, "whoami"))
    assert whoami.startswith("dora (token ") and whoami.rstrip().endswith(f"at {url}")
    me = json.loads(ok(await asyncio.to_thread(from_file, api_only, "--json", "whoami")))
    assert (me["user"], me["is_admin"], me["url"]) == ("dora", False, url)
    # The environment comes first (for scripts): another token, another person.
    other = ok(await asyncio.to_thread(api_only.cli, "whoami", user="evan"))
    assert other.startswith("evan (")

    out = ok(await asyncio.to_thread(from_file, api_only, "logout"))
    assert out.startswith(f"signed out of {url}")
    assert url not in json.loads(path.read_text()).get("servers", {})
    gone = await asyncio.to_thread(from_file, api_only, "whoami")
    assert gone.returncode == 2
    assert gone.stderr.startswith("error: not signed in: run `stageflow login`")
    again = ok(await asyncio.to_thread(from_file, api_only, "logout", url))
    assert again == f"not signed in to {url}: nothing to forget\n"


async def test_a_token_made_is_shown_once_listed_without_its_secret_and_revoked(
    api_only: Stack,
) -> None:
    made = ok(
        await asyncio.to_thread(
            api_only.cli, "token", "create", "--name", "ci", "--expires", "90d", user="dave"
        )
    )
    *said, token = made.strip().splitlines()
    assert said[0].startswith("a token for dave, id ") and "(ci), expires " in said[0]
    assert said[0].endswith("UTC, shown only this once:")
    token_id = token.split("_")[1]
    whoami = ok(await asyncio.to_thread(api_only.cli, "whoami", STAGEFLOW_TOKEN=token))
    assert whoami.startswith(f"dave (token {token_id}")

    listed = json.loads(
        ok(await asyncio.to_thread(api_only.cli, "--json", "token", "list", user="dave"))
    )
    ours = next(t for t in listed if t["token_id"] == token_id)
    assert ours["name"] == "ci" and ours["expires_at"] and ours["revoked_at"] is None
    assert token not in json.dumps(listed)
    table = ok(await asyncio.to_thread(api_only.cli, "token", "list", STAGEFLOW_TOKEN=token))
    row = next(line for line in table.splitlines() if token_id in line)
    assert "ci" in row and "active (signed in with it)" in row

    bad = await asyncio.to_thread(api_only.cli, "token", "create", "--expires", "soon", user="dave")
    assert bad.returncode == 2 and bad.stderr.startswith("error: body.expires_in: ")

    revoked = ok(await asyncio.to_thread(api_only.cli, "token", "revoke", token_id, user="dave"))
    assert revoked == f"revoked token {token_id} (ci): it signs nobody in any more\n"
    refused = await asyncio.to_thread(api_only.cli, "whoami", STAGEFLOW_TOKEN=token)
    assert refused.returncode == 2 and "(or the token is revoked/expired)" in refused.stderr
    api_only.token("erin", admin=False)  # not dave, and no admin of Stageflow
    foreign = await asyncio.to_thread(api_only.cli, "token", "revoke", token_id, user="erin")
    assert foreign.returncode == 2 and foreign.stderr.count("\n") == 1


async def test_access_is_granted_listed_and_revoked_by_a_pipelines_admin(api_only: Stack) -> None:
    def access(*args: str, user: str = "tester") -> subprocess.CompletedProcess[str]:
        return api_only.cli("access", *args, user=user)

    api_only.token("dan", admin=False)
    refused = await asyncio.to_thread(
        access, "grant", "erin", "viewer", "--pipeline", "web", user="dan"
    )
    assert (refused.returncode, refused.stderr) == (
        2,
        "error: dan is not an admin of pipeline 'web'\n",
    )
    granted = ok(await asyncio.to_thread(access, "grant", "dan", "admin", "--pipeline", "web"))
    assert granted == "granted admin on web to user:dan\n"
    ok(
        await asyncio.to_thread(
            access, "grant", "group:oidc:ops", "releaser", "--pipeline", "web", "--stage", "prod",
            user="dan",
        )
    )  # fmt: skip
    listed: list[dict[str, Any]] = json.loads(
        ok(await asyncio.to_thread(api_only.cli, "--json", "access", "list", "--pipeline", "web"))
    )
    assert {(g["subject"], g["role"], g["stage"], g["granted_by"]) for g in listed} == {
        ("user:dan", "admin", None, "tester"),
        ("group:oidc:ops", "releaser", "prod", "dan"),
    }
    table = ok(await asyncio.to_thread(access, "list", "--pipeline", "web", user="dan"))
    assert "group:oidc:ops" in table and "(all)" in table

    revoked = ok(
        await asyncio.to_thread(
            access, "revoke", "group:oidc:ops", "releaser", "--pipeline", "web", "--stage", "prod",
            user="dan",
        )
    )  # fmt: skip
    assert revoked == "revoked releaser on web stage prod from group:oidc:ops\n"
    missing = await asyncio.to_thread(
        access, "revoke", "group:oidc:ops", "releaser", "--pipeline", "web", user="dan"
    )
    assert missing.returncode == 2
    assert missing.stderr == "error: no grant of releaser to group:oidc:ops on web\n"
    bad = await asyncio.to_thread(access, "grant", "robot:x", "viewer", "--pipeline", "web")
    assert bad.returncode == 2 and "body.subject" in bad.stderr
