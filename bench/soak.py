"""`python -m bench.soak`: releases while processes are killed -9, then what held.

A soak starts its own stack on 127.0.0.1 — the Temporal dev server (SQLite in
its data dir, so it survives a restart), two control workers and three agents
in one pool — and creates releases of a four-stage pipeline with approvals
(bench/soak_pipeline.py). Meanwhile it kills a random process with SIGKILL at
random moments (the server, a control worker or an agent; only that process,
as a crash would) and restarts it with the same data dir, work dir and port.
The driver approves (and now and then rejects) as people would, with
`starter.releases.decide`.

Every task appends its start and end to one ledger file under `flock`; at the
end the soak checks what Stageflow promises (bench/soak_invariants.py):

- every release reaches an end state, within `--settle-seconds` of the last kill;
- no task key ran twice at the same time;
- every run of a task is a try the release shows, with its log;
- no approval lost;
- no release number reused.

It prints progress and a summary, writes the JSON record to `--json` and
`<work dir>/soak.json` (beside it the evidence: `releases.json` as `release
show --json` has them, `runs.json` from the ledger, `printed-logs.txt` from
`stageflow logs`, and every process's log), and exits 0 when every invariant held, 1 when one did
not (or the soak itself broke), 2 for bad options. Every process it started is
stopped by its PID, and so is any task process left running by a killed agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.soak_invariants import (
    CreateRecord,
    Invariant,
    Kill,
    Verdict,
    approvals_kept,
    end_states,
    never_concurrent,
    numbers_unique,
    visible_tries,
)
from bench.soak_ledger import Ledger, Run, stop_run
from bench.soak_pipeline import CREATOR, REJECTER, SoakPipeline, write_pipeline
from bench.world import WORKFLOW, World
from starter.polling import poll
from starter.releases import (
    ReleaseRef,
    create_release,
    decide,
    release_history,
    release_status,
    settled,
)
from worker.devserver import start_dev_server, wait_for_server
from workflows.audit import AuditEvent
from workflows.names import pipeline_workflow_id
from workflows.pipeline_workflow import PipelineWorkflow
from workflows.release import ReleaseStatus, StageStatus, StageView

KINDS = ("server", "worker", "agent")
WATCH_EVERY = 0.1  # the ledger and its runs' processes
LOOK_EVERY = 0.4  # the approvers look at the open releases
DECIDE_TIMEOUT = 30.0
CHECK_RESERVE = 30.0  # seconds kept at the end of --max-minutes for the checks


@dataclass(frozen=True)
class SoakOptions:
    kills: int = 100
    releases: int = 30
    seed: int = 1
    max_minutes: float = 40.0
    json_path: Path | None = None
    work_dir: Path | None = None
    agents: int = 3
    workers: int = 2
    pause_min: float = 2.0
    pause_max: float = 8.0
    max_down: float = 4.0
    max_server_down: float = 15.0
    settle_seconds: float = 120.0
    reject_share: float = 0.15
    task_scale: float = 1.0
    quiet: bool = False


@dataclass
class SoakStack:
    """The soak's processes: they are what gets killed and started again."""

    world: World
    port: int
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pool(self) -> str:
        return self.world.pool("soak")

    def names(self, kind: str) -> list[str]:
        return {"server": ["server"], "worker": sorted(self.workers), "agent": sorted(self.agents)}[
            kind
        ]

    def process(self, kind: str, name: str) -> subprocess.Popen[bytes]:
        if kind == "server":
            return self.world.server
        return (self.workers if kind == "worker" else self.agents)[name]

    async def start_worker(self, name: str) -> None:
        process = self.world.spawn(["-m", "starter.cli", "worker"], name)
        await self.world.wait_for_poller(process, self.world.task_queue, WORKFLOW)
        self.workers[name] = process

    async def start_agent(self, name: str) -> None:
        self.agents[name] = await self.world.start_agent(name, self.pool)

    async def start_server(self) -> None:
        # From this (the main) thread: the server dies with the thread that started it.
        server = start_dev_server(self.world.root / "temporal", self.port, headless=True)
        self.world.server = server
        await wait_for_server(self.world.address, timeout=90, process=server)

    async def kill_and_restart(self, kind: str, name: str, down: float) -> Kill:
        """kill -9 one process (not its group: what it started is left as a crash leaves
        it), keep it down for `down` seconds, start it again the same way."""
        process = self.process(kind, name)
        at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        await asyncio.sleep(down)  # the outage is the soak's input, not a wait for anything
        started = time.monotonic()
        if kind == "server":
            await self.start_server()
        elif kind == "worker":
            await self.start_worker(name)
        else:
            await self.start_agent(name)
        return Kill(kind, name, process.pid, at, down, time.monotonic() - started)


