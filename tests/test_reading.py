"""The reading commands against a record that is away, empty or not set up yet, and
`stageflow db upgrade` (no Temporal needed for any of it)."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from activities.record import default_database_url
from starter.cli import run


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sqlite_file(data_dir: Path) -> Path:
    return Path(default_database_url(data_dir).split("///", 1)[1])


@pytest.mark.parametrize("argv", [["release", "list"], ["approvals"], ["history", "p/1"]])
def test_a_postgresql_record_that_is_away_is_one_line_naming_it(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://stageflow:s3cret@127.0.0.1:{closed_port()}/record"
    monkeypatch.setenv("STAGEFLOW_DATABASE_URL", url)
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot read the record at postgresql+asyncpg://stageflow:***@127.0.0.1" in err
    assert "s3cret" not in err and "is the database up?" in err


def test_a_record_never_written_lists_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["--data-dir", str(tmp_path), "release", "list"]) == 0
    assert capsys.readouterr().out == "no releases\n"
    assert run(["--data-dir", str(tmp_path), "approvals"]) == 0
    assert capsys.readouterr().out == "nothing is waiting\n"
    assert run(["--data-dir", str(tmp_path), "release", "show", "web/1"]) == 2
    assert "release web/1 not found" in capsys.readouterr().err


def test_db_upgrade_sets_up_a_record_a_reader_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sqlite_file(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path).close()  # a file with no schema in it
    data = ["--data-dir", str(tmp_path)]
    assert run([*data, "release", "list"]) == 2
    assert "`stageflow db upgrade` sets it up" in capsys.readouterr().err

    assert run([*data, "db", "upgrade"]) == 0
    assert "schema migrated from revision none to" in capsys.readouterr().out
    assert run([*data, "db", "upgrade"]) == 0
    assert "schema up to date" in capsys.readouterr().out
    assert run([*data, "release", "list"]) == 0
    assert capsys.readouterr().out == "no releases\n"
