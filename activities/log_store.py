"""The log store: where task logs are kept by key, and reading a log back.

Neutral ground between the agent, which writes logs (`activities/logs.py`), and
the API, which reads them for `stageflow logs` (`starter/logs.py`): neither needs
the other's insides.

A log is two files:

- `<name>.log` holds the task's output bytes exactly as the task wrote them (after
  secret masking), plus Stageflow's own lines (`##[stageflow] exit code 0`). A log
  the agent finished ends with an end note (`##[stageflow] --- task ended: …` or
  `##[stageflow] --- cut short: canceled`); one without was cut short (the agent
  died, or the task was killed).
- `<name>.log.idx` is the timestamp index: text lines `"<byte offset> <unix ms>\\n"`,
  one per written chunk, saying when the bytes from that offset on were written.

`read_log` puts the timestamps back on each line.
"""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

NOTE_PREFIX = "##[stageflow] "
INDEX_SUFFIX = ".idx"

# The last line of a log the agent finished starts with this.
END_NOTE = NOTE_PREFIX + "--- "
TASK_ENDED = "--- task ended: "
CUT_SHORT = "--- cut short: "
# What read_log adds to a log that has no end note once its task is over.
CUT_SHORT_LINE = END_NOTE + "cut short: the log ends here (agent lost or task killed)"

# read_log splits a line longer than this, so a single endless line is never
# held in memory whole.
MAX_LINE_BYTES = 1024 * 1024


def index_path(log_path: Path) -> Path:
    """The timestamp index that belongs to a log file."""
    return log_path.with_name(log_path.name + INDEX_SUFFIX)


def read_log(
    path: Path, timestamps: bool = True, task_over: bool = False, offset: int = 0
) -> Iterator[str]:
    """The lines of a log (without newline), each prefixed with the UTC time of the
    chunk holding its first byte (`2026-11-22T02:11:20.123Z `) if `timestamps`;
    from byte `offset` on (a line start, for a reader that has the lines before it).

    Streams the log and its index; a line longer than 1 MiB comes out in pieces.
    Lines the index does not cover (no index file) have no prefix. With
    `task_over` (the task is no longer running), a log without an end note gets
    `CUT_SHORT_LINE` as its last line, so a reader can tell it is not complete (from
    an `offset` at the end there are no lines, and no note either).
    """
    last = None
    for stamp, line in _stamped_lines(path, timestamps, offset):
        last = line
        yield stamp + line
    if task_over and not (last or "").startswith(END_NOTE) and (last is not None or not offset):
        yield CUT_SHORT_LINE


def _stamped_lines(path: Path, timestamps: bool, start: int = 0) -> Iterator[tuple[str, str]]:
    """(timestamp prefix or "", line) for each line of a log from byte `start` on."""
    with open(path, "rb") as log:
        log.seek(start)
        if not timestamps:
            while line := log.readline(MAX_LINE_BYTES):
                yield "", _decode_line(line)
            return
        entries = _read_index(index_path(path))
        next_entry = next(entries, None)
        stamp = ""
        offset = start
        while line := log.readline(MAX_LINE_BYTES):
            if next_entry is not None and next_entry[0] <= offset:
                ms = next_entry[1]
                # Skip to the last chunk that starts at or before this line.
                while (next_entry := next(entries, None)) is not None and next_entry[0] <= offset:
                    ms = next_entry[1]
                stamp = _format_ms(ms) + " "
            yield stamp, _decode_line(line)
            offset += len(line)


def _decode_line(line: bytes) -> str:
    if line.endswith(b"\n"):
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
    return line.decode("utf-8", errors="replace")


def _read_index(path: Path) -> Iterator[tuple[int, int]]:
    try:
        index = open(path, encoding="ascii")
    except FileNotFoundError:
        return
    with index:
        for entry in index:
            offset, _, ms = entry.partition(" ")
            if ms.endswith("\n"):  # skip a half-written last entry
                yield int(offset), int(ms)


