"""Task logs: writing them on the agent, masking secrets, reading them back, storing them.

A log is two files:

- `<name>.log` holds the task's output bytes exactly as the task wrote them (after
  secret masking), plus Stageflow's own lines (`##[stageflow] exit code 0`).
- `<name>.log.idx` is the timestamp index: text lines `"<byte offset> <unix ms>\\n"`,
  one per written chunk, saying when the bytes from that offset on were written.

Keeping timestamps out of the log itself is what lets `LogWriter` append whole
chunks without looking at lines, so a task that prints a gigabyte is logged at
about the speed of `cat`. `read_log` puts the timestamps back on each line.
"""

from __future__ import annotations

import builtins
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

NOTE_PREFIX = "##[stageflow] "
MASK = b"***"
INDEX_SUFFIX = ".idx"

# How much of the output's end LogWriter keeps for heartbeats, and how it is cut.
TAIL_BYTES = 8 * 1024
TAIL_LINES = 20
LINE_CHARS = 500

# read_log splits a line longer than this, so a single endless line is never
# held in memory whole.
MAX_LINE_BYTES = 1024 * 1024


def index_path(log_path: Path) -> Path:
    """The timestamp index that belongs to a log file."""
    return log_path.with_name(log_path.name + INDEX_SUFFIX)