@dataclass
class Approvers:
    """The people of the soak pipeline: they look at the open releases, approve what
    waits on them (after a human pause) and reject prod in the releases chosen for
    it. They also note which releases have ended."""

    client: Client
    rng: random.Random
    stage_upstream: Any
    rejected_releases: set[int]
    verdicts: list[Verdict] = field(default_factory=list)
    watched: set[int] = field(default_factory=set)
    ended: set[int] = field(default_factory=set)
    _busy: set[tuple[int, str, str, str]] = field(default_factory=set)
    _done: set[tuple[int, str, str, str]] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event, pipeline: str) -> None:
        while not stop.is_set():
            for number in sorted(self.watched - self.ended):
                with contextlib.suppress(Exception):  # the server or the workers may be down
                    status = await asyncio.wait_for(
                        release_status(self.client, ReleaseRef(pipeline, number)), 10
                    )
                    self._look(status)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOOK_EVERY)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _look(self, status: ReleaseStatus) -> None:
        if has_ended(status, self.stage_upstream):
            self.ended.add(status.number)
            return
        for view in status.stages:
            latest = view.latest
            if view.status != StageStatus.WAITING_FOR_APPROVAL or latest is None:
                continue
            for approval in latest.approvals:
                if approval.status != "pending":
                    continue
                for user in approval.waiting_for:
                    key = (status.number, view.name, approval.phase, user)
                    if key in self._busy or key in self._done:
                        continue
                    reject = (
                        status.number in self.rejected_releases
                        and view.name == "prod"
                        and approval.phase == "pre"
                        and user == REJECTER
                    )
                    self._busy.add(key)
                    task = asyncio.create_task(
                        self._decide(status, key, "reject" if reject else "approve")
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)

    async def _decide(
        self, status: ReleaseStatus, key: tuple[int, str, str, str], action: str
    ) -> None:
        number, stage, phase, user = key
        try:
            await asyncio.sleep(self.rng.uniform(0.2, 1.5))  # a person takes a moment
            at = time.time()
            try:
                event = await asyncio.wait_for(
                    decide(
                        self.client,
                        ReleaseRef(status.pipeline, number),
                        stage,
                        user,
                        action,
                        phase=phase,
                        comment=f"soak: {action} as {user}",
                    ),
                    DECIDE_TIMEOUT,
                )
            except Exception as err:  # the server or the workers were down: ask again later
                self.verdicts.append(
                    Verdict(number, stage, phase, user, action, at, "no answer", None, _short(err))
                )
                return
            self.verdicts.append(
                Verdict(
                    number,
                    stage,
                    phase,
                    user,
                    action,
                    at,
                    event.outcome,
                    event.request_id,
                    event.detail,
                )
            )
            if event.outcome == "accepted":
                self._done.add(key)
        finally:
            self._busy.discard(key)


def has_ended(status: ReleaseStatus, upstream: Any) -> bool:
    """Settled, and no stage left untriggered although what it waits for succeeded."""
    if not settled(status):
        return False
    by_name = {view.name: view for view in status.stages}
    for view in status.stages:
        after = upstream(view.name)
        if (
            view.status == StageStatus.NOT_DEPLOYED
            and after
            and all(by_name[a].status == StageStatus.SUCCEEDED for a in after)
        ):
            return False
    return True


