"""Running a task's process: real subprocesses, real log files."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from activities.log_store import read_log
from activities.logs import LogWriter, SecretMasker
from activities.process import ProcessOutcome, run_process
from activities.reaper import TaskMark
from tests.conftest import wait_for

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "


def base_env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "LC_ALL": "C", **extra}


async def run(
    tmp_path: Path,
    script: str,
    *,
    secrets: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = 10,
    **kwargs: object,
) -> ProcessOutcome:
    with LogWriter(tmp_path / "task.log") as log:
        return await run_process(
            ["bash", "-c", script],
            env=env or base_env(),
            cwd=tmp_path,
            log=log,
            masker=SecretMasker(secrets or []),
            timeout=timeout,
            **kwargs,  # type: ignore[arg-type]
        )


def log_lines(tmp_path: Path) -> list[str]:
    return list(read_log(tmp_path / "task.log", timestamps=False))


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    async def check() -> bool:
        return condition()

    await wait_for(check, timeout=seconds)


def is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A killed orphan stays a zombie until init reaps it, and some container
    # inits never do: a zombie is dead.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0] == "Z"


async def test_output_and_errors_land_in_the_log_with_timestamps(tmp_path: Path) -> None:
    outcome = await run(tmp_path, "echo hello; echo oops >&2; printf 'no newline'")

    assert outcome == ProcessOutcome(
        exit_code=0, timed_out=False, canceled=False, duration=outcome.duration
    )
    lines = list(read_log(tmp_path / "task.log"))
    assert all(re.match(STAMP, line) for line in lines)
    assert [re.sub(STAMP, "", line, count=1) for line in lines] == [
        "hello",
        "oops",
        "no newline",
        "##[stageflow] exit code 0",
    ]


async def test_failing_command_reports_its_exit_code(tmp_path: Path) -> None:
    outcome = await run(tmp_path, "echo failing; exit 3")

    assert outcome.exit_code == 3
    assert not outcome.timed_out
    assert log_lines(tmp_path) == ["failing", "##[stageflow] exit code 3"]


async def test_process_gets_exactly_the_given_environment_and_cwd(tmp_path: Path) -> None:
    assert "HOME" in os.environ
    await run(tmp_path, 'echo "only=$ONLY home=${HOME-unset} cwd=$PWD"', env=base_env(ONLY="1"))

    assert log_lines(tmp_path)[0] == f"only=1 home=unset cwd={tmp_path}"


async def test_secrets_are_masked_even_when_split_across_reads(tmp_path: Path) -> None:
    # The pause makes the secret arrive in two reads.
    script = "printf 'token=hunt'; sleep 0.2; printf 'er2 and %s\\n' \"$SECRET\""
    await run(tmp_path, script, secrets=["hunter2"], env=base_env(SECRET="hunter2"))

    assert log_lines(tmp_path) == ["token=*** and ***", "##[stageflow] exit code 0"]


async def test_missing_program_is_noted_in_the_log(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "task.log") as log, pytest.raises(FileNotFoundError):
        await run_process(
            ["/no/such/program"],
            env=base_env(),
            cwd=tmp_path,
            log=log,
            masker=SecretMasker([]),
            timeout=None,
        )
    assert log_lines(tmp_path)[0].startswith("##[stageflow] could not start /no/such/program:")


async def test_timeout_kills_the_process_group_including_grandchildren(tmp_path: Path) -> None:
    # The grandchild ignores SIGTERM, so it takes the SIGKILL after the grace time.
    script = "(trap '' TERM; exec sleep 300) & echo $! > grandchild.pid; echo started; wait"
    outcome = await run(tmp_path, script, timeout=0.5, kill_grace=0.5)

    assert outcome.timed_out
    assert outcome.exit_code is None
    assert 0.5 <= outcome.duration < 5
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    await wait_until(lambda: is_dead(grandchild))
    assert log_lines(tmp_path) == [
        "started",
        "##[stageflow] timed out after 0.5s, process group killed",
    ]


async def test_cancelling_kills_the_process_group(tmp_path: Path) -> None:
    script = "sleep 300 & echo $! > grandchild.pid; echo started; wait"
    with LogWriter(tmp_path / "task.log") as log:
        task = asyncio.create_task(
            run_process(
                ["bash", "-c", script],
                env=base_env(),
                cwd=tmp_path,
                log=log,
                masker=SecretMasker([]),
                timeout=None,
                kill_grace=0.5,
            )
        )
        await wait_until(lambda: log.last_lines() == ["started"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    grandchild = int((tmp_path / "grandchild.pid").read_text())
    await wait_until(lambda: is_dead(grandchild))
    assert log_lines(tmp_path) == ["started", "##[stageflow] canceled, process group killed"]


async def test_background_grandchild_holding_the_output_is_not_waited_for(
    tmp_path: Path,
) -> None:
    script = "sleep 300 & echo $! > grandchild.pid; echo done"
    outcome = await run(tmp_path, script)

    assert outcome.exit_code == 0
    assert outcome.duration < 5
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    await wait_until(lambda: is_dead(grandchild))
    assert log_lines(tmp_path) == [
        "done",
        "##[stageflow] output still open 2s after the process exited, process group killed",
        "##[stageflow] exit code 0",
    ]


async def test_progress_is_reported_while_the_process_is_silent(tmp_path: Path) -> None:
    ticks: list[float] = []
    outcome = await run(
        tmp_path,
        "sleep 0.8",
        on_progress=lambda: ticks.append(time.monotonic()),
        progress_interval=0.1,
    )

    assert outcome.exit_code == 0
    assert 4 <= len(ticks) <= 9
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(ticks))


async def test_large_output_streams_to_the_log_quickly(tmp_path: Path) -> None:
    ticks: list[int] = []
    log_path = tmp_path / "task.log"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    with LogWriter(log_path) as log:
        outcome = await run_process(
            ["bash", "-c", "yes | head -c 50000000"],
            env=base_env(),
            cwd=tmp_path,
            log=log,
            masker=SecretMasker(["not-in-output"]),
            timeout=60,
            on_progress=lambda: ticks.append(log.bytes_written),
            progress_interval=0.05,
        )
        last = log.last_lines(2)
    elapsed = time.monotonic() - started
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    print(f"50 MB of output logged in {elapsed:.2f}s")
    assert outcome.exit_code == 0
    note = b"##[stageflow] exit code 0\n"
    assert log_path.stat().st_size == 50_000_000 + len(note)
    assert last == ["y", "##[stageflow] exit code 0"]
    assert elapsed < 10
    assert peak_after - peak_before < 40 * 1024  # no copy of the output in memory
    lines = read_log(log_path)
    assert all(re.fullmatch(STAMP + "y", line) for line in itertools.islice(lines, 100_000))


# --- a marked task: under the supervisor, nothing it starts outlives it -------------------


def mark_for(tmp_path: Path, run: str = "lease#job#1:1:1") -> TaskMark:
    return TaskMark(agent_dir=str(tmp_path / "agent"), run=run)


async def test_marked_task_keeps_its_exit_code_and_signal(tmp_path: Path) -> None:
    mark = mark_for(tmp_path)
    assert (await run(tmp_path, "echo $STAGEFLOW_TASK_RUN; exit 3", mark=mark)).exit_code == 3
    assert log_lines(tmp_path)[0] == mark.run
    assert (await run(tmp_path, "kill -TERM $$", mark=mark)).exit_code == -15


def watchers_of(task: int) -> list[int]:
    """The reaper watchers looking after task `task` (started by this process)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"watch" in argv and str(task).encode() in argv and str(os.getpid()).encode() in argv:
            found.append(int(entry.name))
    return found


