"""Running a task's process: its output into the log with secrets masked, progress
callbacks for heartbeats, and timeouts and cancellation that take down the whole
process group, grandchildren included. With a `TaskMark`, the process is started
by `activities/reaper.py` (it dies with the agent, grandchildren included) and
whatever carries its mark after it ended — processes that left the group — is
killed and named in the log.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activities.logs import LogWriter, SecretMasker
from activities.reaper import MarkedProcess, TaskMark, kill_marked, supervised_argv

CHUNK_BYTES = 256 * 1024
PIPE_BYTES = 1024 * 1024
F_SETPIPE_SZ = 1031  # Linux fcntl


def _widen_pipe(proc: asyncio.subprocess.Process) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer, fuller reads for chatty tasks (Linux only;
    elsewhere, or above /proc/sys/fs/pipe-max-size, the default stays)."""
    transport = getattr(proc, "_transport", None)
    pipe = transport.get_pipe_transport(1) if transport is not None else None
    file = pipe.get_extra_info("pipe") if pipe is not None else None
    if file is None:
        return
    try:
        fcntl.fcntl(file.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass


# After the process exits, a background grandchild may still hold its output
# open: read for this long, then kill the group and stop reading.
DRAIN_AFTER_EXIT = 2.0
# After killing the group, how long to wait for the output to close.
DRAIN_AFTER_KILL = 1.0
GROUP_POLL_INTERVAL = 0.05
EXIT_POLL_INTERVAL = 0.05


@dataclass
class ProcessOutcome:
    """How a task's process ended.

    `run_process` re-raises cancellation rather than returning, so it never
    returns `canceled=True`; the field is for callers that record a canceled run.
    """

    exit_code: int | None  # None when killed by us; negative: killed by that signal
    timed_out: bool
    canceled: bool
    duration: float  # seconds
    # Processes of the task's mark that had left its group and were still running
    # after it ended ("pid 12: sleep 1000"): killed, and a reason to fail the task.
    left_running: list[str] = field(default_factory=list)


async def run_process(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: LogWriter,
    masker: SecretMasker,
    timeout: float | None,
    on_progress: Callable[[], None] | None = None,
    progress_interval: float = 1.0,
    kill_grace: float = 5.0,
    mark: TaskMark | None = None,
) -> ProcessOutcome:
    """Run `argv` (no shell) in its own process group and log its output.

    stdout and stderr go, masked, to `log`; stdin is /dev/null; `env` is the
    whole environment. `on_progress` is called every `progress_interval` seconds
    whether or not output flows. On timeout or cancellation the process group
    gets SIGTERM, then SIGKILL after `kill_grace` seconds; cancellation is
    re-raised once the group is gone. Whatever happens, no process of the group
    outlives this call, and the log ends with a `##[stageflow]` line saying how
    the process ended.

    With `mark`, every process started carries the mark in its environment, the
    process is started by the reaper (so the group dies with this process), and
    once it has ended every process still carrying the mark is killed too; those
    that had left the group are named in the log and in `left_running`.
    """
    started = time.monotonic()
    if mark is not None:
        env = {**env, **mark.env()}
    try:
        proc = await asyncio.create_subprocess_exec(
            *(supervised_argv(argv) if mark is not None else argv),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            limit=CHUNK_BYTES,
        )
    except OSError as err:
        log.note(f"could not start {argv[0] if argv else 'an empty command'}: {err}")
        raise
    _widen_pipe(proc)
    run = _RunningProcess(proc, log, masker, on_progress, progress_interval, mark)
    timed_out = False
    try:
        try:
            if not await run.wait_for(run.exited, timeout):
                timed_out = True
                await run.terminate(kill_grace)
            await run.drain()
        except asyncio.CancelledError:
            await run.terminate(kill_grace)
            await run.drain()
            log.note("canceled, process group killed")
            raise
    finally:
        await run.clean_up()

    if timed_out:
        log.note(f"timed out after {timeout:g}s, process group killed")
        exit_code = None
    else:
        assert proc.returncode is not None  # run.exited is done
        exit_code = proc.returncode
        log.note(f"exit code {exit_code}{_signal_suffix(exit_code)}")
    return ProcessOutcome(
        exit_code=exit_code,
        timed_out=timed_out,
        canceled=False,
        duration=time.monotonic() - started,
        left_running=[p.describe() for p in run.left_running],
    )


class _RunningProcess:
    """One started process: the task copying its output to the log, the task
    waiting for its exit, progress ticks, and how to end its process group."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        log: LogWriter,
        masker: SecretMasker,
        on_progress: Callable[[], None] | None,
        progress_interval: float,
        mark: TaskMark | None,
    ) -> None:
        self.proc = proc
        self.mark = mark
        self.left_running: list[MarkedProcess] = []
        # start_new_session: the child leads a new process group with its pid as id.
        self.pgid = proc.pid
        self.log = log
        self.masker = masker
        self.on_progress = on_progress
        self.progress_interval = progress_interval
        self.next_progress = time.monotonic() + progress_interval
        self.output_ended = False
        self.exited: asyncio.Future[int] = asyncio.ensure_future(self._wait_for_exit())
        self.pump: asyncio.Future[None] = asyncio.ensure_future(self._copy_output())

    async def _wait_for_exit(self) -> int:
        # On Python 3.11 Process.wait() returns only once the output pipe is closed
        # too, which a background grandchild can hold open for ever; the return code
        # is set as soon as the process exits, so look at it as well.
        waiting = asyncio.ensure_future(self.proc.wait())
        try:
            while self.proc.returncode is None:
                await asyncio.wait({waiting}, timeout=EXIT_POLL_INTERVAL)
        finally:
            waiting.cancel()
        return self.proc.returncode

    async def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        read = self.proc.stdout.read
        write = self.log.write
        feed = self.masker.feed
        while chunk := await read(CHUNK_BYTES):
            write(feed(chunk))

    async def wait_for(self, future: asyncio.Future[Any], seconds: float | None) -> bool:
        """Wait up to `seconds` (None: no limit) for `future`, calling `on_progress`
        on time meanwhile. False if the time ran out. Raises if copying output failed."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not future.done():
            self._raise_if_pump_failed()
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            step = None if deadline is None else deadline - now
            if self.on_progress is not None:
                until_progress = max(0.0, self.next_progress - now)
                step = until_progress if step is None else min(step, until_progress)
            watched: set[asyncio.Future[Any]] = {future}
            if not self.pump.done():
                watched.add(self.pump)
            await asyncio.wait(watched, timeout=step, return_when=asyncio.FIRST_COMPLETED)
            self._progress_if_due()
        self._raise_if_pump_failed()
        return True

    async def terminate(self, grace: float) -> None:
        """SIGTERM the group; SIGKILL it once the grace time is over or the group is gone."""
        deadline = time.monotonic() + grace
        self._signal_group(signal.SIGTERM)
        await self.wait_for(self.exited, grace)
        # Grandchildren get what is left of the grace time too.
        while self._group_alive() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(GROUP_POLL_INTERVAL, left))
            self._progress_if_due()
        self._signal_group(signal.SIGKILL)
        await self.wait_for(self.exited, None)

    async def drain(self) -> None:
        """Once the process has exited: log the rest of its output, but do not
        wait forever for a background grandchild that keeps the output open."""
        if not await self.wait_for(self.pump, DRAIN_AFTER_EXIT):
            self._signal_group(signal.SIGKILL)
            await self._kill_escaped()  # they may be what holds the output open
            if not await self.wait_for(self.pump, DRAIN_AFTER_KILL):
                # Held open by a process that left the group (setsid): stop reading.
                self.pump.cancel()
            self._end_output()
            self.log.note(
                f"output still open {DRAIN_AFTER_EXIT:g}s after the process exited, "
                "process group killed"
            )
        self._end_output()

    async def clean_up(self) -> None:
        """Make sure nothing of the group (or of the mark) survives and no task or pipe
        is left over."""
        self._signal_group(signal.SIGKILL)
        await self._kill_escaped()
        leftovers = [task for task in (self.pump, self.exited) if not task.done()]
        if not self.pump.done():
            # Closes the pipe (and kills the child if somehow still running).
            transport = getattr(self.proc, "_transport", None)
            if transport is not None:
                transport.close()
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        if self.pump.done() and not self.pump.cancelled():
            self.pump.exception()  # retrieved, so asyncio does not warn about it
        self._note_escaped()

    async def _kill_escaped(self) -> None:
        """Kill what carries the task's mark; name in the log those that had left the
        group (the group's own members are killed with the group, as always)."""
        if self.mark is None:
            return
        killed = await asyncio.to_thread(kill_marked, self.mark.agent_dir, self.mark.run)
        known = {p.pid for p in self.left_running}
        escaped = [p for p in killed if p.pgid != self.pgid and p.pid not in known]
        if not escaped:
            return
        self.left_running += escaped

    def _note_escaped(self) -> None:
        """Once the output has ended: say in the log which processes were left."""
        if not self.left_running:
            return
        self._end_output()
        count = len(self.left_running)
        lines = [f"{count} process(es) it started had left its process group; killed:"]
        lines += [f"  {p.describe()}" for p in self.left_running]
        for line in lines:
            # A command line may hold a secret (an argument rendered from one).
            masked = self.masker.feed(line.encode()) + self.masker.flush()
            self.log.note(masked.decode("utf-8", errors="replace"))

    def _end_output(self) -> None:
        if not self.output_ended:
            self.output_ended = True
            self.log.write(self.masker.flush())

    def _progress_if_due(self) -> None:
        if self.on_progress is not None and time.monotonic() >= self.next_progress:
            self.on_progress()
            self.next_progress = time.monotonic() + self.progress_interval

    def _raise_if_pump_failed(self) -> None:
        if self.pump.done() and not self.pump.cancelled():
            error = self.pump.exception()
            if error is not None:
                raise error

    def _signal_group(self, signum: signal.Signals) -> None:
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            pass  # the group is gone already

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        return True


def _signal_suffix(exit_code: int) -> str:
    if exit_code >= 0:
        return ""
    try:
        return f" (killed by {signal.Signals(-exit_code).name})"
    except ValueError:
        return " (killed by a signal)"