class Soak:
    """One soak run: the stack, the releases, the kills, the checks."""

    def __init__(self, options: SoakOptions) -> None:
        self.options = options
        self.rng = random.Random(options.seed)
        self.root = options.work_dir or Path(tempfile.mkdtemp(prefix="stageflow-soak-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.deadline = self.started + options.max_minutes * 60
        self.kills: list[Kill] = []
        self.creates: list[CreateRecord] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.last_kill_at: float | None = None

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(f"[{time.monotonic() - self.started:7.1f}s] {text}", flush=True)

    async def run(self) -> dict[str, Any]:
        world = await World.start(self.root)
        port = int(world.address.rsplit(":", 1)[1])
        stack = SoakStack(world, port)
        ledger = Ledger(self.root / "ledger.txt")
        stop = asyncio.Event()
        background: list[asyncio.Task[Any]] = []
        try:
            self.say(f"dev server on {world.address}, data in {self.root}")
            await asyncio.gather(
                *(stack.start_worker(f"worker-{i}") for i in range(1, self.options.workers + 1)),
                *(stack.start_agent(f"agent-{i}") for i in range(1, self.options.agents + 1)),
            )
            scale = self.options.task_scale
            pipeline = write_pipeline(
                self.root / "pipelines",
                f"soak-{world.suffix}",
                stack.pool,
                ledger.path,
                short_ms=max(1, round(1800 * scale)),
                long_ms=round(6000 * scale),
                very_long_ms=round(20000 * scale),
            )
            rejected = {
                n
                for n in range(1, self.options.releases + 1)
                if self.rng.random() < self.options.reject_share
            }
            approvers = Approvers(
                world.client, random.Random(self.options.seed + 1), pipeline.upstream, rejected
            )
            background.append(asyncio.create_task(self._watch(ledger, stop)))
            background.append(asyncio.create_task(approvers.run(stop, pipeline.name)))
            creating = asyncio.create_task(self._create_releases(world, pipeline, approvers))
            self.say(
                f"{self.options.workers} control workers, {self.options.agents} agents in pool "
                f"{stack.pool}; {self.options.releases} releases of {pipeline.name}, "
                f"{self.options.kills} kills (seed {self.options.seed})"
            )
            await self._chaos(stack, ledger, approvers)
            await creating
            settle_by = min(
                (self.last_kill_at or time.monotonic()) + self.options.settle_seconds,
                self.deadline - CHECK_RESERVE,
            )
            numbers = await self._all_numbers(world.client, pipeline, approvers)
            approvers.watched |= set(numbers)
            self.say(f"settling: {len(numbers)} releases, {len(approvers.ended)} ended so far")

            async def all_ended() -> bool:
                return approvers.watched <= approvers.ended

            await poll(all_ended, timeout=max(0.0, settle_by - time.monotonic()), interval=0.5)
            settled_in = time.monotonic() - (self.last_kill_at or self.started)
            self.say(
                f"{len(approvers.ended)} of {len(approvers.watched)} releases ended "
                f"{settled_in:.1f}s after the last kill"
            )
            stop.set()
            await asyncio.gather(*background)
            ledger.read_new()
            ledger.watch()
            return await self._check(world, pipeline, ledger, approvers, numbers)
        finally:
            stop.set()
            for task in background:
                task.cancel()
            left = [run for run in ledger.still_running() if stop_run(run)]
            if left:
                self.notes.append(
                    f"{len(left)} task process(es) were still running when the soak ended "
                    f"and were killed: "
                    + ", ".join(f"pid {r.pid} ({r.stage}/{r.task} of {r.release})" for r in left)
                )
            world.close()

    async def _watch(self, ledger: Ledger, stop: asyncio.Event) -> None:
        while not stop.is_set():
            ledger.read_new()
            ledger.watch()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_EVERY)

    async def _create_releases(
        self, world: World, pipeline: SoakPipeline, approvers: Approvers
    ) -> None:
        """Create the releases spread over the expected length of the kill phase: a
        pause, an outage (a third of the kills take the server) and a restart each."""
        o = self.options
        outage = (o.max_server_down + 2 * o.max_down) / 6 + 0.2
        per_kill = (o.pause_min + o.pause_max) / 2 + outage + 1.0
        spacing = o.kills * per_kill / max(o.releases, 1) * 0.85
        pending = []
        for index in range(o.releases):
            if index:
                await asyncio.sleep(spacing * self.rng.uniform(0.5, 1.5))  # the soak's input
            record = CreateRecord(
                tag=f"req-{index + 1}-{uuid.uuid4().hex[:8]}", sent_at=time.time()
            )
            self.creates.append(record)
            pending.append(asyncio.create_task(self._create(world, pipeline, record, approvers)))
        await asyncio.gather(*pending)

    async def _create(
        self, world: World, pipeline: SoakPipeline, record: CreateRecord, approvers: Approvers
    ) -> None:
        try:
            created = await asyncio.wait_for(
                create_release(
                    world.client,
                    pipeline.path,
                    user=CREATOR,
                    description=f"soak request {record.tag}",
                    task_queue=world.task_queue,
                ),
                180,
            )
        except Exception as err:
            record.error = _short(err)
            self.say(f"release create {record.tag} failed: {record.error}")
            return
        record.number = created.number
        approvers.watched.add(created.number)
        self.say(f"created {pipeline.name}/{created.number} ({record.tag})")

    async def _chaos(self, stack: SoakStack, ledger: Ledger, approvers: Approvers) -> None:
        o = self.options
        latest_kill = self.deadline - CHECK_RESERVE - o.settle_seconds
        # The first kills take one process of each kind, so even a short soak has all.
        first_kinds = self.rng.sample(KINDS, len(KINDS))
        for index in range(o.kills):
            pause = self.rng.uniform(o.pause_min, o.pause_max)
            if time.monotonic() + pause > latest_kill:
                self.errors.append(
                    f"out of time after {index} of {o.kills} kills (--max-minutes {o.max_minutes})"
                )
                self.say(self.errors[-1])
                return
            await asyncio.sleep(pause)  # a random moment: the soak's input
            kind = first_kinds[index] if index < len(first_kinds) else self.rng.choice(KINDS)
            name = self.rng.choice(stack.names(kind))
            down = self.rng.uniform(0.2, o.max_server_down if kind == "server" else o.max_down)
            try:
                kill = await stack.kill_and_restart(kind, name, down)
            except Exception as err:
                self.errors.append(f"kill {index + 1} ({kind} {name}): restart failed: {err}")
                self.say(self.errors[-1])
                return
            self.kills.append(kill)
            self.last_kill_at = time.monotonic()
            running = sum(1 for r in ledger.open_runs() if r.gone_at is None)
            self.say(
                f"kill {index + 1}/{o.kills}: {kind} {name} (pid {kill.pid}), down {down:.1f}s, "
                f"back in {kill.restart_seconds:.1f}s; runs {len(ledger.runs)} "
                f"({running} running), releases {len(approvers.watched)} created, "
                f"{len(approvers.ended)} ended"
            )

    async def _all_numbers(
        self, client: Client, pipeline: SoakPipeline, approvers: Approvers
    ) -> list[int]:
        """Every number the pipeline handed out (some answers may have been lost)."""
        handle = client.get_workflow_handle_for(
            PipelineWorkflow.run, pipeline_workflow_id(pipeline.name)
        )

        async def last() -> int | None:
            try:
                return await asyncio.wait_for(handle.query(PipelineWorkflow.last_number), 10)
            except Exception:
                return None

        found = await poll(last, timeout=60, interval=1)
        if found is None:
            self.errors.append("the pipeline's last release number could not be read")
            return sorted(approvers.watched)
        return list(range(1, found + 1))

    async def _check(
        self,
        world: World,
        pipeline: SoakPipeline,
        ledger: Ledger,
        approvers: Approvers,
        numbers: list[int],
    ) -> dict[str, Any]:
        client = world.client
        statuses: dict[int, ReleaseStatus] = {}
        histories: dict[int, list[AuditEvent]] = {}
        for number in numbers:
            ref = ReleaseRef(pipeline.name, number)

            async def read(ref: ReleaseRef = ref) -> tuple[ReleaseStatus, list[AuditEvent]] | None:
                try:
                    return (
                        await asyncio.wait_for(release_status(client, ref), 20),
                        await asyncio.wait_for(release_history(client, ref), 20),
                    )
                except Exception:  # a query can time out while a workflow is being moved
                    return None

            found = await poll(read, timeout=60, interval=1)
            if found is not None:
                statuses[number], histories[number] = found
        printed = await self._printed_logs(world, pipeline, numbers)
        # The evidence behind the verdicts, for whoever reads a violation.
        (self.root / "releases.json").write_text(
            json.dumps([s.model_dump(mode="json") for s in statuses.values()], indent=1)
        )
        (self.root / "printed-logs.txt").write_text(
            "".join(
                f"### stageflow logs {pipeline.name}/{n}\n{printed[n]}" for n in sorted(printed)
            )
        )
        log_root = world.data_dir / "logs"

        def log_text(key: str) -> str | None:
            path = log_root / key
            return path.read_text(errors="replace") if path.is_file() else None

        runs = list(ledger.runs.values())
        (self.root / "runs.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
        agent_kills = [k for k in self.kills if k.kind == "agent"]
        after_seconds = self.options.settle_seconds
        invariants: list[Invariant] = [
            end_states(
                numbers,
                statuses,
                pipeline.upstream,
                f"within {after_seconds:.0f}s of the last kill",
            ),
            never_concurrent(runs),
            visible_tries(runs, statuses, log_text, printed, agent_kills),
            approvals_kept(approvers.verdicts, statuses, histories),
            numbers_unique(
                self.creates,
                {n: s.description for n, s in statuses.items()},
                numbers[-1] if numbers else 0,
            ),
        ]
        if ledger.bad_lines:
            self.errors.append(
                f"{len(ledger.bad_lines)} unreadable ledger lines: {ledger.bad_lines[:3]}"
            )
        outlived = [
            run
            for run in runs
            if run.end is not None
            and any(k.name == run.agent and run.start <= k.at < run.end for k in agent_kills)
        ]
        if outlived:
            self.notes.append(
                f"{len(outlived)} run(s) went on to their end after their agent was killed: "
                + ", ".join(
                    f"{r.stage}/{r.task} of {r.release} on {r.agent}" for r in outlived[:10]
                )
            )
        self.notes += rerun_notes(runs, self.kills)
        return self._record(invariants, statuses, runs, approvers)

    async def _printed_logs(
        self, world: World, pipeline: SoakPipeline, numbers: list[int]
    ) -> dict[int, str]:
        """What `stageflow logs P/N` prints for each release, as a person would see it."""
        limit = asyncio.Semaphore(4)
        printed: dict[int, str] = {}
        # Through an API of the soak's own, started now (after the kills), as an admin.
        env = {**world.env(), **await world.signed_in("soak")}

        async def one(number: int) -> None:
            async with limit:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "starter.cli",
                    "logs",
                    f"{pipeline.name}/{number}",
                    "--no-timestamps",
                    cwd=world.root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
                try:
                    out, _ = await asyncio.wait_for(process.communicate(), 60)
                except TimeoutError:
                    process.kill()
                    await process.wait()
                    out = b""
                printed[number] = out.decode(errors="replace")

        await asyncio.gather(*(one(n) for n in numbers))
        return printed

    def _record(
        self,
        invariants: list[Invariant],
        statuses: dict[int, ReleaseStatus],
        runs: list[Run],
        approvers: Approvers,
    ) -> dict[str, Any]:
        release_outcomes = Counter(s.status for s in statuses.values())
        stage_outcomes = Counter(v.status.value for s in statuses.values() for v in s.stages)
        messages = Counter(
            f"{v.name}: {v.latest.message}"
            for s in statuses.values()
            for v in s.stages
            if v.latest and v.latest.message and v.status != StageStatus.SUCCEEDED
        )
        unsuccessful = [
            stage_detail(s.number, v)
            for s in statuses.values()
            for v in s.stages
            if v.latest and v.status != StageStatus.SUCCEEDED
        ]
        runs_per_key = Counter(r.key for r in runs)
        verdicts = Counter(v.outcome for v in approvers.verdicts)
        o = self.options
        return {
            "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
            "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(o).items()},
            "work_dir": str(self.root),
            "duration_seconds": round(time.monotonic() - self.started, 1),
            "kills": {
                "total": len(self.kills),
                "requested": o.kills,
                "by_kind": dict(Counter(k.kind for k in self.kills)),
                "list": [asdict(k) for k in self.kills],
            },
            "releases": {
                "requested": o.releases,
                "created": sum(1 for c in self.creates if c.number is not None),
                "numbers": sorted(statuses),
                "create_errors": [asdict(c) for c in self.creates if c.error],
                "chosen_for_rejection": sorted(approvers.rejected_releases),
            },
            "outcomes": {
                "releases": dict(release_outcomes),
                "stages": dict(stage_outcomes),
                "messages": dict(messages),
                "stages_not_succeeded": unsuccessful,
            },
            "runs": {
                "total": len(runs),
                "task_keys": len(runs_per_key),
                "task_keys_run_more_than_once": sum(1 for n in runs_per_key.values() if n > 1),
                "without_end_line": sum(1 for r in runs if r.end is None),
            },
            "decisions": dict(verdicts),
            "decision_list": [asdict(v) for v in approvers.verdicts],
            "invariants": {i.name: i.as_json() for i in invariants},
            "held": all(i.held for i in invariants) and not self.errors,
            "observations": self.notes,
            "errors": self.errors,
        }


def stage_detail(number: int, view: StageView) -> dict[str, Any]:
    """A stage that did not succeed, as `release show` has it: why, task by task."""
    latest = view.latest
    assert latest is not None
    return {
        "release": number,
        "stage": view.name,
        "status": view.status.value,
        "message": latest.message,
        "tasks": [
            f"{t.task}: {t.status.value}, tries {t.tries}, exit {t.exit_code}, "
            f"logs {len(t.logs)}{': ' + t.message if t.message else ''}"
            for t in latest.tasks
        ],
        "agents": [
            f"job try {a.try_number} on {a.agent}" + (" (lost)" if a.lost else "")
            for a in latest.agents
        ],
    }


def rerun_notes(runs: list[Run], kills: list[Kill]) -> list[str]:
    """Task keys that ran again although an earlier run had gone to its end, with the
    kills between the two: allowed as a visible try, but worth knowing."""
    by_key: dict[tuple[int, str, str], list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    notes = []
    for (release, stage, task), group in sorted(by_key.items()):
        group.sort(key=lambda r: r.start)
        for first, again in zip(group, group[1:], strict=False):
            if first.end is None:
                continue
            between = [
                f"{k.kind} {k.name} at +{k.at - first.start:.1f}s"
                for k in kills
                if first.start <= k.at <= again.start
            ]
            notes.append(
                f"release {release} {stage}/{task} ran again (on {again.agent}, "
                f"{again.start - first.end:.1f}s later) after its run on {first.agent} "
                f"had ended; kills in between: {', '.join(between) or 'none'}"
            )
    return notes


def summary(record: dict[str, Any]) -> str:
    kills = record["kills"]
    by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kills["by_kind"].items()))
    lines = [
        f"soak: {kills['total']} kills ({by_kind}) in {record['duration_seconds']:.0f}s; "
        f"{record['releases']['created']} releases; {record['runs']['total']} task runs "
        f"({record['runs']['task_keys_run_more_than_once']} task keys ran more than once)",
        "outcomes: "
        + ", ".join(f"{n} {s}" for s, n in sorted(record["outcomes"]["releases"].items())),
        "decisions: " + ", ".join(f"{n} {s}" for s, n in sorted(record["decisions"].items())),
    ]
    for name, result in record["invariants"].items():
        mark = "held" if result["held"] else f"VIOLATED ({len(result['violations'])})"
        lines.append(f"  {name}: {mark} ({result['checked']} checked)")
        for violation in result["violations"][:5]:
            lines.append(f"      - {violation}")
        if len(result["violations"]) > 5:
            lines.append(f"      … {len(result['violations']) - 5} more in the JSON record")
        for note in result["notes"][:3]:
            lines.append(f"      note: {note}")
    for note in record["observations"][:8]:
        lines.append(f"  note: {note}")
    if len(record["observations"]) > 8:
        lines.append(f"  … {len(record['observations']) - 8} more notes in the JSON record")
    for error in record["errors"]:
        lines.append(f"  error: {error}")
    lines.append("every invariant held" if record["held"] else "NOT every invariant held")
    return "\n".join(lines)


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}"


