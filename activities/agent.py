"""The agent's activities: hold a lease, download artifacts, run tasks, ship logs.

One `AgentActivities` object per agent process holds what they share: the
Temporal client (to tell a workflow it got the lease), the work directory, the
artifact cache, the log store and the agent's environment, read once at start —
and the leases it holds and the task tries it runs, which outlive the activity
attempts that serve them (DESIGN.md "Faults"):

- A try of a task (lease id, index, try number) starts once. When Temporal loses
  sight of a `run_task` attempt (the server was away and its heartbeat timed out),
  the SDK cancels it as not found or timed out: the attempt detaches and the task
  goes on; the retry, on this agent's queue, attaches to it, or takes the result it
  left. Only a cancel the workflow asked for kills the task.
- A lease lives until its job ends. A `lease_agent` attempt Temporal lost sight of
  detaches the same way; the workflow's `renew_lease` takes the lease over. A lease
  nobody holds for ORPHAN_LEASE_GRACE ends, and its tasks are killed.
- `drain` (SIGTERM): no new work; running tries finish (up to the drain timeout,
  then they are stopped and reported `interrupted`), then each lease is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.artifacts import ArtifactCache
from activities.log_store import LogStore
from activities.logs import LogWriter, SecretMasker
from activities.masking import heartbeat, masks_secrets, running_masker
from activities.process import run_process
from activities.reaper import TaskMark
from workflows.activity_refs import (
    CLEANUP,
    DOWNLOAD_ARTIFACTS,
    LEASE_AGENT,
    RENEW_LEASE,
    RUN_TASK,
    SHIP_LOGS,
)
from workflows.agent_api import (
    LEASE_GRANTED_SIGNAL,
    CleanupRequest,
    DownloadedArtifact,
    DownloadRequest,
    DownloadResult,
    JobContext,
    LeaseGranted,
    LeaseRequest,
    LeaseResult,
    RunTaskRequest,
    RunTaskResult,
    ShipLogsRequest,
    ShipLogsResult,
    TaskProgress,
)
from workflows.names import agent_queue
from workflows.pipeline import SecretRef, Task

T = TypeVar("T")
# A step's cancellation reaches the agent only in the answer to a heartbeat, and the
# SDK sends a heartbeat at most every min(0.8 x heartbeat timeout, the worker's
# max_heartbeat_throttle_interval): steps heartbeat this often, and the agent's step
# worker sends at most one heartbeat per HEARTBEAT_THROTTLE, so a cancel stops a task
# within about HEARTBEAT_THROTTLE (plus the round trips) at ~3 heartbeats a second.
HEARTBEAT_EVERY = 0.2
HEARTBEAT_THROTTLE = timedelta(seconds=0.3)
# The lease is cancelled only when its job is over: no hurry, one heartbeat a second.
LEASE_HEARTBEAT_EVERY = 1.0
# A lease whose holder Temporal lost sight of waits this long for `renew_lease`
# (which comes as soon as the server and the control worker are back) before it
# ends and its tasks are killed.
ORPHAN_LEASE_GRACE = 120.0
# How long a finished try's result (and an ended lease's end) is kept for an attempt
# that comes late: a retry after the server lost the first attempt's completion.
KEEP_RESULTS = 600.0
# While draining, how long a finished try's result waits for its lease's hand-back.
HAND_BACK_FIRST = 5.0


@dataclass
class LeaseState:
    """One job this agent is holding, by lease id.

    `done` is set when the lease is to end (the job's last step, `cleanup`, a cancel,
    a hand-back) with `ended` saying how; `closed` once it has: its tries stopped,
    its work dir removed. `holders` counts the lease activities heartbeating it now.
    """

    context: JobContext
    job_dir: Path
    log_dir: Path
    done: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str = "completed"
    holders: int = 0
    unheld_since: float | None = None
    # The steps running on it (asyncio tasks): a drain hands the lease back when none is.
    steps: set[asyncio.Future[Any]] = field(default_factory=set)
    keeper: asyncio.Task[None] | None = None  # see AgentActivities._keep

    def busy(self) -> set[asyncio.Future[Any]]:
        self.steps = {step for step in self.steps if not step.done()}
        return self.steps


TryKey = tuple[str, int, int]  # (lease id, task index, try number)


@dataclass
class TaskTry:
    """One try of a task on this agent: started once, attended by each `run_task`
    attempt Temporal sends for it, its result kept for a while after it ends."""

    key: TryKey
    lease: LeaseState
    work: asyncio.Task[RunTaskResult] | None = None
    log: LogWriter | None = None
    attempts: int = 0
    finished_at: float | None = None
    # Set when the agent stops it (drain timeout): why, for the log and the result.
    interrupted: str | None = None

    def progress(self) -> TaskProgress | str:
        if self.log is None:
            return "running"
        return TaskProgress(
            bytes=self.log.bytes_written,
            last_lines=self.log.last_lines(5),
            log_path=str(self.log.path),
        )


class TaskError(Exception):
    """A task failed for a reason of its own (bad input, missing secret): not the agent's."""


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


