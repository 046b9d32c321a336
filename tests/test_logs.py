"""Task logs: the writer and its timestamp index, secret masking, reading back, the store."""

from __future__ import annotations

import itertools
import random
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from activities.log_store import (
    CUT_SHORT_LINE,
    MAX_LINE_BYTES,
    DirectoryLogStore,
    index_path,
    read_log,
)
from activities.logs import TAIL_BYTES, LogWriter, SecretMasker
from starter.logs import try_logs

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "


def index_entries(log_path: Path) -> list[tuple[int, int]]:
    lines = index_path(log_path).read_text().splitlines()
    return [(int(offset), int(ms)) for offset, ms in (line.split() for line in lines)]


def test_written_chunks_read_back_as_timestamped_lines(tmp_path: Path) -> None:
    path = tmp_path / "job" / "01-install.log"
    with LogWriter(path) as log:
        log.write(b"first line\nsecond ")
        log.write(b"half\n")
        log.write(b"")
        log.write("caf\u00e9 \xff\n".encode() + b"bad \xff byte\r\n")
        assert log.bytes_written == path.stat().st_size

    assert path.read_bytes() == b"first line\nsecond half\ncaf\xc3\xa9 \xc3\xbf\nbad \xff byte\r\n"
    lines = list(read_log(path))
    assert [re.sub(STAMP, "", line, count=1) for line in lines] == [
        "first line",
        "second half",
        "caf\u00e9 \xff",
        "bad \ufffd byte",
    ]
    assert all(re.match(STAMP, line) for line in lines)
    assert list(read_log(path, timestamps=False)) == [
        "first line",
        "second half",
        "caf\u00e9 \xff",
        "bad \ufffd byte",
    ]


