"""The reading commands against an API whose record is new or broken, and `stageflow db
upgrade` (no Temporal needed for any of it)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from activities.record import default_database_url
from starter.cli import run
from tests.conftest import Stack


def sqlite_file(data_dir: Path) -> Path:
    return Path(default_database_url(data_dir).split("///", 1)[1])


async def test_a_new_record_lists_nothing(stack: Stack) -> None:
    listed = await asyncio.to_thread(stack.cli, "release", "list")
    assert (listed.returncode, listed.stdout) == (0, "no releases\n"), listed.stderr
    waiting = await asyncio.to_thread(stack.cli, "approvals")
    assert (waiting.returncode, waiting.stdout) == (0, "nothing is waiting\n")
    mine = await asyncio.to_thread(stack.cli, "approvals", "--mine", user="erin")
    assert (mine.returncode, mine.stdout) == (0, "nothing is waiting on erin\n")
    missing = await asyncio.to_thread(stack.cli, "release", "show", "web/1")
    assert (missing.returncode, missing.stderr) == (2, "error: release web/1 not found\n")


async def test_an_api_whose_record_broke_is_one_line_and_exit_2(stack: Stack) -> None:
    stack.token()  # the person first, while the record is whole
    url = await asyncio.to_thread(stack.api)  # it has not opened the record yet
    record = sqlite_file(stack.data_dir)
    record.unlink()
    record.mkdir()  # what was the database file can no longer be opened
    for argv in (["release", "list"], ["approvals"], ["history", "p/1"]):
        failed = await asyncio.to_thread(stack.cli, *argv)
        assert failed.returncode == 2 and failed.stdout == "", argv
        assert failed.stderr.startswith(f"error: the API at {url} answered 5"), failed.stderr
        assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr


def test_db_upgrade_sets_up_a_record_and_says_when_it_is_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sqlite_file(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path).close()  # a file with no schema in it
    data = ["--data-dir", str(tmp_path)]
    assert run([*data, "db", "upgrade"]) == 0
    assert "schema migrated from revision none to" in capsys.readouterr().out
    assert run([*data, "db", "upgrade"]) == 0
    assert "schema up to date" in capsys.readouterr().out