class AgentActivities:
    """Activities of one agent process; see DESIGN.md "Agents and task queues"."""

    def __init__(
        self,
        client: Client,
        *,
        agent_id: str,
        agent_name: str,
        work_dir: Path,
        log_store: LogStore,
        base_env: dict[str, str],
        data_dir: Path,
    ) -> None:
        self._client = client
        self.agent_id = agent_id
        self.agent_name = agent_name
        self._work_dir = work_dir
        self._cache = ArtifactCache(work_dir / "cache")
        self._log_store = log_store
        self._base_env = base_env
        self._data_dir = data_dir
        self._leases: dict[str, LeaseState] = {}
        # Leases that ended lately: (when, how), for a late `renew_lease` or step.
        self._ended: dict[str, tuple[float, str]] = {}
        self._tries: dict[TryKey, TaskTry] = {}
        self.draining = False
        self.handed_back = 0  # leases given back by a drain

    # --- the lease, on pool/<pool> ------------------------------------------------------

    @activity.defn(name=LEASE_AGENT.name)
    @masks_secrets
    async def lease_agent(self, request: LeaseRequest) -> LeaseResult:
        """Hold this agent for one job until the job ends it or the workflow cancels it.

        Tells the workflow where to send the job's steps (this agent's own queue),
        then heartbeats for the whole job: when the agent dies, the heartbeat
        timeout tells the workflow at once. Not retried: the workflow leases again,
        or renews the lease (`renew_lease`) when only Temporal lost sight of it.
        The attempt keeps its pool slot until the lease has ended, even detached:
        the agent never runs more jobs than its capacity.
        """
        info = activity.info()
        context = request.context
        lease = self._open_lease(context)
        activity.heartbeat("granted")
        assert info.workflow_id is not None, "lease_agent runs for a StageWorkflow"
        handle = self._client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        try:
            await handle.signal(
                LEASE_GRANTED_SIGNAL,
                LeaseGranted(
                    lease_id=context.lease_id,
                    agent_id=self.agent_id,
                    agent_name=self.agent_name,
                    task_queue=agent_queue(self.agent_id),
                ),
            )
        except BaseException:
            self._end_lease(lease, "canceled")
            raise
        if self.draining:
            # Taken just as the drain began: give it back before any step runs.
            self._end_lease(lease, "handed_back")
        return await self._hold(lease, keep_slot=True)

    @activity.defn(name=RENEW_LEASE.name)
    @masks_secrets
    async def renew_lease(self, request: LeaseRequest) -> LeaseResult:
        """Go on holding a lease whose `lease_agent` Temporal lost sight of (its
        heartbeat timed out while the server was away): heartbeats until the lease
        ends, exactly as `lease_agent` does, so the job goes on on this agent.

        A lease that ended lately answers how it ended; one this agent does not
        know (it restarted, or gave up waiting) fails with `LeaseUnknown`.
        """
        lease_id = request.context.lease_id
        lease = self._leases.get(lease_id)
        if lease is None:
            ended = self._ended.get(lease_id)
            if ended is not None:
                return LeaseResult(agent_id=self.agent_id, ended=ended[1])
            raise ApplicationError(
                f"agent {self.agent_name} does not hold lease {lease_id}",
                type="LeaseUnknown",
                non_retryable=True,
            )
        activity.heartbeat("renewed")
        print(f"lease {lease_id}: renewed, the job goes on", flush=True)
        return await self._hold(lease, keep_slot=False)

    # --- the job's steps, on agent/<agent-id> -------------------------------------------

    @activity.defn(name=DOWNLOAD_ARTIFACTS.name)
    @masks_secrets
    async def download_artifacts(self, request: DownloadRequest) -> DownloadResult:
        """Put every artifact under $STAGEFLOW_ARTIFACTS/<alias>, through the content cache.

        Idempotent: a retry replaces what a failed try left.
        """
        lease = self._lease(request.context)
        root = lease.job_dir / "artifacts"
        root.mkdir(parents=True, exist_ok=True)
        results = []
        for artifact in request.artifacts:
            dest = root / artifact.alias
            if dest.exists():
                await asyncio.to_thread(_remove_tree, dest)
            try:
                fetched = await _heartbeating(
                    self._cache.fetch(artifact, dest), f"downloading {artifact.alias}"
                )
            except ValueError as err:  # ArtifactError: wrong checksum, missing version
                raise ApplicationError(
                    f"artifact {artifact.alias!r} {artifact.version}: {err}",
                    type="ArtifactUnavailable",
                    non_retryable=True,
                ) from err
            results.append(
                DownloadedArtifact(
                    alias=artifact.alias,
                    version=artifact.version,
                    path=str(fetched.path),
                    cached=fetched.cached,
                    bytes=fetched.bytes,
                    seconds=fetched.seconds,
                )
            )
        return DownloadResult(artifacts=results)

    @activity.defn(name=RUN_TASK.name)
    @masks_secrets
    async def run_task(self, request: RunTaskRequest) -> RunTaskResult:
        """Run one try of a task; its output streams to a local log, secrets masked.

        Runs once per try (lease id, index, try number): Temporal retries an attempt
        only when it lost sight of it (a heartbeat timeout while the server was
        away), and the retry attaches to the try still running here, or returns
        the result it left; the workflow decides about the task's own retries
        (`retries:`), each a new try with its own log. A cancel the workflow asked
        for kills the task's processes before it is reported; a cancel because
        Temporal lost the attempt leaves the task running for the retry.
        With `log_key`, the log is in the log store from the start (a hard link
        that grows as the task writes, so what was written survives a cancel or
        the agent's death) or, where the store cannot link, put there at the end;
        this saves the separate `ship_logs` step. The log ends with a line saying
        how the task ended; a log without one was cut short. With `end_lease`,
        the lease ends here too, saving the `cleanup` step.
        """
        key: TryKey = (request.context.lease_id, request.index, request.try_number)
        self._forget_old()
        run = self._tries.get(key)
        if run is None:
            # The try is the step, not this attempt: a drain waits for the try.
            lease = self._lease(request.context, counts_as_step=False)
            run = TaskTry(key=key, lease=lease)
            # The try is an asyncio task of its own: it outlives this attempt if
            # Temporal loses sight of it. It heartbeats nothing itself; each
            # attempt heartbeats its progress.
            run.work = asyncio.ensure_future(self._run_try(request, lease, run))
            lease.steps.add(run.work)
            self._tries[key] = run
        elif run.log is not None and run.work is not None and not run.work.done():
            run.log.note(
                f"Temporal lost sight of this task (attempt {run.attempts}); attempt "
                f"{activity.info().attempt} goes on with it, not starting it again"
            )
        run.attempts += 1
        return await self._attend(run)

    async def _attend(self, run: TaskTry) -> RunTaskResult:
        """Heartbeat a try's progress until it ends; its result, or its error."""
        work = run.work
        assert work is not None
        try:
            while not work.done():
                await asyncio.wait({work}, timeout=HEARTBEAT_EVERY)
                if not work.done():
                    heartbeat(run.progress())
        except asyncio.CancelledError:
            if _canceled_on_purpose():
                work.cancel()  # kills the task's processes ...
                await asyncio.gather(work, return_exceptions=True)  # ... before we say so
                raise
            # Temporal lost sight of this attempt: the try goes on for its retry.
            raise _detached(f"run_task attempt {activity.info().attempt}") from None
        if self.draining:
            # Let the hand-back reach the workflow first, so it sends no further
            # step here (one sent all the same is refused: LeaseHandedBack).
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run.lease.closed.wait(), timeout=HAND_BACK_FIRST)
        if work.cancelled():
            raise ApplicationError(
                f"task stopped on agent {self.agent_name}: its lease ended ({run.lease.ended})",
                type="TaskStopped",
                non_retryable=True,
            )
        try:
            return work.result().model_copy()
        except ApplicationError:
            raise
        except Exception as err:
            # Not the task's failure but the agent's: a retry would only meet it again.
            raise ApplicationError(
                f"{type(err).__name__} on agent {self.agent_name}: {err}",
                type=type(err).__name__,
                non_retryable=True,
            ) from err

    async def _run_try(
        self, request: RunTaskRequest, lease: LeaseState, run: TaskTry
    ) -> RunTaskResult:
        """The try itself, once: log, run, ship the log, maybe end the lease."""
        try:
            result = await self._run_logged(request, lease, run)
        finally:
            run.finished_at = time.monotonic()
        if not result.interrupted and (
            request.end_lease == "always"
            or (request.end_lease == "if_succeeded" and result.succeeded)
        ):
            # The job's last step: free the agent now (the lease activity ends and
            # removes the work dir), instead of waiting for a `cleanup` step. No
            # await after this: the try is done before the lease's end is handled.
            self._end_lease(lease, "completed")
            result.lease_ended = True
        return result

    async def _run_logged(
        self, request: RunTaskRequest, lease: LeaseState, run: TaskTry
    ) -> RunTaskResult:
        task = request.task
        started = time.monotonic()
        log_path = lease.log_dir / f"{request.index:02d}-try{request.try_number}.log"
        with LogWriter(log_path, masker=running_masker()) as log:
            run.log = log
            log.note(f"task {task.name!r} ({task.kind}) on agent {self.agent_name}")
            linked = request.log_key is not None and await asyncio.to_thread(
                self._log_store.link, request.log_key, log_path
            )
            try:
                result = await self._run_task(request, lease, log)
            except BaseException as err:
                stopped = isinstance(err, asyncio.CancelledError)
                log.cut_short(
                    (run.interrupted or "canceled")
                    if stopped
                    else f"{type(err).__name__} on agent {self.agent_name}"
                )
                if request.log_key and not linked:
                    # Keep what was written; the cancel (or the error) is what to report.
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(self._log_store.put, request.log_key, log_path)
                if not (stopped and run.interrupted):
                    raise
                # Stopped by the agent's drain: not the task's failure, a result.
                result = RunTaskResult(
                    succeeded=False,
                    interrupted=True,
                    duration=timedelta(seconds=time.monotonic() - started),
                    log_path=str(log_path),
                    message=run.interrupted,
                )
            else:
                log.ended(_how_it_ended(task, result))
            result.log_bytes = log.bytes_written
            run.log = None  # closed: an attempt that attaches now writes no note
        if request.log_key:
            if not linked:
                await asyncio.to_thread(self._log_store.put, request.log_key, log_path)
            result.log_key = request.log_key
        return result

    async def _run_task(
        self, request: RunTaskRequest, lease: LeaseState, log: LogWriter
    ) -> RunTaskResult:
        task = request.task
        log_path = log.path
        started = time.monotonic()
        try:
            secrets = self._resolve_secrets(request.secrets)
            masker = SecretMasker(list(secrets.values()))
            env = self._task_env(request, lease, secrets)
            # Templates see the variables and the STAGEFLOW_* context, not the agent's env.
            variables = {
                **request.variables,
                **secrets,
                **self._context_env(request, lease),
            }
            cwd = _inside(lease.job_dir, _render(task.working_dir or ".", variables))
            cwd.mkdir(parents=True, exist_ok=True)
            if task.kind in ("script", "file"):
                argv = self._script_argv(task, lease, request.index, variables)
                outcome = await run_process(
                    argv,
                    env=env,
                    cwd=cwd,
                    log=log,
                    masker=masker,
                    timeout=task.timeout.total_seconds(),
                    # Every process the task starts carries this: none outlives it.
                    mark=TaskMark(
                        agent_dir=str(self._work_dir),
                        run=f"{request.context.lease_id}:{request.index}:{request.try_number}",
                    ),
                )
                message = (
                    f"timed out after {task.timeout}"
                    if outcome.timed_out
                    else f"exit code {outcome.exit_code}"
                )
                if outcome.left_running:
                    message += (
                        f", but {len(outcome.left_running)} process(es) it started were "
                        "still running (killed; see the log)"
                    )
                return RunTaskResult(
                    succeeded=outcome.exit_code == 0
                    and not outcome.timed_out
                    and not outcome.left_running,
                    exit_code=outcome.exit_code,
                    timed_out=outcome.timed_out,
                    duration=timedelta(seconds=outcome.duration),
                    log_path=str(log_path),
                    log_bytes=log.bytes_written,
                    message=message,
                )
            runner = {"template": _render_template, "copy": _copy, "http": _http}[task.kind]
            run = InProcessTask(task, lease.job_dir / "artifacts", cwd, variables, log, masker)
            await asyncio.wait_for(
                _heartbeating(runner(run), task.name),
                timeout=task.timeout.total_seconds(),
            )
            log.note("##[stageflow] succeeded")
            succeeded, message = True, "succeeded"
        except (TaskError, TemplateError, OSError, httpx.HTTPError) as err:
            text = f"{type(err).__name__}: {err}" if not isinstance(err, TaskError) else str(err)
            log.note(f"##[stageflow] failed: {text}")
            succeeded, message = False, text
        except TimeoutError:
            log.note(f"##[stageflow] timed out after {task.timeout}")
            succeeded, message = False, f"timed out after {task.timeout}"
        return RunTaskResult(
            succeeded=succeeded,
            exit_code=0 if succeeded else 1,
            duration=timedelta(seconds=time.monotonic() - started),
            log_path=str(log_path),
            log_bytes=log.bytes_written,
            message=message,
        )

    @activity.defn(name=SHIP_LOGS.name)
    @masks_secrets
    async def ship_logs(self, request: ShipLogsRequest) -> ShipLogsResult:
        """Copy a task's local log (and its timestamp index) to the log store. Idempotent."""
        size = await asyncio.to_thread(self._log_store.put, request.key, Path(request.log_path))
        return ShipLogsResult(key=request.key, bytes=size)

    @activity.defn(name=CLEANUP.name)
    @masks_secrets
    async def cleanup(self, request: CleanupRequest) -> None:
        """Remove the job's work dir and end its lease here, so the agent is free at once."""
        lease = self._leases.get(request.context.lease_id)
        if lease is not None:
            self._end_lease(lease, "completed")

    # --- the leases and tries this agent holds -------------------------------------------

    def _lease(self, context: JobContext, *, counts_as_step: bool = True) -> LeaseState:
        """The lease a new step runs under; the step (this asyncio task) counts as
        running on it, unless `counts_as_step` is false (the caller says what does)."""
        lease = self._leases.get(context.lease_id)
        if lease is None or lease.done.is_set():
            ended = (
                lease.ended if lease is not None else self._ended.get(context.lease_id, (0, ""))[1]
            )
            if ended == "handed_back":
                raise ApplicationError(
                    f"agent {self.agent_name} is stopping and handed job {context.job} back",
                    type="LeaseHandedBack",
                    non_retryable=True,
                )
            raise ApplicationError(
                f"agent {self.agent_name} holds no lease {context.lease_id}",
                type="LeaseNotHeld",
                non_retryable=True,
            )
        step = asyncio.current_task()
        if counts_as_step and step is not None:
            lease.steps.add(step)
        return lease

    def _open_lease(self, context: JobContext) -> LeaseState:
        lease_dir = self._work_dir / "jobs" / _safe(context.lease_id)
        lease = LeaseState(context=context, job_dir=lease_dir / "w", log_dir=lease_dir / "logs")
        lease.job_dir.mkdir(parents=True, exist_ok=True)
        lease.log_dir.mkdir(parents=True, exist_ok=True)
        self._forget_old()
        self._leases[context.lease_id] = lease
        lease.keeper = asyncio.ensure_future(self._keep(lease, lease_dir))
        return lease

    def _end_lease(self, lease: LeaseState, ended: str) -> None:
        """Ask a lease to end (the first reason given is the one reported)."""
        if not lease.done.is_set():
            lease.ended = ended
            lease.done.set()
            self.handed_back += ended == "handed_back"

    async def _hold(self, lease: LeaseState, *, keep_slot: bool) -> LeaseResult:
        """Heartbeat a lease until it has ended: the heart of `lease_agent` and
        `renew_lease`. A cancel the workflow asked for ends the lease; one because
        Temporal lost sight of this attempt leaves it for `renew_lease` to take."""
        context = lease.context
        lease.holders += 1
        lease.unheld_since = None
        holding = True

        def let_go() -> None:
            nonlocal holding
            if holding:
                holding = False
                lease.holders -= 1
                if lease.holders == 0:
                    lease.unheld_since = time.monotonic()

        try:
            while not lease.closed.is_set():
                activity.heartbeat(f"running job {context.job} of {context.stage}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(lease.closed.wait(), timeout=LEASE_HEARTBEAT_EVERY)
        except asyncio.CancelledError:
            if _canceled_on_purpose():
                self._end_lease(lease, "canceled")
                await lease.closed.wait()
                raise
            let_go()
            print(
                f"lease {context.lease_id}: Temporal lost sight of its "
                f"{activity.info().activity_type} attempt; the job goes on here, "
                f"waiting for renew_lease (up to {ORPHAN_LEASE_GRACE:g}s)",
                flush=True,
            )
            if keep_slot:
                await lease.closed.wait()  # this pool slot stays taken meanwhile
            raise _detached(activity.info().activity_type) from None
        finally:
            let_go()
        return LeaseResult(agent_id=self.agent_id, ended=lease.ended)

    async def _keep(self, lease: LeaseState, lease_dir: Path) -> None:
        """From a lease's grant to its end: end it when nobody held it for too long,
        then stop its tries, remove its work dir and remember how it ended."""
        while not lease.done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lease.done.wait(), timeout=LEASE_HEARTBEAT_EVERY)
            unheld = lease.unheld_since
            if unheld is not None and time.monotonic() - unheld > ORPHAN_LEASE_GRACE:
                print(
                    f"lease {lease.context.lease_id}: not renewed within "
                    f"{ORPHAN_LEASE_GRACE:g}s after Temporal lost sight of it; ending it",
                    flush=True,
                )
                self._end_lease(lease, "abandoned")
        left = [
            r.work
            for r in self._tries.values()
            if r.lease is lease and r.work and not r.work.done()
        ]
        for work in left:
            work.cancel()  # nothing of a job outlives its lease
        await asyncio.gather(*left, return_exceptions=True)
        self._leases.pop(lease.context.lease_id, None)
        self._ended[lease.context.lease_id] = (time.monotonic(), lease.ended)
        await asyncio.to_thread(shutil.rmtree, lease_dir, True)
        lease.closed.set()

    def _forget_old(self) -> None:
        """Drop results and ended leases older than KEEP_RESULTS."""
        now = time.monotonic()
        for key, run in list(self._tries.items()):
            if (
                run.finished_at is not None
                and now - run.finished_at > KEEP_RESULTS
                and run.lease.closed.is_set()
            ):
                del self._tries[key]
        for lease_id, (when, _) in list(self._ended.items()):
            if now - when > KEEP_RESULTS:
                del self._ended[lease_id]

    def running(self) -> list[TaskTry]:
        return [r for r in self._tries.values() if r.work is not None and not r.work.done()]

    async def drain(self, timeout: float) -> None:
        """Stop taking work: let running tries finish for up to `timeout` seconds, stop
        the rest (their results say `interrupted`), and hand every lease back as soon
        as no step runs on it. Returns once every lease has ended."""
        self.draining = True
        handing = [asyncio.ensure_future(self._hand_back(lease)) for lease in self._leases.values()]
        if not handing:
            return
        _, pending = await asyncio.wait(handing, timeout=timeout)
        if pending:
            for run in self.running():
                run.interrupted = (
                    f"interrupted: agent {self.agent_name} is stopping and its drain "
                    f"timeout ({timeout:g}s) passed; the task runs again on another agent"
                )
                assert run.work is not None
                run.work.cancel()
            await asyncio.wait(pending)

    async def _hand_back(self, lease: LeaseState) -> None:
        while not lease.done.is_set():
            busy = lease.busy()
            if not busy:
                self._end_lease(lease, "handed_back")
                break
            ended = asyncio.ensure_future(lease.done.wait())
            await asyncio.wait({*busy, ended}, return_when=asyncio.FIRST_COMPLETED)
            ended.cancel()
        await lease.closed.wait()

    def secret_values(self, request: Any) -> list[str]:
        """The secret values a step's request works with, masked in all it sends back
        (`masks_secrets`). One that does not resolve cannot leak; `run_task` says why."""
        refs = request.secrets if isinstance(request, RunTaskRequest) else {}
        values: list[str] = []
        for name, ref in refs.items():
            with contextlib.suppress(TaskError):
                values.extend(self._resolve_secrets({name: ref}).values())
        return values

    def _resolve_secrets(self, refs: dict[str, SecretRef]) -> dict[str, str]:
        values = {}
        for name, ref in refs.items():
            if ref.kind == "env":
                if ref.location not in self._base_env:
                    raise TaskError(
                        f"secret {name}: environment variable {ref.location} is not set "
                        f"on agent {self.agent_name}"
                    )
                values[name] = self._base_env[ref.location]
            else:
                try:
                    values[name] = Path(ref.location).expanduser().read_text().rstrip("\n")
                except OSError as err:
                    raise TaskError(
                        f"secret {name}: cannot read {ref.location} on agent "
                        f"{self.agent_name}: {err.strerror}"
                    ) from err
        return values

    def _task_env(
        self, request: RunTaskRequest, lease: LeaseState, secrets: dict[str, str]
    ) -> dict[str, str]:
        env = dict(self._base_env)
        env.update(request.variables)
        env.update(secrets)
        env.update(
            {k: _render(v, {**request.variables, **secrets}) for k, v in request.task.env.items()}
        )
        env.update(self._context_env(request, lease))
        return env

    def _context_env(self, request: RunTaskRequest, lease: LeaseState) -> dict[str, str]:
        """The STAGEFLOW_* variables every task sees (and templates can use)."""
        return {
            **request.context.environment(),
            "STAGEFLOW_WORK_DIR": str(lease.job_dir),
            "STAGEFLOW_ARTIFACTS": str(lease.job_dir / "artifacts"),
            "STAGEFLOW_AGENT": self.agent_name,
            "STAGEFLOW_DATA_DIR": str(self._data_dir),
            "STAGEFLOW_TASK": request.task.name,
            "STAGEFLOW_TRY": str(request.try_number),
        }

    def _script_argv(
        self, task: Task, lease: LeaseState, index: int, variables: dict[str, str]
    ) -> list[str]:
        args = [_render(arg, variables) for arg in task.args]
        if task.file is not None:
            path = _inside(lease.job_dir / "artifacts", _render(task.file, variables))
            if not path.is_file():
                raise TaskError(f"script file {task.file} is not in the artifacts")
            shell = "python" if path.suffix == ".py" and task.shell == "bash" else task.shell
        else:
            assert task.script is not None
            suffix = ".py" if task.shell == "python" else ".sh"
            path = lease.job_dir.parent / f"task-{index:02d}{suffix}"
            path.write_text(task.script)
            shell = task.shell
        if shell == "python":
            return [shutil.which("python3") or sys.executable, "-u", str(path), *args]
        if shell == "sh":
            return ["sh", "-e", str(path), *args]
        return ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", str(path), *args]


