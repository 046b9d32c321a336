"""Nothing a task starts outlives it: the mark every process of a task carries, the
supervisor that takes a task's processes down with its agent, and the sweep that
kills what is left (DESIGN.md "Faults").

A cgroup would hold a task's processes best; where there is none (cgroups v1, as
on the machines this was built on) Stageflow marks them instead. Every process a
task starts inherits two environment variables, `STAGEFLOW_AGENT_DIR` (the agent's
work dir) and `STAGEFLOW_TASK_RUN` (`<lease id>:<index>:<try>`), which stay in
`/proc/<pid>/environ` after a process left the task's process group (`setsid`) or
lost its parent (the agent died). A process that starts another with a cleaned
environment (`env -i`) takes that one out of reach: only a cgroup could follow it.

Run as a script, this module is the supervisor a task runs under (standard library
only, so it starts in milliseconds with `python -I -S`):

    python -I -S reaper.py <agent pid> <program> [args...]

It leads the task's process group, runs the program in it and exits as the
program does (same exit code, or killed by the same signal). It asks the kernel
for a signal when its parent, the agent, dies (`PR_SET_PDEATHSIG`) and then kills
every process carrying the task's mark and its whole group: a task dies with its
agent even when it prints nothing and never notices the agent is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn

AGENT_DIR_VAR = "STAGEFLOW_AGENT_DIR"
TASK_RUN_VAR = "STAGEFLOW_TASK_RUN"
# PR_SET_PDEATHSIG from <linux/prctl.h>; the signal the supervisor asks for.
PR_SET_PDEATHSIG = 1
PARENT_DIED = signal.SIGUSR1
# Signals the whole group gets when the agent stops a task: the supervisor stays
# until its program has gone, so the exit status is the program's.
FORWARDED_BY_GROUP = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A process may fork while it is being killed: sweep until a round finds nothing.
SWEEP_ROUNDS = 10
CMDLINE_CHARS = 300


@dataclass(frozen=True)
class TaskMark:
    """The environment mark of one task run on one agent."""

    agent_dir: str
    run: str  # "<lease id>:<index>:<try>"

    def env(self) -> dict[str, str]:
        return {AGENT_DIR_VAR: self.agent_dir, TASK_RUN_VAR: self.run}


@dataclass(frozen=True)
class MarkedProcess:
    """A process found carrying an agent's mark."""

    pid: int
    pgid: int
    run: str
    cmdline: str

    def describe(self) -> str:
        return f"pid {self.pid}: {self.cmdline}"


def marked_processes(agent_dir: str, run: str | None = None) -> list[MarkedProcess]:
    """Live processes carrying `agent_dir`'s mark (and `run`'s, if given), not this one."""
    needle = AGENT_DIR_VAR.encode() + b"="
    found = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                environ = file.read()
        except OSError:  # gone, or not ours to read
            continue
        if needle not in environ:  # the fast path: most processes are not tasks
            continue
        variables = dict(item.split(b"=", 1) for item in environ.split(b"\0") if b"=" in item)
        if variables.get(AGENT_DIR_VAR.encode()) != os.fsencode(agent_dir):
            continue
        their_run = os.fsdecode(variables.get(TASK_RUN_VAR.encode(), b""))
        if run is not None and their_run != run:
            continue
        process = _describe(pid, their_run)
        if process is not None:
            found.append(process)
    return found


def kill_marked(agent_dir: str, run: str | None = None) -> list[MarkedProcess]:
    """SIGKILL every process carrying the mark, again while new ones appear; the killed."""
    killed: dict[int, MarkedProcess] = {}
    for _ in range(SWEEP_ROUNDS):
        fresh = [p for p in marked_processes(agent_dir, run) if p.pid not in killed]
        if not fresh:
            break
        for process in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            killed[process.pid] = process
    return list(killed.values())


def supervisor_argv(argv: list[str], python: str = sys.executable) -> list[str]:
    """`argv` run under the supervisor, whose parent is this process."""
    return [python, "-I", "-S", str(Path(__file__).resolve()), str(os.getpid()), *argv]


def _describe(pid: int, run: str) -> MarkedProcess | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # The command may hold spaces and parentheses: the fields follow the last ')'.
    fields = stat.rpartition(")")[2].split()
    if not fields or fields[0] == "Z":  # a zombie is dead already
        return None
    cmdline = " ".join(os.fsdecode(part) for part in raw.split(b"\0") if part)
    if len(cmdline) > CMDLINE_CHARS:
        cmdline = cmdline[: CMDLINE_CHARS - 1] + "…"
    return MarkedProcess(pid=pid, pgid=int(fields[2]), run=run, cmdline=cmdline or "?")


# --- the supervisor ----------------------------------------------------------------------


def supervise(parent: int, argv: list[str]) -> NoReturn:
    """Run `argv` in this process's group and exit as it does; die with `parent`."""
    agent_dir = os.environ.get(AGENT_DIR_VAR, "")
    run = os.environ.get(TASK_RUN_VAR)
    if os.getpgrp() != os.getpid():
        os.setsid()  # the group it kills must be the task's own, never its caller's

    def parent_died(_signum: int, _frame: FrameType | None) -> None:
        if os.getppid() == parent:
            return  # someone else sent the signal: the agent lives
        take_down()

    def take_down() -> NoReturn:
        if agent_dir:
            kill_marked(agent_dir, run)  # those that left the group, too
        os.killpg(0, signal.SIGKILL)  # this process included
        os._exit(137)  # not reached

    for forwarded in FORWARDED_BY_GROUP:
        signal.signal(forwarded, lambda _s, _f: None)  # the program gets its own copy
    signal.signal(PARENT_DIED, parent_died)
    _ask_for_parent_death_signal()
    if os.getppid() != parent:
        take_down()  # the agent died before the kernel was asked

    child = os.fork()
    if child == 0:
        # Signals caught above are reset to their defaults by exec.
        try:
            os.execvp(argv[0], argv)
        except OSError as err:
            os.write(2, f"stageflow: cannot run {argv[0]}: {err.strerror}\n".encode())
            os._exit(127)
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal that does not end a process
    os._exit(os.waitstatus_to_exitcode(status))


def _ask_for_parent_death_signal() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(PARENT_DIED), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        os.write(2, f"stageflow: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}\n".encode())


if __name__ == "__main__":
    supervise(int(sys.argv[1]), sys.argv[2:])
