"""The soak's ledger: every run of every task, from the lines the tasks append.

`Ledger.read_new()` follows the file as it grows; `Ledger.watch()` notes, for each
run without an `end` line yet, the last moment its process was seen alive and
when it was seen gone, so a run killed mid-way (its agent killed, or its
process group) still has an interval. `overlaps()` is the invariant "no task
key ran twice at the same time", a pure function of the runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

# A process found with the run's pid but started later than this after the run's
# start line is another process that got the pid again.
PID_REUSE_SLACK = 1.0


@dataclass
class Run:
    """One run of a task, as its own lines in the ledger tell it."""

    run_id: str
    release: int
    stage: str
    task: str
    attempt: int
    task_try: int
    pid: int
    agent: str
    start: float
    end: float | None = None  # from its `end` line
    last_alive: float | None = None  # seen running at this time (no end line yet)
    gone_at: float | None = None  # seen gone at this time (no end line)

    @property
    def key(self) -> tuple[int, str, str]:
        """The task key: two runs of one key must never overlap."""
        return (self.release, self.stage, self.task)

    @property
    def ended_at_least(self) -> float:
        """The latest moment it was surely still running."""
        if self.end is not None:
            return self.end
        return max(self.start, self.last_alive or self.start)

    def describe(self) -> str:
        until = (
            f"end {self.end:.3f}"
            if self.end is not None
            else f"no end line, alive at {self.ended_at_least:.3f}"
            + (f", gone by {self.gone_at:.3f}" if self.gone_at else "")
        )
        return (
            f"run {self.run_id} (try key {self.attempt}.{self.task_try}) on {self.agent}: "
            f"start {self.start:.3f}, {until}"
        )


@dataclass
class Ledger:
    """The runs in the ledger file, read as it grows."""

    path: Path
    runs: dict[str, Run] = field(default_factory=dict)
    bad_lines: list[str] = field(default_factory=list)
    _offset: int = 0
    _partial: bytes = b""

    def read_new(self) -> None:
        """Take in the lines appended since the last call."""
        try:
            with self.path.open("rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._take(line.decode(errors="replace"))

    def _take(self, line: str) -> None:
        parts = line.split()
        if len(parts) != 9 or parts[0] not in ("start", "end"):
            if line.strip():
                self.bad_lines.append(line)
            return
        kind, release, stage, task, try_key, pid, moment, agent, run_id = parts
        try:
            attempt, task_try = (int(n) for n in try_key.split("."))
            when = float(moment)
            run = self.runs.get(run_id) or Run(
                run_id=run_id,
                release=int(release),
                stage=stage,
                task=task,
                attempt=attempt,
                task_try=task_try,
                pid=int(pid),
                agent=agent,
                start=when,
            )
        except ValueError:
            self.bad_lines.append(line)
            return
        self.runs[run_id] = run
        if kind == "start":
            run.start = when
        else:
            run.end = when

    def watch(self) -> None:
        """Note which runs without an end line are still running, and which are gone."""
        now = time.time()
        for run in self.open_runs():
            if run.gone_at is not None:
                continue
            if _running(run):
                run.last_alive = now
            else:
                run.gone_at = now

    def open_runs(self) -> list[Run]:
        return [run for run in self.runs.values() if run.end is None]

    def still_running(self) -> list[Run]:
        """Runs whose process is alive now (orphans, once every release has ended)."""
        return [run for run in self.open_runs() if _running(run)]


def _running(run: Run) -> bool:
    try:
        process = psutil.Process(run.pid)
        started = process.create_time()
        status = process.status()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return status != psutil.STATUS_ZOMBIE and started <= run.start + PID_REUSE_SLACK


def stop_run(run: Run) -> bool:
    """Kill a run's process group (a task leads its own: pgid == pid) by its pid."""
    if not _running(run):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(run.pid) == run.pid:
            os.killpg(run.pid, signal.SIGKILL)
        else:
            os.kill(run.pid, signal.SIGKILL)
    return True


def overlaps(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one task key whose intervals surely overlap: the later one
    started before the earlier one's end (or the last time it was seen alive)."""
    by_key: dict[tuple[int, str, str], list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    found = []
    for group in by_key.values():
        group.sort(key=lambda r: r.start)
        for i, first in enumerate(group):
            for second in group[i + 1 :]:
                if second.start < first.ended_at_least:
                    found.append((first, second))
    return found