# --- in-process task kinds -------------------------------------------------------------


# Templates render in a sandbox: a pipeline's text is data, not code the agent trusts.
SANDBOX = SandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)


def _render(text: str, variables: dict[str, str]) -> str:
    """Render a task input as a template; variables' values are data, never re-rendered."""
    if "{{" not in text and "{%" not in text:
        return text
    return SANDBOX.from_string(text).render(variables)


def _inside(root: Path, relative: str) -> Path:
    """`relative` under `root`; an absolute path stays as given (the task's choice)."""
    path = Path(relative)
    return path if path.is_absolute() else (root / path)


@dataclass(frozen=True)
class InProcessTask:
    """A template, copy or http task as the agent runs it in its own process.

    `variables` are the task's variables, its secrets and the STAGEFLOW_* context;
    `masker` masks the response body an http task logs (its notes are masked by
    the log itself).
    """

    task: Task
    artifacts: Path
    cwd: Path
    variables: dict[str, str]
    log: LogWriter
    masker: SecretMasker

    def render(self, text: str) -> str:
        return _render(text, self.variables)

    def artifact(self, path: str) -> Path:
        """A path (rendered) in $STAGEFLOW_ARTIFACTS."""
        return _inside(self.artifacts, self.render(path))

    def target(self, path: str) -> Path:
        """A path (rendered) under the task's working dir."""
        return _inside(self.cwd, self.render(path))