def parse_options(argv: list[str] | None = None) -> SoakOptions:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Releases while the server, control workers and agents are killed -9; "
        "then check what Stageflow promises under faults.",
    )
    d = SoakOptions()
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument("--releases", type=int, default=d.releases)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes)
    parser.add_argument("--json", type=Path, dest="json_path", metavar="PATH")
    parser.add_argument(
        "--work-dir", type=Path, help="where the stack keeps its data (default: a new temp dir)"
    )
    parser.add_argument("--agents", type=int, default=d.agents)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--pause-min", type=float, default=d.pause_min, metavar="S")
    parser.add_argument("--pause-max", type=float, default=d.pause_max, metavar="S")
    parser.add_argument(
        "--max-down",
        type=float,
        default=d.max_down,
        metavar="S",
        help="longest time a killed worker or agent stays down",
    )
    parser.add_argument(
        "--max-server-down",
        type=float,
        default=d.max_server_down,
        metavar="S",
        help="longest time the killed server stays down",
    )
    parser.add_argument("--settle-seconds", type=float, default=d.settle_seconds, metavar="S")
    parser.add_argument("--reject-share", type=float, default=d.reject_share)
    parser.add_argument(
        "--task-scale",
        type=float,
        default=d.task_scale,
        metavar="F",
        help="multiply the tasks' run times (0.2-2 s, 6-9 s, 20-30 s) by F",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.releases < 1 or args.agents < 2 or args.workers < 1:
        parser.error("need --kills >= 0, --releases >= 1, --agents >= 2, --workers >= 1")
    if args.task_scale <= 0:
        parser.error("need --task-scale > 0")
    if not 0 < args.pause_min <= args.pause_max:
        parser.error("need 0 < --pause-min <= --pause-max")
    return SoakOptions(**vars(args))


async def soak(options: SoakOptions) -> dict[str, Any]:
    """Run one soak and return its record; SIGTERM ends it early, cleaning up."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await Soak(options).run()


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    record = asyncio.run(soak(options))
    text = json.dumps(record, indent=2, default=str)
    Path(record["work_dir"], "soak.json").write_text(text)
    if options.json_path:
        options.json_path.parent.mkdir(parents=True, exist_ok=True)
        options.json_path.write_text(text)
    print(summary(record), flush=True)
    return 0 if record["held"] else 1


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # sdk-python #300: runtime teardown must not change the exit code