class LogWriter:
    """Appends a task's output to a local log file and its timestamp index.

    `write` takes already-masked bytes and appends them as one chunk: no per-line
    work, one index entry per chunk (and none when the previous entry has the
    same millisecond). The end of the output is kept for heartbeats
    (`last_lines`). Appending to an existing log continues its offsets.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: every chunk is on disk (for readers) as soon as it is written.
        self._log = open(path, "ab", buffering=0)  # closed in close()
        self._index = open(index_path(path), "a", encoding="ascii")
        self._offset = self._log.seek(0, os.SEEK_END)
        self._last_ms: int | None = None
        self._tail = self._read_existing_tail()
        self._at_line_start = not self._tail or self._tail.endswith(b"\n")

    @property
    def path(self) -> Path:
        return self._path

    @property
    def bytes_written(self) -> int:
        """Size of the log file so far (including what it held before this writer)."""
        return self._offset

    def write(self, data: bytes) -> None:
        """Append output bytes (already masked) to the log as one timestamped chunk."""
        if not data:
            return
        now_ms = time.time_ns() // 1_000_000
        if now_ms != self._last_ms:
            # Index first: a concurrent reader may see an entry for bytes not yet
            # written (harmless), never bytes without their entry.
            self._index.write(f"{self._offset} {now_ms}\n")
            self._index.flush()
            self._last_ms = now_ms
        view = memoryview(data)
        while view:
            written = self._log.write(view)
            if written is None:  # only for non-blocking files, which this is not
                raise BlockingIOError("log file would block")
            view = view[written:]
        self._offset += len(data)
        self._keep_tail(data)
        self._at_line_start = data.endswith(b"\n")

    def note(self, text: str) -> None:
        """Write a Stageflow line (`##[stageflow] <text>`) on a line of its own.

        The prefix is added unless the text already starts with it; each line of a
        multi-line text gets it.
        """
        lines = [
            line if line.startswith(NOTE_PREFIX) else NOTE_PREFIX + line
            for line in (text.splitlines() or [""])
        ]
        block = "\n".join(lines) + "\n"
        if not self._at_line_start:
            block = "\n" + block
        self.write(block.encode("utf-8"))

    def last_lines(self, n: int = 5) -> list[str]:
        """The last `n` (at most 20) lines of the output, for heartbeats.

        Decoded with errors='replace'; of a line rewritten with carriage returns
        (progress bars) only the last version; each cut to 500 characters. The
        line still being written (no newline yet) counts as a line.
        """
        n = max(0, min(n, TAIL_LINES))
        if n == 0 or not self._tail:
            return []
        lines = self._tail.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        # The first line was cut if the tail is shorter than the output.
        if len(lines) > 1 and len(self._tail) < self._offset:
            lines.pop(0)
        result = []
        for raw in lines[-n:]:
            line = raw.rstrip(b"\r").rsplit(b"\r", 1)[-1]
            result.append(line.decode("utf-8", errors="replace")[:LINE_CHARS])
        return result

    def close(self) -> None:
        self._log.close()
        self._index.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _keep_tail(self, data: bytes) -> None:
        if len(data) >= TAIL_BYTES:
            self._tail = data[-TAIL_BYTES:]
        else:
            self._tail = (self._tail + data)[-TAIL_BYTES:]

    def _read_existing_tail(self) -> bytes:
        if self._offset == 0:
            return b""
        with open(self._path, "rb") as f:
            f.seek(max(0, self._offset - TAIL_BYTES))
            return f.read(TAIL_BYTES)


class SecretMasker:
    """Replaces secret values in a stream of output chunks with `***`.

    Each non-empty value is masked as its raw UTF-8 bytes (no other encodings).
    A secret of one or two characters is masked too, and will then mask every
    occurrence of those characters in the output: keep secrets long.

    `feed` holds back the end of a chunk while it could be the start of a secret
    (at most the longest secret's length minus one bytes), so a secret split
    across two reads is still masked; `flush` returns what is held back at the end.
    """

    def __init__(self, values: list[str]) -> None:
        secrets = {v.encode("utf-8") for v in values if v}
        # Longest first: where one secret starts with another, mask the whole one.
        self._secrets = sorted(secrets, key=len, reverse=True)
        self._pattern = (
            re.compile(b"|".join(re.escape(s) for s in self._secrets)) if secrets else None
        )
        self._first_bytes = {s[:1] for s in self._secrets}
        self._keep = max((len(s) for s in self._secrets), default=1) - 1
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Masked bytes ready to write: the held-back bytes and this chunk, minus a
        new held-back end. With no secrets, the chunk itself (no copy)."""
        if self._pattern is None:
            return chunk
        data = self._pending + chunk if self._pending else chunk
        cut = self._undecided_from(data)
        # Every match starting before `cut` is final; one may run past it.
        pieces = []
        pos = 0
        if any(s in data for s in self._secrets):
            for match in self._pattern.finditer(data):
                if match.start() >= cut:
                    break
                pieces.append(data[pos : match.start()])
                pieces.append(MASK)
                pos = match.end()
        end = max(pos, cut)
        pieces.append(data[pos:end])
        self._pending = data[end:]
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def flush(self) -> bytes:
        """The held-back bytes, masked; call once the output has ended."""
        data, self._pending = self._pending, b""
        if self._pattern is None or not data:
            return data
        return self._pattern.sub(MASK, data)

    def _undecided_from(self, data: bytes) -> int:
        """First offset where a secret could start but needs bytes not seen yet."""
        for start in range(max(0, len(data) - self._keep), len(data)):
            if data[start : start + 1] not in self._first_bytes:
                continue
            rest = data[start:]
            if any(len(s) > len(rest) and s.startswith(rest) for s in self._secrets):
                return start
        return len(data)


def read_log(path: Path, timestamps: bool = True) -> Iterator[str]:
    """The lines of a log (without newline), each prefixed with the UTC time of the
    chunk holding its first byte (`2026-11-22T02:11:20.123Z `) if `timestamps`.

    Streams the log and its index; a line longer than 1 MiB comes out in pieces.
    Lines the index does not cover (no index file) have no prefix.
    """
    with open(path, "rb") as log:
        if not timestamps:
            while line := log.readline(MAX_LINE_BYTES):
                yield _decode_line(line)
            return
        entries = _read_index(index_path(path))
        next_entry = next(entries, None)
        stamp = ""
        offset = 0
        while line := log.readline(MAX_LINE_BYTES):
            if next_entry is not None and next_entry[0] <= offset:
                ms = next_entry[1]
                # Skip to the last chunk that starts at or before this line.
                while (next_entry := next(entries, None)) is not None and next_entry[0] <= offset:
                    ms = next_entry[1]
                stamp = _format_ms(ms) + " "
            yield stamp + _decode_line(line)
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
    """Where finished logs are kept, by key (`webapp/42/dev/1/job/01-install.log`).

    A directory by default (`DirectoryLogStore`); kept this small so a shared or
    object store can replace it when agents live on other machines.
    """

    def put(self, key: str, local_path: Path) -> int:
        """Copy a local log and its index under `key`, replacing what is there;
        return the log's size in bytes."""
        ...

    def path(self, key: str) -> Path | None:
        """A local path to read the log under `key` from, or None if there is none."""
        ...

    def list(self, prefix: str) -> builtins.list[str]:
        """The keys that start with `prefix`, sorted."""
        ...


class DirectoryLogStore(LogStore):
    """A log store in a directory (`<data dir>/logs`): a key is a relative path.

    `put` is idempotent: each file is copied to a temporary file beside its
    destination and moved into place with `os.replace`, so readers see the old
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
            _copy_atomically(local_index, index_path(dest))
        else:
            index_path(dest).unlink(missing_ok=True)
        _copy_atomically(local_path, dest)
        return dest.stat().st_size

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


def _copy_atomically(source: Path, dest: Path) -> None:
    """Put `source` at `dest` atomically: a hard link on the same file system (a log
    is finished when it is shipped, so sharing its inode costs nothing), else a copy."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
        # rename() does nothing when both names are links to one file (a re-put).
        Path(tmp).unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