async def test_a_marked_task_leads_its_group_and_its_watcher_leaves_after_it(
    tmp_path: Path,
) -> None:
    script = 'echo "$$ $(ps -o pgid= -p $$)"; sleep 0.5'
    outcome = await run(tmp_path, script, mark=mark_for(tmp_path))

    pid, pgid = log_lines(tmp_path)[0].split()
    assert outcome.exit_code == 0 and pid == pgid  # `kill -- -$$` works in a task
    await wait_until(lambda: not watchers_of(int(pid)))


ESCAPES = {
    # Holds the output open, in a session of its own.
    "setsid in the background": (
        "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' &"
        " while [ ! -s escaped.pid ]; do sleep 0.01; done; echo started"
    ),
    # Detached from the output too: nothing but the mark leads to it.
    "setsid in a subshell": (
        "(setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' > /dev/null 2>&1 &);"
        " while [ ! -s escaped.pid ]; do sleep 0.01; done; echo started"
    ),
}


@pytest.mark.parametrize("script", ESCAPES.values(), ids=ESCAPES.keys())
async def test_processes_that_left_the_group_are_killed_and_named_in_the_log(
    tmp_path: Path, script: str
) -> None:
    outcome = await run(tmp_path, script, mark=mark_for(tmp_path))

    escaped = int((tmp_path / "escaped.pid").read_text())
    await wait_until(lambda: is_dead(escaped))
    assert outcome.exit_code == 0
    assert outcome.left_running == [f"pid {escaped}: sleep 1000"]
    lines = log_lines(tmp_path)
    assert lines[0] == "started"
    assert "##[stageflow] 1 process(es) it started had left its process group; killed:" in lines
    assert f"##[stageflow]   pid {escaped}: sleep 1000" in lines
    assert lines[-1] == "##[stageflow] exit code 0"