def _format_ms(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


class LogStore(Protocol):
    """Where logs are kept, by key (`webapp/42/dev/1/job/01-install.log`).

    A directory by default (`DirectoryLogStore`); kept this small so a shared or
    object store can replace it when agents live on other machines.
    """

    def put(self, key: str, local_path: Path) -> int:
        """Copy a local log and its index under `key`, replacing what is there;
        return the log's size in bytes."""
        ...

    def link(self, key: str, local_path: Path) -> bool:
        """Make `key` the local log itself (and its index), so the stored log grows
        as the task writes and survives the agent. False if this store cannot (an
        object store, another file system): then `put` the log when it is done."""
        ...

    def path(self, key: str) -> Path | None:
        """A local path to read the log under `key` from, or None if there is none."""
        ...

    def list(self, prefix: str) -> builtins.list[str]:
        """The keys that start with `prefix`, sorted."""
        ...


class DirectoryLogStore(LogStore):
    """A log store in a directory (`<data dir>/logs`): a key is a relative path.

    `put` is idempotent: each file is linked or copied to a temporary file beside
    its destination and moved into place with `os.replace`, so readers see the old
    log or the new one, never half of one.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, local_path: Path) -> int:
        dest = self._resolve(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        local_index = index_path(local_path)
        # Index first, so a reader never sees a new log with an older index.
        if local_index.exists():
            _put_atomically(local_index, index_path(dest))
        else:
            index_path(dest).unlink(missing_ok=True)
        _put_atomically(local_path, dest)
        return dest.stat().st_size

    def link(self, key: str, local_path: Path) -> bool:
        dest = self._resolve(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _link_atomically(index_path(local_path), index_path(dest)) and _link_atomically(
            local_path, dest
        )

    def path(self, key: str) -> Path | None:
        dest = self._resolve(key)
        return dest if dest.is_file() else None

    def list(self, prefix: str) -> builtins.list[str]:
        _check_key(prefix, is_prefix=True)
        # Only walk the directory the prefix is in, not the whole store.
        top = self.root / prefix.rpartition("/")[0]
        if not top.is_dir():
            return []
        keys = []
        for dirpath, _dirnames, filenames in os.walk(top):
            for name in filenames:
                if name.startswith(".") or name.endswith(INDEX_SUFFIX):
                    continue  # temporary files of a put, and indexes
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def _resolve(self, key: str) -> Path:
        _check_key(key)
        return self.root / key


def _check_key(key: str, is_prefix: bool = False) -> None:
    if not key and not is_prefix:
        raise ValueError("log key is empty")
    if key.startswith("/") or ".." in key or "\\" in key or "\0" in key:
        raise ValueError(f"invalid log key {key!r}: must be a relative path without '..'")
    if key.endswith(INDEX_SUFFIX) and not is_prefix:
        raise ValueError(f"invalid log key {key!r}: '{INDEX_SUFFIX}' is kept for indexes")
    parts = key.split("/")
    if is_prefix and parts[-1] == "":
        parts.pop()  # a prefix may end with "/"
    if any(part == "" or part.startswith(".") for part in parts):
        raise ValueError(f"invalid log key {key!r}: empty or hidden path part")


def _put_atomically(source: Path, dest: Path) -> None:
    """Put `source` at `dest` atomically: a hard link on the same file system (a
    shipped log is finished, so sharing its inode costs nothing), else a copy."""
    if not _link_atomically(source, dest):
        _replace_with(dest, lambda tmp: shutil.copyfile(source, tmp))


def _link_atomically(source: Path, dest: Path) -> bool:
    """Make `dest` a hard link to `source`, replacing it atomically; False if the
    file system cannot (another device, no hard links), leaving `dest` as it was."""
    try:
        _replace_with(dest, lambda tmp: os.link(source, tmp))
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        return False
    return True


def _replace_with(dest: Path, make: Callable[[str], object]) -> None:
    """Have `make` create a temporary file beside `dest`, then move it onto `dest`."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        make(tmp)
        os.replace(tmp, dest)
        # rename() does nothing when both names are links to one file (a re-put).
        Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