def test_each_line_gets_the_time_of_the_chunk_holding_its_first_byte(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    path.write_bytes(b"one\ntwo\nthree\n")
    # 2026-11-22T02:11:20.123Z and one second later, the second chunk starting in "two".
    index_path(path).write_text("0 1795313480123\n5 1795313481123\n")

    assert list(read_log(path)) == [
        "2026-11-22T02:11:20.123Z one",
        "2026-11-22T02:11:20.123Z two",
        "2026-11-22T02:11:21.123Z three",
    ]


def test_index_has_one_entry_per_chunk_and_none_within_the_same_millisecond(
    tmp_path: Path,
) -> None:
    path = tmp_path / "task.log"
    with LogWriter(path) as log:
        for _ in range(1000):
            log.write(b"x\n")
            log.write(b"")

    entries = index_entries(path)
    assert entries[0][0] == 0
    # 1000 writes take a few milliseconds: far fewer entries than writes.
    assert 1 <= len(entries) < 1000
    assert len({ms for _, ms in entries}) == len(entries)
    assert [offset for offset, _ in entries] == sorted(offset for offset, _ in entries)
    assert all(offset % 2 == 0 for offset, _ in entries)


def test_reopened_log_continues_offsets(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    with LogWriter(path) as log:
        log.write(b"no newline")
    with LogWriter(path) as log:
        assert log.bytes_written == 10
        log.note("retry")
        log.write(b"again\n")

    assert path.read_bytes() == b"no newline\n##[stageflow] retry\nagain\n"
    assert index_entries(path)[-1][0] >= 10  # the reopened writer continues the offsets
    assert [line[25:] for line in read_log(path)] == [
        "no newline",
        "##[stageflow] retry",
        "again",
    ]


def test_note_is_a_line_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    with LogWriter(path) as log:
        log.note("starting")
        log.write(b"progress 50%")
        log.note("exit code 0")
        log.note("##[stageflow] already prefixed")

    assert path.read_bytes() == (
        b"##[stageflow] starting\n"
        b"progress 50%\n"
        b"##[stageflow] exit code 0\n"
        b"##[stageflow] already prefixed\n"
    )


def test_last_lines_come_from_a_small_tail(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "task.log") as log:
        assert log.last_lines() == []
        log.write(b"".join(b"line %d\n" % i for i in range(100_000)))
        assert log.last_lines() == [f"line {i}" for i in range(99_995, 100_000)]
        assert len(log.last_lines(100)) == 20
        assert log._tail == log._tail[-TAIL_BYTES:]  # never the whole output

        log.write(b"x" * 600 + b"\n" + b"downloading 10%\rdownloading 90%")
        long_line, progress = log.last_lines(2)
        assert long_line == "x" * 500
        assert progress == "downloading 90%"

        log.write(b"z" * 100_000)  # one line longer than the tail
        assert log.last_lines() == ["z" * 500]


def test_read_log_splits_an_endless_line(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    with LogWriter(path) as log:
        log.write(b"a" * (2 * MAX_LINE_BYTES + 10))

    pieces = list(read_log(path, timestamps=False))
    assert [len(piece) for piece in pieces] == [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]


def test_read_log_without_index_has_no_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "task.log"
    path.write_bytes(b"plain\n")
    assert list(read_log(path)) == ["plain"]


def test_log_without_an_end_note_reads_as_cut_short_once_its_task_is_over(
    tmp_path: Path,
) -> None:
    ended, canceled, lost = (tmp_path / f"{name}.log" for name in ("ended", "canceled", "lost"))
    for path in (ended, canceled, lost):
        with LogWriter(path) as log:
            log.write(b"deploying\n")
            if path is ended:
                log.ended("exit code 0 after 1.2 s")
            elif path is canceled:
                log.cut_short("canceled")

    assert list(read_log(ended, timestamps=False, task_over=True)) == [
        "deploying",
        "##[stageflow] --- task ended: exit code 0 after 1.2 s",
    ]
    assert (
        list(read_log(canceled, task_over=True))[-1][25:] == "##[stageflow] --- cut short: canceled"
    )
    assert list(read_log(lost, timestamps=False, task_over=True)) == ["deploying", CUT_SHORT_LINE]
    assert list(read_log(lost, task_over=True))[-1] == CUT_SHORT_LINE  # no time: not written
    # A task still running may write more: its log is not cut short yet.
    assert list(read_log(lost, timestamps=False)) == ["deploying"]


def mask_in_pieces(masker: SecretMasker, pieces: list[bytes]) -> bytes:
    return b"".join(masker.feed(piece) for piece in pieces) + masker.flush()


def test_secret_split_across_chunks_is_masked() -> None:
    text = b"token=hunter2 and again hunter2, almost hunter and hunter2"
    expected = b"token=*** and again ***, almost hunter and ***"
    for cut in range(len(text) + 1):
        masker = SecretMasker(["hunter2"])
        assert mask_in_pieces(masker, [text[:cut], text[cut:]]) == expected, cut
    for cut1, cut2 in itertools.combinations(range(len(text) + 1), 2):
        masker = SecretMasker(["hunter2"])
        pieces = [text[:cut1], text[cut1:cut2], text[cut2:]]
        assert mask_in_pieces(masker, pieces) == expected, (cut1, cut2)


def naive_mask(text: bytes, secrets: list[str]) -> bytes:
    """Left to right, longest secret first: what masking the whole output gives."""
    values = sorted((s.encode() for s in secrets), key=len, reverse=True)
    out, pos = b"", 0
    while pos < len(text):
        found = next((v for v in values if text.startswith(v, pos)), None)
        if found:
            out, pos = out + b"***", pos + len(found)
        else:
            out, pos = out + text[pos : pos + 1], pos + 1
    return out


def test_masking_any_chunking_matches_masking_the_whole_output() -> None:
    secrets = ["abc", "abcdef", "cde", "pässwörd", "x"]
    rng = random.Random(7)
    alphabet = [b"a", b"b", b"c", b"d", b"e", b"f", b"x", b"y", "ä".encode(), b"p\xc3\xa4ss"]
    for _ in range(300):
        text = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        expected = naive_mask(text, secrets)
        cuts = sorted(rng.sample(range(len(text) + 1), min(4, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert mask_in_pieces(SecretMasker(secrets), pieces) == expected, (text, cuts)
    masker = SecretMasker(secrets)
    assert masker.feed(b"abcdefabcde") + masker.flush() == b"******de"


def test_masker_holds_back_only_a_possible_secret_start() -> None:
    masker = SecretMasker(["secret-value", ""])
    assert masker.feed(b"log line\nsecr") == b"log line\n"
    assert masker.feed(b"et-val") == b""
    assert masker.feed(b"ue!") == b"***!"
    assert masker.feed(b"plain\n") == b"plain\n"
    assert masker.feed(b"ends secret-valu") == b"ends "
    assert masker.flush() == b"secret-valu"


def test_masker_without_secrets_returns_the_chunk_itself() -> None:
    masker = SecretMasker(["", ""])
    chunk = b"y\n" * 1000
    assert masker.feed(chunk) is chunk
    assert masker.flush() == b""


def test_directory_log_store_puts_lists_and_replaces(tmp_path: Path) -> None:
    local = tmp_path / "agent" / "01-install.log"
    with LogWriter(local) as log:
        log.write(b"installing\n")
    store = DirectoryLogStore(tmp_path / "logs")
    key = "webapp/42/dev/1/job/01-install.log"

    assert store.path(key) is None
    assert store.list("webapp/") == []
    assert store.put(key, local) == 11
    assert store.put("webapp/42/dev/1/job/02-deploy.log", local) == 11
    assert store.put("webapp/43/dev/1/job/01-install.log", local) == 11
    assert store.put("other/1/dev/1/job/01-install.log", local) == 11

    stored = store.path(key)
    assert stored is not None
    assert stored.read_bytes() == b"installing\n"
    assert index_path(stored).read_text() == index_path(local).read_text()
    assert [line[25:] for line in read_log(stored)] == ["installing"]
    assert store.list("webapp/42/") == [
        "webapp/42/dev/1/job/01-install.log",
        "webapp/42/dev/1/job/02-deploy.log",
    ]
    assert store.list("webapp/4") == [
        "webapp/42/dev/1/job/01-install.log",
        "webapp/42/dev/1/job/02-deploy.log",
        "webapp/43/dev/1/job/01-install.log",
    ]
    assert len(store.list("")) == 4

    with LogWriter(local) as log:
        log.write(b"more\n")
    assert store.put(key, local) == 16  # same key again: replaced
    assert stored.read_bytes() == b"installing\nmore\n"
    assert sorted(p.name for p in stored.parent.iterdir()) == [
        "01-install.log",
        "01-install.log.idx",
        "02-deploy.log",
        "02-deploy.log.idx",
    ]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside.log",
        "webapp/../../outside.log",
        "webapp/42/",
        "webapp//42.log",
        "webapp/.hidden.log",
        "webapp/42/task.log.idx",
    ],
)
def test_directory_log_store_rejects_keys_outside_it(tmp_path: Path, key: str) -> None:
    local = tmp_path / "task.log"
    local.write_bytes(b"x\n")
    store = DirectoryLogStore(tmp_path / "logs")
    with pytest.raises(ValueError):
        store.put(key, local)
    with pytest.raises(ValueError):
        store.path(key)
    assert not (tmp_path / "logs").exists()


def test_directory_log_store_rejects_prefixes_outside_it(tmp_path: Path) -> None:
    store = DirectoryLogStore(tmp_path / "logs")
    for prefix in ["/", "/etc", "..", "webapp/../.."]:
        with pytest.raises(ValueError):
            store.list(prefix)


def test_linked_log_grows_in_the_store_and_outlives_the_agent_copy(tmp_path: Path) -> None:
    local = tmp_path / "agent" / "jobs" / "01-try1.log"
    store = DirectoryLogStore(tmp_path / "logs")
    key = "webapp/42/dev/1/job/01-install.log"
    with LogWriter(local) as log:
        log.note("task 'install' (script) on agent a1")
        assert store.link(key, local)
        log.write(b"installing\n")
        stored = store.path(key)
        assert stored is not None
        assert list(read_log(stored, timestamps=False)) == [
            "##[stageflow] task 'install' (script) on agent a1",
            "installing",
        ]
        log.write(b"half a line")
    # The agent's work dir goes (the lease ended, or the agent was wiped): the log stays.
    shutil.rmtree(tmp_path / "agent")
    lines = list(read_log(stored, task_over=True))
    assert [re.sub(STAMP, "", line, count=1) for line in lines] == [
        "##[stageflow] task 'install' (script) on agent a1",
        "installing",
        "half a line",
        CUT_SHORT_LINE,
    ]
    assert all(re.match(STAMP, line) for line in lines[:-1])


def test_link_across_file_systems_is_refused_and_put_copies(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's tmp dir")
    other = Path(tempfile.mkdtemp(dir=shm))
    try:
        local = other / "01-try1.log"
        store = DirectoryLogStore(tmp_path / "logs")
        key = "webapp/42/dev/1/job/01-install.log"
        with LogWriter(local) as log:
            log.write(b"installing\n")
            assert not store.link(key, local)
            assert store.path(key) is None
            assert sorted(p.name for p in (tmp_path / "logs/webapp/42/dev/1/job").iterdir()) == []
            log.ended("exit code 0 after 0.1 s")
        assert store.put(key, local) == local.stat().st_size
        stored = store.path(key)
        assert stored is not None
        assert list(read_log(stored, timestamps=False, task_over=True))[-1].startswith(
            "##[stageflow] --- task ended"
        )
    finally:
        shutil.rmtree(other)


def test_try_logs_lists_every_try_of_exactly_one_task_in_run_order(tmp_path: Path) -> None:
    local = tmp_path / "task.log"
    local.write_bytes(b"x\n")
    store = DirectoryLogStore(tmp_path / "logs")
    job = "webapp/42/dev/1/job"
    for name in [
        "01-deploy.job2.try2.log",
        "01-deploy.try2.log",
        "01-deploy.job2.log",
        "01-deploy.log",
        "01-deploy.try10.log",
        "01-deploy-db.log",
        "01-deploy-db.try2.log",
        "01-deployer.log",
        "02-deploy.log",
    ]:
        store.put(f"{job}/{name}", local)

    found = try_logs(store, f"{job}/01-deploy")
    assert [(log.key.rpartition("/")[2], log.label) for log in found] == [
        ("01-deploy.log", "try 1"),
        ("01-deploy.try2.log", "try 2"),
        ("01-deploy.try10.log", "try 10"),
        ("01-deploy.job2.log", "job try 2, try 1"),
        ("01-deploy.job2.try2.log", "job try 2, try 2"),
    ]
    assert [log.key for log in try_logs(store, f"{job}/01-deploy-db")] == [
        f"{job}/01-deploy-db.log",
        f"{job}/01-deploy-db.try2.log",
    ]
    assert try_logs(store, f"{job}/03-missing") == []
    assert try_logs(store, "webapp/43/dev/1/job/01-deploy") == []