async def _render_template(run: InProcessTask) -> None:
    spec = run.task.template
    assert spec is not None
    source = run.artifact(spec.source)
    target = run.target(spec.target)
    if not source.is_file():
        raise TaskError(f"template {spec.source} is not in the artifacts")
    context: dict[str, Any] = {**run.variables, "env": dict(run.variables)}
    text = SANDBOX.from_string(source.read_text()).render(context)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    run.log.note(f"rendered {spec.source} -> {target} ({len(text.encode())} bytes)")


async def _copy(run: InProcessTask) -> None:
    spec = run.task.copy_
    assert spec is not None
    target = run.target(spec.target)
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for pattern in spec.sources:
        matches = sorted(glob.glob(str(run.artifact(pattern)), recursive=True))
        if not matches:
            raise TaskError(f"copy: nothing matches {pattern}")
        for match in matches:
            source = Path(match)
            dest = target / source.name
            if dest.exists() and not spec.overwrite:
                raise TaskError(f"copy: {dest} exists and overwrite is false")
            if source.is_dir():
                await asyncio.to_thread(shutil.copytree, source, dest, dirs_exist_ok=True)
            else:
                await asyncio.to_thread(shutil.copyfile, source, dest)
            count += 1
            run.log.note(f"copied {source} -> {dest}")
    run.log.note(f"copied {count} item(s) to {target}")


