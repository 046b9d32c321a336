"""Nothing a task starts outlives it: the mark every process of a task carries, the
start and the watcher that take a task's processes down with its agent, and the
sweep that kills what is left (DESIGN.md "Faults").

A cgroup would hold a task's processes best; where there is none (cgroups v1, as
on the machines this was built on) Stageflow marks them instead. Every process a
task starts inherits two environment variables, `STAGEFLOW_AGENT_DIR` (the agent's
work dir) and `STAGEFLOW_TASK_RUN` (`<lease id>:<index>:<try>`), which stay in
`/proc/<pid>/environ` after a process left the task's process group (`setsid`) or
lost its parent (the agent died). A process that starts another with a cleaned
environment (`env -i`) takes that one out of reach: only a cgroup could follow it.

Run as a script, this module starts a task so that it dies with its agent
(standard library only, so it starts in milliseconds with `python -I -S`):

    python -I -S reaper.py start <agent pid> <program> [args...]

leads a new process group, asks the kernel to SIGKILL it when the agent dies
(`PR_SET_PDEATHSIG`), starts a watcher, and becomes the program (exec: the task's
`$$` is its process group, its exit status its own). The kernel signal reaches
only that one process, so the watcher

    python -I -S reaper.py watch <agent pid> <task pid> <agent dir> <task run>

(in a session of its own, without the mark) waits on the agent with a pidfd and,
when the agent dies, kills the task's group and every process carrying its mark;
it leaves by itself once the task's group is gone.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

AGENT_DIR_VAR = "STAGEFLOW_AGENT_DIR"
TASK_RUN_VAR = "STAGEFLOW_TASK_RUN"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
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
        return f"pid {self.pid}: {self.cmdline or '?'}"


HERE = str(Path(__file__).resolve())
# A process mid-exec is looked at again this often, this many times (~0.1 s in all).
EXEC_LOOKS = 10
EXEC_LOOK_PAUSE = 0.01


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
        if process is not None and not process.cmdline:
            process = _after_exec(pid, their_run, needle)
        # Not the task's: its watcher (or `start` forking it), which carries the mark
        # from fork until it execs with a clean environment.
        if process is not None and HERE not in process.cmdline:
            found.append(process)
    return found


def _after_exec(pid: int, run: str, needle: bytes) -> MarkedProcess | None:
    """A marked process whose command line reads empty is (almost always) in the middle
    of an exec — the watcher becoming itself, under load — and its environment and
    command line are those of before: look again for a moment, until it has become what
    it execs. None if it then carries no mark (the watcher's clean environment)."""
    process: MarkedProcess | None = None
    for _ in range(EXEC_LOOKS):
        time.sleep(EXEC_LOOK_PAUSE)
        try:
            with open(f"/proc/{pid}/environ", "rb") as file:
                if needle not in file.read():
                    return None
        except OSError:
            return None
        process = _describe(pid, run)
        if process is None or process.cmdline:
            return process
    return process


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


def supervised_argv(argv: list[str], python: str = sys.executable) -> list[str]:
    """`argv` started through `start` below, dying with this process (its parent)."""
    return [python, "-I", "-S", str(Path(__file__).resolve()), "start", str(os.getpid()), *argv]


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
    return MarkedProcess(pid=pid, pgid=int(fields[2]), run=run, cmdline=cmdline)


# --- starting a task, and watching over it ----------------------------------------------

WATCH_POLL = 0.5  # once the task's leader has gone, how often to look at its group


def start(agent: int, argv: list[str]) -> NoReturn:
    """Become `argv`, in a process group of its own, dying with `agent`."""
    if os.getpgrp() != os.getpid():
        os.setsid()  # the group killed must be the task's own, never its caller's
    _ask_for_parent_death_signal(signal.SIGKILL)
    if os.getppid() != agent:
        os._exit(137)  # the agent died before the kernel was asked
    _start_watcher(agent)
    try:
        os.execvp(argv[0], argv)
    except OSError as err:
        os.write(2, f"stageflow: cannot run {argv[0]}: {err.strerror}\n".encode())
        os._exit(127)


def _start_watcher(agent: int) -> None:
    """Fork the watcher away (twice, so the task never has it as a child)."""
    task = os.getpid()
    middle = os.fork()
    if middle:
        os.waitpid(middle, 0)
        return
    try:
        if os.fork():
            os._exit(0)
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)  # it must not hold the task's output open
        os.closerange(3, 65536)
        env = {k: v for k, v in os.environ.items() if k not in (AGENT_DIR_VAR, TASK_RUN_VAR)}
        agent_dir, run = os.environ.get(AGENT_DIR_VAR, ""), os.environ.get(TASK_RUN_VAR, "")
        here = str(Path(__file__).resolve())
        argv = [sys.executable, "-I", "-S", here, "watch", str(agent), str(task), agent_dir, run]
        os.execve(sys.executable, argv, env)
    finally:
        os._exit(1)  # only when exec failed: the task then has the kernel signal alone


def watch(agent: int, task: int, agent_dir: str, run: str) -> NoReturn:
    """Until the task's group is gone: if the agent dies, take the task down."""
    for ignored in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(ignored, signal.SIG_IGN)
    try:
        agent_fd = os.pidfd_open(agent)
    except ProcessLookupError:
        _take_down(task, agent_dir, run)
    try:
        task_fd: int | None = os.pidfd_open(task)
    except ProcessLookupError:
        task_fd = None
    while True:
        watched = [agent_fd] if task_fd is None else [agent_fd, task_fd]
        ready, _, _ = select.select(watched, [], [], None if task_fd is not None else WATCH_POLL)
        if agent_fd in ready:
            _take_down(task, agent_dir, run)
        if task_fd is not None and task_fd in ready:
            os.close(task_fd)
            task_fd = None
        if task_fd is None and not _group_alive(task):
            os._exit(0)


def _take_down(task: int, agent_dir: str, run: str) -> NoReturn:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(task, signal.SIGKILL)
    if agent_dir:
        kill_marked(agent_dir, run)  # those that left the group, too
    os._exit(0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _ask_for_parent_death_signal(signum: signal.Signals) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        os.write(2, f"stageflow: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}\n".encode())


if __name__ == "__main__":
    if sys.argv[1] == "start":
        start(int(sys.argv[2]), sys.argv[3:])
    else:
        watch(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
