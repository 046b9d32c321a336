"""Task logs on the agent: writing them as the task runs, and masking secrets.

The log format (a `.log` file and its `.log.idx` timestamp index), the log store
and reading a log back live in `activities/log_store.py`, which the CLI uses too.

Keeping timestamps out of the log itself is what lets `LogWriter` append whole
chunks without looking at lines, so a task that prints a gigabyte is logged at
about the speed of `cat`. `read_log` puts the timestamps back on each line.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, quote_plus

from activities.log_store import CUT_SHORT, NOTE_PREFIX, TASK_ENDED, index_path

MASK = b"***"
MASK_TEXT = MASK.decode()

# How much of the output's end LogWriter keeps for heartbeats, and how it is cut.
TAIL_BYTES = 8 * 1024
TAIL_LINES = 20
LINE_CHARS = 500


class LogWriter:
    """Appends a task's output to a local log file and its timestamp index.

    `write` takes already-masked bytes and appends them as one chunk: no per-line
    work, one index entry per chunk (and none when the previous entry has the
    same millisecond). The end of the output is kept for heartbeats
    (`last_lines`). Appending to an existing log continues its offsets.
    """

    def __init__(self, path: Path, masker: SecretMasker | None = None) -> None:
        self._path = path
        self._masker = masker
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
        multi-line text gets it. With a masker, the task's secrets are masked: a note
        may quote a path or URL rendered from them.
        """
        if self._masker is not None:
            text = self._masker.mask(text)
        lines = [
            line if line.startswith(NOTE_PREFIX) else NOTE_PREFIX + line
            for line in (text.splitlines() or [""])
        ]
        block = "\n".join(lines) + "\n"
        if not self._at_line_start:
            block = "\n" + block
        self.write(block.encode("utf-8"))

    def ended(self, outcome: str) -> None:
        """The log's last line, for a task that ran to its end: `--- task ended: <outcome>`."""
        self.note(TASK_ENDED + outcome)

    def cut_short(self, why: str) -> None:
        """The log's last line, for a task stopped before its end: `--- cut short: <why>`."""
        self.note(CUT_SHORT + why)

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

    `mask` masks one whole string, such as Stageflow's own messages: there the
    value's quoted forms (Python repr, JSON, URL-encoded) are masked too, since
    an error message quotes the path or URL it was rendered into.
    """

    def __init__(self, values: list[str]) -> None:
        self.values = [v for v in dict.fromkeys(values) if v]
        forms = {form for v in self.values for form in _quoted_forms(v)}
        self._text_pattern = (
            re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))
            if forms
            else None
        )
        secrets = {v.encode("utf-8") for v in values if v}
        # Longest first: where one secret starts with another, mask the whole one.
        self._secrets = sorted(secrets, key=len, reverse=True)
        self._pattern = (
            re.compile(b"|".join(re.escape(s) for s in self._secrets)) if secrets else None
        )
        self._first_bytes = {s[:1] for s in self._secrets}
        self._keep = max((len(s) for s in self._secrets), default=1) - 1
        self._pending = b""

    def mask(self, text: str) -> str:
        """`text` with every secret value, and each of its quoted forms, as `***`."""
        if self._text_pattern is None or not text:
            return text
        return self._text_pattern.sub(MASK_TEXT, text)

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


def _quoted_forms(value: str) -> set[str]:
    """How a value may appear inside a message: as is, in a repr or JSON string
    (escapes), URL-encoded (a query parameter)."""
    return {
        value,
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
        quote_plus(value, safe=""),
    } - {""}
