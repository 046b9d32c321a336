"""The CLI's credentials file (starter/credentials.py): owner-only on disk, one token per
server, and STAGEFLOW_URL / STAGEFLOW_TOKEN before the file."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from starter.credentials import (
    Credentials,
    CredentialsUnreadable,
    credentials_path,
    current_credentials,
    save_credentials,
)

LOCAL = "http://127.0.0.1:8080"
TEAM = "https://stageflow.example.com"


@pytest.fixture
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("STAGEFLOW_URL", raising=False)
    monkeypatch.delenv("STAGEFLOW_TOKEN", raising=False)
    return home


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_saved_credentials_are_read_back_from_a_0600_file_in_a_0700_directory(
    config_home: Path,
) -> None:
    path = save_credentials(LOCAL + "/", "sft_local")

    assert path == config_home / "stageflow" / "credentials"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert current_credentials() == (LOCAL, "sft_local")
    assert json.loads(path.read_text())["servers"] == {LOCAL: {"token": "sft_local"}}


def test_a_second_server_becomes_current_and_the_first_keeps_its_token(
    config_home: Path,
) -> None:
    save_credentials(LOCAL, "sft_local")
    save_credentials(TEAM, "sft_team")

    assert current_credentials() == (TEAM, "sft_team")
    env = {"XDG_CONFIG_HOME": str(config_home), "STAGEFLOW_URL": LOCAL}
    assert current_credentials(env) == (LOCAL, "sft_local")


def test_the_environment_comes_before_the_file(config_home: Path) -> None:
    save_credentials(LOCAL, "sft_local")
    env = {"XDG_CONFIG_HOME": str(config_home)}

    both = {**env, "STAGEFLOW_URL": TEAM, "STAGEFLOW_TOKEN": "sft_ci"}
    assert current_credentials(both) == (TEAM, "sft_ci")
    # A token alone is for the file's current server.
    assert current_credentials({**env, "STAGEFLOW_TOKEN": "sft_ci"}) == (LOCAL, "sft_ci")
    # A URL alone takes that server's token from the file; a server it has none for: none.
    assert current_credentials({**env, "STAGEFLOW_URL": LOCAL + "/"}) == (LOCAL, "sft_local")
    assert current_credentials({**env, "STAGEFLOW_URL": TEAM}) is None


def test_the_environment_alone_needs_no_file(config_home: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(config_home), "STAGEFLOW_URL": TEAM, "STAGEFLOW_TOKEN": "t"}

    assert current_credentials(env) == (TEAM, "t")
    assert not (config_home / "stageflow").exists()


def test_no_file_and_no_environment_is_no_credentials(config_home: Path) -> None:
    assert current_credentials() is None


def test_a_file_someone_widened_is_written_back_owner_only(config_home: Path) -> None:
    path = save_credentials(LOCAL, "sft_old")
    path.chmod(0o644)
    path.parent.chmod(0o755)

    save_credentials(LOCAL, "sft_new")

    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert current_credentials() == (LOCAL, "sft_new")
    assert [p.name for p in path.parent.iterdir()] == ["credentials"]  # no temp file left


def test_a_file_that_is_not_json_is_one_error_naming_it(config_home: Path) -> None:
    path = credentials_path()
    path.parent.mkdir(parents=True)
    path.write_text("url = http://127.0.0.1:8080\n")

    with pytest.raises(
        CredentialsUnreadable, match=rf"^{re.escape(str(path))}: not a credentials file"
    ):
        current_credentials()
    with pytest.raises(CredentialsUnreadable):
        save_credentials(LOCAL, "sft_local")
    assert path.read_text() == "url = http://127.0.0.1:8080\n"


def test_the_config_home_is_xdg_when_absolute_else_dot_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert credentials_path({"XDG_CONFIG_HOME": "/etc/xdg-test"}) == Path(
        "/etc/xdg-test/stageflow/credentials"
    )
    expected = tmp_path / "home" / ".config" / "stageflow" / "credentials"
    assert credentials_path({"XDG_CONFIG_HOME": "relative/dir"}) == expected
    assert credentials_path({}) == expected


def test_credentials_do_not_show_their_token() -> None:
    found = Credentials(LOCAL, "sft_0123456789abcdef_secret")

    assert "secret" not in repr(found)
    assert found.token == "sft_0123456789abcdef_secret"