async def _http(run: InProcessTask) -> None:
    spec = run.task.http
    assert spec is not None
    url = run.render(spec.url)
    expected = spec.expect_status if isinstance(spec.expect_status, list) else [spec.expect_status]
    async with httpx.AsyncClient(timeout=spec.timeout.total_seconds()) as client:
        response = await client.request(
            spec.method,
            url,
            headers={k: run.render(v) for k, v in spec.headers.items()},
            content=run.render(spec.body).encode() if spec.body is not None else None,
        )
    # The request line is masked as text: a secret in a URL may be URL-encoded there.
    run.log.write(run.masker.mask(f"{spec.method} {url} -> {response.status_code}\n").encode())
    run.log.write(run.masker.feed(response.content[:4096]) + run.masker.flush())
    if response.status_code not in expected:
        raise TaskError(
            f"{spec.method} {url} answered {response.status_code}, expected "
            + " or ".join(map(str, expected))
        )


async def _heartbeating(work: Awaitable[T], what: str) -> T:
    """Await `work`, heartbeating meanwhile so a long step shows it is alive."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEARTBEAT_EVERY)
            if done:
                return task.result()
            with contextlib.suppress(RuntimeError):  # outside an activity (tests)
                heartbeat(what)
    finally:
        # Canceled (or timed out): the work stops too, it does not run on unseen.
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _detached(what: str) -> ApplicationError:
    """What an attempt Temporal lost sight of ends with: the server no longer wants
    its answer, so it is benign (no traceback in the agent's log)."""
    return ApplicationError(
        f"{what} detached: Temporal lost sight of it; the work goes on for its retry",
        type="AttemptDetached",
        category=ApplicationErrorCategory.BENIGN,
    )


def _canceled_on_purpose() -> bool:
    """Whether the running activity was canceled by its workflow (or its worker is
    going down), rather than because Temporal lost sight of it: the server answered
    a heartbeat "not found", or timed the attempt out while it was away."""
    details = activity.cancellation_details()
    return details is not None and (details.cancel_requested or details.worker_shutdown)


def _how_it_ended(task: Task, result: RunTaskResult) -> str:
    """The end note's words: `exit code 0 after 1.2 s`, `timed out after 300.0 s` …"""
    if result.timed_out:
        outcome = "timed out"
    elif task.kind in ("script", "file"):
        outcome = f"exit code {result.exit_code}"
    else:
        outcome = "succeeded" if result.succeeded else "failed"
    return f"{outcome} after {result.duration.total_seconds():.1f} s"


def _remove_tree(path: Path) -> None:
    """Remove a tree even when the cache made its files read-only."""

    def make_writable(func: Callable[..., Any], failed: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o755)
        func(failed)

    shutil.rmtree(path, onerror=make_writable)