async def test_escaped_processes_are_killed_on_timeout_too(tmp_path: Path) -> None:
    script = ESCAPES["setsid in a subshell"] + "; sleep 300"
    outcome = await run(tmp_path, script, mark=mark_for(tmp_path), timeout=1, kill_grace=0.5)

    escaped = int((tmp_path / "escaped.pid").read_text())
    await wait_until(lambda: is_dead(escaped))
    assert outcome.timed_out and outcome.left_running == [f"pid {escaped}: sleep 1000"]


async def test_other_runs_of_the_same_agent_are_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(
        ["sleep", "300"], env=base_env(**mark_for(tmp_path, run="other:1:1").env())
    )
    try:
        outcome = await run(tmp_path, "echo mine", mark=mark_for(tmp_path))
        assert outcome.left_running == [] and other.poll() is None
    finally:
        other.kill()
        other.wait()


PARENT = """
import asyncio, sys
from pathlib import Path
from activities.logs import LogWriter, SecretMasker
from activities.process import run_process
from activities.reaper import TaskMark

async def main(tmp):
    with LogWriter(tmp / "task.log") as log:
        await run_process(
            ["bash", "-c", "sleep 300 & echo $! > sleep.pid; wait"],
            env={"PATH": "/usr/bin:/bin"}, cwd=tmp, log=log, masker=SecretMasker([]),
            timeout=None, mark=TaskMark(agent_dir=str(tmp / "agent"), run="l:1:1"),
        )

asyncio.run(main(Path(sys.argv[1])))
"""


async def test_a_marked_task_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path)], cwd=Path(__file__).parent.parent
    )
    try:
        await wait_until(lambda: (tmp_path / "sleep.pid").exists(), seconds=10)
        sleeper = int((tmp_path / "sleep.pid").read_text())
        parent.kill()  # SIGKILL: no chance to clean up
        parent.wait()
        killed = time.monotonic()
        await wait_until(lambda: is_dead(sleeper))
        print(f"\ntask process gone {time.monotonic() - killed:.3f}s after its parent's kill -9")
    finally:
        parent.kill()
        parent.wait()


async def test_the_tasks_own_watcher_is_not_taken_for_an_escaped_process(tmp_path: Path) -> None:
    """The watcher carries the mark from its fork until it execs with a clean
    environment; a task that ends in that moment must not count it as escaped."""
    from activities.reaper import HERE, marked_processes

    mark = TaskMark(agent_dir=str(tmp_path), run="lease#job#1:1:1")
    env = {**os.environ, **mark.env()}
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    watcher_like = subprocess.Popen([*sleeper, HERE, "watch"], env=env)
    escaped = subprocess.Popen(sleeper, env=env)
    try:

        async def both_started() -> list[int] | None:
            found = [p.pid for p in marked_processes(str(tmp_path))]
            return found if escaped.pid in found else None

        assert await wait_for(both_started, what="the marked process") == [escaped.pid]
    finally:
        for process in (watcher_like, escaped):
            process.kill()
            process.wait()
