"""Each figure of the benchmark: Stageflow measured beside its limit on the same server.

Times come from the server's history events where they can (event times are
the server's clock on this machine), so waiting for a result adds nothing to
what is measured: `create → last stage succeeded` is the client's time before
`create_release` to the ChildWorkflowExecutionCompleted event of the last stage
in the release's history, and the bare shape is measured the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.artifacts import ArtifactCache
from bench.bare import (
    NOOP_COMMAND,
    BareApproval,
    BareFailover,
    BareHoldInput,
    BareRelease,
    BareReleaseInput,
)
from bench.history import activity_spans, event_kinds, first_time, histories, signals
from bench.report import Figure, Target, median
from bench.world import World, event_time, spawn_python, wait_for, wait_for_children
from starter.releases import ReleaseRef, create_release, deploy_stage, release_status
from worker.devserver import free_port, start_dev_server, stop_process, wait_for_server
from workflows.names import pipeline_workflow_id, stage_workflow_id
from workflows.release import ResolvedArtifact, StageStatus

MB = 1024 * 1024
CREATES_IN_FLIGHT = 8
STAGES = ["dev", "qa", "prod"]


@dataclass
class Sizes:
    """How much of everything a run does."""

    latency_runs: int
    throughput_releases: int
    approval_runs: int
    log_bytes: int
    log_runs: int
    drop_bytes: int
    download_runs: int
    startup_runs: int
    failover_runs: int
    decision_runs: int = 20
    agents: int = 2
    capacity: int = 20
    timeout: float = 600.0  # for any one wait


PRESETS = {
    "tiny": Sizes(2, 4, 2, 1 * MB, 1, 1 * MB, 1, 1, 1, decision_runs=2, timeout=60),
    "quick": Sizes(5, 20, 5, 50 * MB, 2, 50 * MB, 2, 1, 1, decision_runs=5, timeout=120),
    "full": Sizes(20, 200, 20, 1024 * MB, 3, 1024 * MB, 3, 3, 3, decision_runs=20),
}


CHAIN = """\
name: {name}
stages:
  - name: dev
    pool: {pool}
    tasks: [{{name: noop, script: "true"}}]
  - name: qa
    trigger: {{after_stages: [dev]}}
    pool: {pool}
    tasks: [{{name: noop, script: "true"}}]
  - name: prod
    trigger: {{after_stages: [qa]}}
    pool: {pool}
    tasks: [{{name: noop, script: "true"}}]
"""

MANUAL = """\
name: {name}
stages:
  - name: dev
    trigger: manual
    pool: {pool}
    tasks: [{{name: noop, script: "true"}}]
"""

APPROVAL = """\
name: {name}
stages:
  - name: dev
    pool: {pool}
    pre_deployment: {{approvals: {{approvers: [bench]}}}}
    tasks: [{{name: noop, script: "true"}}]
"""

CHATTY = """\
name: {name}
stages:
  - name: dev
    pool: {pool}
    tasks:
      - name: chatty
        shell: sh  # bash runs with -o pipefail, and `yes` dies of SIGPIPE
        script: yes | head -c {bytes}
"""

DOWNLOAD = """\
name: {name}
artifacts:
  - {{alias: app, type: local, path: {drop}}}
stages:
  - name: dev
    pool: {pool}
    tasks: [{{name: noop, script: "true"}}]
"""

FAILOVER = """\
name: {name}
variables: {{DIR: "{dir}"}}
stages:
  - name: dev
    pool: {pool}
    tasks:
      - name: long deploy
        script: |
          if [ -f "$DIR/killed" ]; then echo "finished on $STAGEFLOW_AGENT"; exit 0; fi
          echo $$ > "$DIR/task.pid"
          echo "$STAGEFLOW_AGENT" > "$DIR/first-agent"
          sleep 300
"""


class Bench:
    """Runs the figures against one World; Stageflow and its limit take turns."""

    def __init__(self, world: World, sizes: Sizes, log: Any = print) -> None:
        self.world = world
        self.sizes = sizes
        self.log = log
        self.client = world.client
        self.main_pool = world.pool("main")
        self._names: Counter[str] = Counter()

    def _pipeline(self, kind: str, template: str, **values: Any) -> Path:
        self._names[kind] += 1
        name = f"bench-{kind}-{self.world.suffix}-{self._names[kind]}"
        values.setdefault("pool", self.main_pool)
        return self.world.write_pipeline(name, template.format(name=name, **values))

    async def start_processes(self) -> None:
        """The control worker, the bare workers and the main pool's agents, started together."""
        await asyncio.gather(
            self.world.start_worker(),
            self.world.start_bare_worker(),
            self.world.start_bare_worker(self.world.bare_remote_queue),
            *(
                self.world.start_agent(f"main-{i}", self.main_pool, self.sizes.capacity)
                for i in range(self.sizes.agents)
            ),
        )

    # --- one release, either shape ------------------------------------------------------

    async def stageflow_release(self, pipeline: Path) -> tuple[float, ReleaseRef]:
        """Create a release and wait for its stages: (create → last stage ended, ref)."""
        started = time.time()
        ref = await self.world.create(pipeline)
        ended = await wait_for_children(self.client, ref.workflow_id, 3, self.sizes.timeout)
        return event_time(ended[-1]) - started, ref

    async def bare_release(self, tag: str, remote: bool = False) -> tuple[float, str]:
        """The bare shape; `remote`: its activities on another worker process (no eager start)."""
        started = time.time()
        handle = await self.client.start_workflow(
            BareRelease.run,
            BareReleaseInput(activity_queue=self.world.bare_remote_queue if remote else None),
            id=f"bare/{self.world.suffix}/{tag}",
            task_queue=self.world.bare_queue,
        )
        ended = await wait_for_children(self.client, handle.id, 3, self.sizes.timeout)
        await handle.result()  # so its history is whole when it is read
        return event_time(ended[-1]) - started, handle.id

    async def check_succeeded(self, ref: ReleaseRef, stages: list[str]) -> None:
        status = await release_status(self.client, ref, live=False)
        got = {v.name: v.status for v in status.stages if v.name in stages}
        if any(s != StageStatus.SUCCEEDED for s in got.values()):
            failed = {k: v.value for k, v in got.items()}
            raise RuntimeError(f"release {ref} did not succeed: {failed}")

    async def warm_up(self) -> None:
        """One of each first: imports, sandbox, caches and SQLite pages are warm after it."""
        _, ref = await self.stageflow_release(self._pipeline("warmup", CHAIN))
        await self.check_succeeded(ref, STAGES)
        await self.bare_release("warmup")

    # --- 1. release latency and history events ---------------------------------------

    async def release_latency(self) -> list[Figure]:
        pipeline = self._pipeline("latency", CHAIN)
        sf: list[float] = []
        bare: list[float] = []
        remote: list[float] = []
        refs: list[ReleaseRef] = []
        bare_ids: list[str] = []
        remote_ids: list[str] = []
        for i in range(self.sizes.latency_runs):
            # Take turns, so drift of the server (a growing SQLite file) hits both alike.
            seconds, ref = await self.stageflow_release(pipeline)
            await self.check_succeeded(ref, STAGES)
            sf.append(seconds)
            refs.append(ref)
            seconds, workflow_id = await self.bare_release(f"latency-{i}")
            bare.append(seconds)
            bare_ids.append(workflow_id)
            seconds, workflow_id = await self.bare_release(f"latency-remote-{i}", remote=True)
            remote.append(seconds)
            remote_ids.append(workflow_id)
        self.log(
            f"  release latency: Stageflow {median(sf):.3f}s, bare {median(bare):.3f}s, "
            f"bare with remote activities {median(remote):.3f}s"
        )

        sf_events, sf_kinds, breakdown = await self._stageflow_history(refs)
        bare_events, bare_kinds, bare_breakdown = await self._bare_history(bare_ids)
        _, _, remote_breakdown = await self._bare_history(remote_ids)
        latency = Figure(
            key="release_latency",
            name="release latency (3 stages, create → last stage succeeded)",
            unit="s",
            stageflow=sf,
            limit=bare,
            limit_name="bare parent→3 children→1 activity each",
            target=Target("ratio", "<=", 2.0, "≤ 2×"),
            notes="limit: activities start eagerly on the workflow's worker (SDK default); "
            "details.bare_remote: the same with activities on another worker process",
            details={
                "bare_remote": remote,
                "ratio_to_bare_remote": median(sf) / median(remote),
                "stageflow_steps": breakdown,
                "bare_steps": bare_breakdown,
                "bare_remote_steps": remote_breakdown,
            },
        )
        events = Figure(
            key="history_events",
            name="history events per release",
            unit="events",
            stageflow=sf_events,
            limit=bare_events,
            limit_name="bare",
            notes="Stageflow: release + 3 stage histories + the release's share of the "
            "pipeline workflow's history; bare: parent + 3 children",
            details={"stageflow_kinds": sf_kinds, "bare_kinds": bare_kinds},
        )
        return [latency, events]

    async def _stageflow_history(
        self, refs: list[ReleaseRef]
    ) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
        counts: list[float] = []
        kinds: dict[str, Counter[str]] = defaultdict(Counter)
        steps: dict[str, list[float]] = defaultdict(list)
        pipeline_events = 0
        if refs:
            history = await self.client.get_workflow_handle(
                pipeline_workflow_id(refs[0].pipeline)
            ).fetch_history()
            pipeline_events = len(history.events)
            kinds["pipeline (whole)"] = event_kinds(history)
        share = pipeline_events / max(1, len(refs))
        for ref in refs:
            ids = [stage_workflow_id(ref.pipeline, ref.number, s, 1) for s in STAGES]
            release, *stages = await histories(self.client, [ref.workflow_id, *ids])
            counts.append(len(release.events) + sum(len(h.events) for h in stages) + share)
            kinds["release"] += event_kinds(release)
            for stage in stages:
                kinds["stage"] += event_kinds(stage)
                for label, seconds in stage_steps(stage).items():
                    steps[label].append(seconds)
            for label, seconds in parent_steps(release).items():
                steps[f"release: {label}"].append(seconds)
        per_release = {k: {e: n / len(refs) for e, n in c.items()} for k, c in kinds.items()}
        per_release["pipeline (whole)"] = dict(kinds["pipeline (whole)"])
        return counts, per_release, {k: round(median(v), 4) for k, v in steps.items()}

    async def _bare_history(
        self, workflow_ids: list[str]
    ) -> tuple[list[float], dict[str, Any], dict[str, Any]]:
        counts: list[float] = []
        kinds: dict[str, Counter[str]] = defaultdict(Counter)
        steps: dict[str, list[float]] = defaultdict(list)
        for workflow_id in workflow_ids:
            ids = [f"{workflow_id}/stage-{i}" for i in range(1, 4)]
            parent, *children = await histories(self.client, [workflow_id, *ids])
            counts.append(len(parent.events) + sum(len(h.events) for h in children))
            kinds["parent"] += event_kinds(parent)
            for child in children:
                kinds["child"] += event_kinds(child)
                for label, seconds in stage_steps(child).items():
                    steps[label].append(seconds)
            for label, seconds in parent_steps(parent).items():
                steps[f"parent: {label}"].append(seconds)
        per_release = {
            k: {e: n / len(workflow_ids) for e, n in c.items()} for k, c in kinds.items()
        }
        return counts, per_release, {k: round(median(v), 4) for k, v in steps.items()}

    # --- 2. throughput ------------------------------------------------------------------

    async def throughput(self) -> list[Figure]:
        n = self.sizes.throughput_releases
        # The bare shape first, then Stageflow: one burst each, on the same server.
        started = time.time()
        bare_ends = await asyncio.gather(*(self._bare_timed(f"burst-{i}") for i in range(n)))
        bare_rate = n / (max(bare_ends) - started)
        self.log(f"  throughput bare: {bare_rate:.2f} releases/s")

        pipeline = self._pipeline("burst", CHAIN)
        self.world.retries.clear()
        started = time.time()
        # All are asked for at once, but at most CREATES_IN_FLIGHT creates are sent at a
        # time: the server refuses more than 10 in-flight updates on one workflow, and 200
        # creates retried against that limit livelocked the PipelineWorkflow (BENCHMARKS.md).
        admit = asyncio.Semaphore(CREATES_IN_FLIGHT)
        results = await asyncio.gather(*(self._stageflow_timed(pipeline, admit) for _ in range(n)))
        sf_rate = n / (max(end for *_, end in results) - started)
        retries = dict(self.world.retries)
        self.log(f"  throughput Stageflow: {sf_rate:.2f} releases/s")
        for ref, *_ in results:
            await self.check_succeeded(ref, STAGES)
        latencies = [end - start for _, start, _, end in results]
        creates = [created - start for _, start, created, _ in results]
        lease_waits = await self._lease_waits([r[0] for r in results[:: max(1, n // 20)]])
        return [
            Figure(
                key="throughput",
                name=f"throughput ({n} releases at once)",
                unit="releases/s",
                stageflow=[sf_rate],
                limit=[bare_rate],
                limit_name="bare",
                target=Target("ratio", ">=", 0.5, "≥ 50%"),
                higher_is_better=True,
                notes=f"{self.sizes.agents} agents × capacity {self.sizes.capacity}; "
                f"bare burst first, then Stageflow; Stageflow creates are sent "
                f"{CREATES_IN_FLIGHT} at a time (the server's in-flight update limit is 10)",
                details={
                    "create_release_retries": retries,
                    "stageflow_create_latency_median": median(creates),
                    "stageflow_create_latency_max": max(creates),
                    "stageflow_release_latency_median": median(latencies),
                    "stageflow_release_latency_max": max(latencies),
                    "lease_queue_wait_median": median(lease_waits),
                    "lease_queue_wait_max": max(lease_waits) if lease_waits else None,
                },
            )
        ]

    async def _bare_timed(self, tag: str) -> float:
        handle = await self.client.start_workflow(
            BareRelease.run,
            BareReleaseInput(),
            id=f"bare/{self.world.suffix}/{tag}",
            task_queue=self.world.bare_queue,
        )
        ended = await wait_for_children(self.client, handle.id, 3, self.sizes.timeout)
        return event_time(ended[-1])

    async def _stageflow_timed(
        self, pipeline: Path, admit: asyncio.Semaphore
    ) -> tuple[ReleaseRef, float, float, float]:
        """(release, time asked, time created, time its last stage ended)."""
        started = time.time()
        async with admit:
            ref = await self.world.create_persistently(pipeline)
        created = time.time()
        ended = await wait_for_children(self.client, ref.workflow_id, 3, self.sizes.timeout)
        return ref, started, created, event_time(ended[-1])

    async def _lease_waits(self, refs: list[ReleaseRef]) -> list[float]:
        """How long leases waited for a free agent slot (are agents the bottleneck?)."""
        waits = []
        for ref in refs:
            for stage in STAGES:
                history = await self.client.get_workflow_handle(
                    stage_workflow_id(ref.pipeline, ref.number, stage, 1)
                ).fetch_history()
                for span in activity_spans(history):
                    if span.name == "lease_agent" and span.queue_wait is not None:
                        waits.append(span.queue_wait)
        return waits

    # --- 3. approval latency --------------------------------------------------------------

    async def approval_latency(self) -> list[Figure]:
        from workflows.stage_workflow import StageWorkflow

        how = "deploy signal (approvals not yet built)"
        sf: list[float] = []
        note = ""
        if hasattr(StageWorkflow, "approve"):
            try:
                sf = [await self._approval_run() for _ in range(self.sizes.approval_runs)]
                how = "approve signal"
            except Exception as err:  # the approval API moved: fall back, and say why
                note = f"approval measurement failed ({type(err).__name__}: {err}); "
                sf = []
        if not sf:
            sf = [await self._deploy_signal_run() for _ in range(self.sizes.approval_runs)]
        bare = [await self._bare_signal_run(i) for i in range(self.sizes.approval_runs)]
        self.log(f"  {how}: Stageflow {median(sf):.3f}s, bare {median(bare):.3f}s")
        return [
            Figure(
                key="approval_latency",
                name=f"approval latency ({how} → first task started)",
                unit="s",
                stageflow=sf,
                limit=bare,
                limit_name="bare signal → activity start",
                target=Target("ratio", "<=", 2.0, "≤ 2×"),
                notes=note + "server times: WorkflowExecutionSignaled → ActivityTaskStarted",
                details={"measured": how},
            )
        ]

    async def _deploy_signal_run(self) -> float:
        pipeline = self._pipeline("manual", MANUAL)
        ref = await self.world.create(pipeline)
        await wait_for_event(
            self.client, ref.workflow_id, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        )
        await deploy_stage(self.client, ref, "dev", "bench")
        await wait_for_children(self.client, ref.workflow_id, 1, self.sizes.timeout)
        await self.check_succeeded(ref, ["dev"])
        release, stage = await histories(
            self.client, [ref.workflow_id, stage_workflow_id(ref.pipeline, ref.number, "dev", 1)]
        )
        (_, signaled), *_ = signals(release, "deploy")
        return first_run_task_start(stage) - signaled

    async def _approval_run(self) -> float:
        from workflows.stage_workflow import StageWorkflow

        pipeline = self._pipeline("approval", APPROVAL)
        ref = await self.world.create(pipeline, user="bench-creator")
        stage_id = stage_workflow_id(ref.pipeline, ref.number, "dev", 1)
        handle = self.client.get_workflow_handle_for(StageWorkflow.run, stage_id)

        async def waiting() -> bool:
            with contextlib.suppress(Exception):  # not started yet
                progress = await handle.query(StageWorkflow.progress)
                return "approval" in progress.status.value
            return False

        await wait_for(waiting, self.sizes.timeout, "the stage to wait for approval")
        # The approve signal (kept for releases started before updates): the figure
        # times signal -> first task start from the history, as it always has.
        await handle.signal(
            StageWorkflow.approve_signal, approval_decision(StageWorkflow.approve_signal)
        )
        await wait_for_children(self.client, ref.workflow_id, 1, self.sizes.timeout)
        await self.check_succeeded(ref, ["dev"])
        stage = (await histories(self.client, [stage_id]))[0]
        (_, signaled), *_ = signals(stage, "approve")
        return first_run_task_start(stage) - signaled

    async def _bare_signal_run(self, i: int) -> float:
        handle = await self.client.start_workflow(
            BareApproval.run,
            NOOP_COMMAND,
            id=f"bare/{self.world.suffix}/approval-{i}",
            task_queue=self.world.bare_queue,
        )
        await wait_for_event(self.client, handle.id, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)
        await handle.signal(BareApproval.approve, "bench")
        await handle.result()
        history = await handle.fetch_history()
        (_, signaled), *_ = signals(history, "approve")
        started = next(s.started for s in activity_spans(history) if s.started is not None)
        return started - signaled

    # --- 4. log streaming -------------------------------------------------------------------

    async def log_streaming(self) -> list[Figure]:
        size = self.sizes.log_bytes
        pool = self.world.pool("log")
        agent = await self.world.start_agent("logger", pool, 1)
        baseline_kb = memory_kb(agent.pid, "VmRSS")
        pipeline = self._pipeline("log", CHATTY, pool=pool, bytes=size)
        out = self.world.root / "shell-out"
        out.mkdir(exist_ok=True)
        task_runs: list[float] = []
        stored: list[float] = []
        stage_walls: list[float] = []
        shell: list[float] = []
        for i in range(self.sizes.log_runs):
            target = out / f"out-{i}.txt"
            os.sync()  # each side starts with no dirty pages of the other's to write back
            started = time.perf_counter()
            subprocess.run(["sh", "-c", f"yes | head -c {size} > '{target}'"], check=True)
            shell.append(time.perf_counter() - started)
            target.unlink()
            os.sync()
            _, ref = await self._one_stage(pipeline)
            stage = (
                await histories(
                    self.client, [stage_workflow_id(ref.pipeline, ref.number, "dev", 1)]
                )
            )[0]
            spans = {s.name: s for s in activity_spans(stage)}
            # run_task ships its own log now; older agents had a separate ship_logs step.
            run = spans["run_task"]
            ship = spans.get("ship_logs", run)
            assert run.run is not None and ship.closed and run.started
            task_runs.append(run.run)
            stored.append(ship.closed - run.started)
            stage_walls.append(workflow_span(stage))
            await self._check_log_size(ref, size)
        peak_kb = memory_kb(agent.pid, "VmHWM")
        self.world.stop(agent)
        self.log(
            f"  log {size // MB} MB: task {median(task_runs):.2f}s, with ship "
            f"{median(stored):.2f}s, shell {median(shell):.2f}s, agent peak {peak_kb // 1024} MB"
        )
        return [
            Figure(
                key="log_streaming",
                name=f"log streaming ({size // MB} MB task output, run_task wall incl. shipping)",
                unit="s",
                stageflow=task_runs,
                limit=shell,
                limit_name="sh -c 'yes | head -c N > file'",
                target=Target("ratio", "<=", 1.1, "≤ 1.1×"),
                details={
                    "run_task_plus_ship_logs": stored,
                    "ratio_with_ship_logs": median(stored) / median(shell),
                    "stage_wall": stage_walls,
                    "bytes": size,
                },
            ),
            Figure(
                key="log_agent_peak_rss",
                name="agent peak RSS during the log task",
                unit="MB",
                stageflow=[peak_kb / 1024],
                target=Target("value", "<", 100.0, "< 100 MB"),
                notes="VmHWM of a fresh agent process",
                details={"baseline_rss_mb": baseline_kb / 1024},
            ),
        ]

    async def _one_stage(self, pipeline: Path) -> tuple[float, ReleaseRef]:
        started = time.time()
        ref = await self.world.create(pipeline)
        ended = await wait_for_children(self.client, ref.workflow_id, 1, self.sizes.timeout)
        await self.check_succeeded(ref, ["dev"])
        return event_time(ended[-1]) - started, ref

    async def _check_log_size(self, ref: ReleaseRef, size: int) -> None:
        status = await release_status(self.client, ref, live=False)
        latest = status.stage("dev").latest
        assert latest is not None and latest.tasks[0].log
        path = self.world.data_dir / "logs" / latest.tasks[0].log
        if path.stat().st_size < size:
            raise RuntimeError(f"log {path} has {path.stat().st_size} bytes, expected ≥ {size}")
        path.unlink()  # a gigabyte per run: do not keep it

    # --- 5. artifact download ---------------------------------------------------------------

    async def artifact_download(self) -> list[Figure]:
        root = self.world.root / "artifacts"
        drop = root / "drop"
        version = drop / "1.0.0"
        make_drop(version, self.sizes.drop_bytes)
        artifact = ResolvedArtifact(
            alias="app", type="local", version="1.0.0", source=str(drop), location=str(version)
        )
        first: list[float] = []
        copy: list[float] = []
        hits: list[float] = []
        for i in range(self.sizes.download_runs):
            cache_root, job = root / f"cache-{i}", root / f"job-{i}"
            job.mkdir()
            steps = ["cp", "fetch"] if i % 2 == 0 else ["fetch", "cp"]
            for step in steps:
                os.sync()  # as above: no write-back of the other side's files meanwhile
                if step == "cp":
                    started = time.perf_counter()
                    subprocess.run(["cp", "-r", str(version), str(root / f"cp-{i}")], check=True)
                    copy.append(time.perf_counter() - started)
                else:
                    cache = ArtifactCache(cache_root)
                    result = await cache.fetch(artifact, job / "app")
                    assert not result.cached
                    first.append(result.seconds)
            for j in range(5):
                cache = ArtifactCache(cache_root)  # as a new job on the agent would find it
                started = time.perf_counter()
                result = await cache.fetch(artifact, job / f"app-hit-{j}")
                hits.append(time.perf_counter() - started)
                assert result.cached
            for path in (cache_root, job, root / f"cp-{i}"):
                await asyncio.to_thread(remove_tree, path)

        release_first, release_hit = await self._release_downloads(drop)
        await asyncio.to_thread(remove_tree, drop)
        mb = self.sizes.drop_bytes // MB
        self.log(
            f"  download {mb} MB: first {median(first):.2f}s vs cp {median(copy):.2f}s, "
            f"hit {median(hits) * 1000:.1f} ms"
        )
        return [
            Figure(
                key="artifact_first_download",
                name=f"artifact first download ({mb} MB local drop, ArtifactCache.fetch)",
                unit="s",
                stageflow=first,
                limit=copy,
                limit_name="cp -r",
                target=Target("ratio", "<=", 1.2, "≤ 1.2×"),
            ),
            Figure(
                key="artifact_cache_hit",
                name="artifact cache hit (ArtifactCache.fetch)",
                unit="s",
                stageflow=hits,
                target=Target("value", "<=", 0.05, "≤ 50 ms"),
            ),
            Figure(
                key="artifact_release_first_download",
                name="artifact first download in a release (download_artifacts activity)",
                unit="s",
                stageflow=release_first,
                limit=copy,
                limit_name="cp -r",
                target=Target("ratio", "<=", 1.2, "≤ 1.2×"),
                notes="ActivityTaskStarted → Completed of download_artifacts, fresh agent",
            ),
            Figure(
                key="artifact_release_cache_hit",
                name="artifact cache hit in a release (download_artifacts activity)",
                unit="s",
                stageflow=release_hit,
                target=Target("value", "<=", 0.05, "≤ 50 ms"),
                notes="ActivityTaskStarted → Completed of download_artifacts, same agent",
            ),
        ]

    async def _release_downloads(self, drop: Path) -> tuple[list[float], list[float]]:
        """Releases of a pipeline with the drop as artifact: the first misses, later ones hit."""
        pool = self.world.pool("download")
        agent = await self.world.start_agent("downloader", pool, 1)
        pipeline = self._pipeline("download", DOWNLOAD, pool=pool, drop=drop)
        durations = []
        try:
            for _ in range(1 + max(2, self.sizes.download_runs)):
                _, ref = await self._one_stage(pipeline)
                stage = (
                    await histories(
                        self.client, [stage_workflow_id(ref.pipeline, ref.number, "dev", 1)]
                    )
                )[0]
                span = next(s for s in activity_spans(stage) if s.name == "download_artifacts")
                assert span.run is not None
                durations.append(span.run)
        finally:
            self.world.stop(agent)
        return durations[:1], durations[1:]

    # --- 7. agent failover ------------------------------------------------------------------

    async def failover(self) -> list[Figure]:
        moved: list[float] = []
        settled: list[float] = []
        detected: list[float] = []
        bare: list[float] = []
        for i in range(self.sizes.failover_runs):
            a, b, c = await self._failover_run(i)
            moved.append(a)
            settled.append(b)
            detected.append(c)
            bare.append(await self._bare_failover_run(i))
        self.log(f"  failover: Stageflow {median(moved):.2f}s, bare {median(bare):.2f}s")
        return [
            Figure(
                key="failover",
                name="agent failover (kill -9 → task started on another agent)",
                unit="s",
                stageflow=moved,
                limit=bare,
                limit_name="bare activity, heartbeat 5 s, retried on another worker",
                target=Target("value", "<=", 10.0, "≤ 10 s"),
                details={"kill_to_stage_succeeded": settled, "kill_to_lease_timed_out": detected},
            )
        ]

    async def _failover_run(self, i: int) -> tuple[float, float, float]:
        pool = self.world.pool(f"failover{i}")
        directory = self.world.root / f"failover-{i}"
        directory.mkdir()
        agents = {
            name: await self.world.start_agent(name, pool, 1) for name in (f"fo{i}-a", f"fo{i}-b")
        }
        pipeline = self._pipeline("failover", FAILOVER, pool=pool, dir=directory)
        ref = await self.world.create(pipeline)
        try:

            async def first_agent() -> str:
                path = directory / "first-agent"
                return path.read_text().strip() if path.exists() else ""

            victim = await wait_for(first_agent, self.sizes.timeout, "the long task to start")
            (directory / "killed").touch()
            killed_at = time.time()
            victim_pid = agents[victim].pid
            self.world.kill(agents[victim])
            ended = await wait_for_children(self.client, ref.workflow_id, 1, self.sizes.timeout)
        finally:
            pid_file = directory / "task.pid"
            if pid_file.exists():  # the killed agent's task is an orphan: stop it by its PID
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            for process in agents.values():
                self.world.stop(process)
        await self.check_succeeded(ref, ["dev"])
        stage = (
            await histories(self.client, [stage_workflow_id(ref.pipeline, ref.number, "dev", 1)])
        )[0]
        spans = activity_spans(stage)
        retried = next(
            s
            for s in spans
            if s.name == "run_task"
            and s.outcome == "completed"
            and f"pid {victim_pid}" not in s.identity
        )
        lost = next(s for s in spans if s.name == "lease_agent")
        assert retried.started is not None and lost.closed is not None
        return (
            retried.started - killed_at,
            event_time(ended[-1]) - killed_at,
            lost.closed - killed_at,
        )

    async def _bare_failover_run(self, i: int) -> float:
        queue = f"{self.world.bare_queue}-failover-{i}"
        directory = self.world.root / f"bare-failover-{i}"
        directory.mkdir()
        workers = list(
            await asyncio.gather(*(self.world.start_bare_worker(queue) for _ in range(2)))
        )
        try:
            handle = await self.client.start_workflow(
                BareFailover.run,
                BareHoldInput(directory=str(directory)),
                id=f"bare/{self.world.suffix}/failover-{i}",
                task_queue=queue,
            )

            async def holder() -> str:
                path = directory / "holder"
                return path.read_text().strip() if path.exists() else ""

            holding = await wait_for(holder, self.sizes.timeout, "the bare activity to start")
            victim = next(w for w in workers if holding == f"pid {w.pid}")
            (directory / "killed").touch()
            killed_at = time.time()
            self.world.kill(victim)
            await asyncio.wait_for(handle.result(), self.sizes.timeout)
            history = await handle.fetch_history()
        finally:
            for worker in workers:
                self.world.stop(worker)
        span = activity_spans(history)[0]
        assert span.started is not None
        return span.started - killed_at


# --- 6. start-up (its own stacks: run after the main world is stopped) --------------------


async def startup(root: Path, sizes: Sizes, log: Any = print) -> list[Figure]:
    """`stageflow up` until it accepts a release (and until that release has deployed),
    beside the dev server alone until it answers."""
    accepted: list[float] = []
    deployed: list[float] = []
    server_only: list[float] = []
    for i in range(sizes.startup_runs):
        server_only.append(await _server_start(root / f"server-only-{i}"))
        a, d = await _stack_start(root / f"up-{i}", sizes.timeout)
        accepted.append(a)
        deployed.append(d)
    log(
        f"  start-up: accepts a release {median(accepted):.2f}s, server alone {median(server_only):.2f}s"
    )
    return [
        Figure(
            key="startup",
            name="start-up (`stageflow up` → accepts a release)",
            unit="s",
            stageflow=accepted,
            limit=server_only,
            limit_name="temporal server start-dev alone → answers",
            target=Target("value", "<=", 5.0, "≤ 5 s"),
            details={"up_to_first_release_deployed": deployed},
        )
    ]


async def _server_start(data_dir: Path) -> float:
    port = free_port()
    started = time.monotonic()
    server = start_dev_server(data_dir, port, headless=True)
    try:
        await wait_for_server(f"127.0.0.1:{port}", timeout=60)
        return time.monotonic() - started
    finally:
        stop_process(server)


async def _stack_start(data_dir: Path, timeout: float) -> tuple[float, float]:
    data_dir.mkdir(parents=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    pool = f"bench-up-{uuid.uuid4().hex[:6]}"
    pipeline = data_dir / "pipeline.yml"
    pipeline.write_text(MANUAL.replace("trigger: manual\n    ", "").format(name=pool, pool=pool))
    env = {
        "TEMPORAL_ADDRESS": address,
        "STAGEFLOW_DATA_DIR": str(data_dir),
        "STAGEFLOW_TASK_QUEUE": "stageflow",
    }
    started = time.monotonic()
    process = spawn_python(
        ["-m", "starter.cli", "up", "--port", str(port), "--headless", "--pool", pool],
        data_dir / "up.log",
        env,
    )
    try:
        client: Client | None = None
        created = None
        deadline = started + timeout
        while created is None:
            if process.poll() is not None:
                raise RuntimeError(f"stageflow up exited with {process.returncode}; see {data_dir}")
            if time.monotonic() > deadline:
                raise TimeoutError("stageflow up did not accept a release in time")
            try:
                if client is None:
                    client = await Client.connect(address, data_converter=pydantic_data_converter)
                created = await create_release(client, pipeline, user="bench")
            except Exception:  # not up yet
                await asyncio.sleep(0.05)
        accepted = time.monotonic() - started
        assert client is not None
        await wait_for_children(client, created.workflow_id, 1, timeout)
        deployed = time.monotonic() - started
        return accepted, deployed
    finally:
        children = _descendants(process.pid)
        stop_process(process)
        for pid in children:  # the dev server `up` started, should `up` not have stopped it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    with contextlib.suppress(psutil.Error):
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    return []


# --- helpers --------------------------------------------------------------------------------


async def wait_for_event(
    client: Client, workflow_id: str, kind: EventType.ValueType, timeout: float = 60
) -> float:
    """Long-poll a history until an event of `kind` is in it; that event's time."""

    async def follow() -> float:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events(
            wait_new_event=True
        ):
            if event.event_type == kind:
                return event_time(event)
        raise RuntimeError(f"{workflow_id} closed without {EventType.Name(kind)}")

    return await asyncio.wait_for(follow(), timeout)


def first_run_task_start(stage: WorkflowHistory) -> float:
    started = next(
        s.started for s in activity_spans(stage) if s.name == "run_task" and s.started is not None
    )
    return started


def workflow_span(history: WorkflowHistory) -> float:
    begin = first_time(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    end = first_time(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED)
    assert begin is not None and end is not None
    return end - begin


def stage_steps(history: WorkflowHistory) -> dict[str, float]:
    """Where a stage's (or bare child's) time goes: each step between server events."""
    begin = first_time(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)
    end = first_time(history, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED)
    assert begin is not None and end is not None
    marks: list[tuple[float, str]] = [(begin, "started")]
    for span in activity_spans(history):
        marks.append((span.scheduled, f"{span.name} scheduled"))
        if span.started is not None:
            marks.append((span.started, f"{span.name} started"))
        if span.closed is not None:
            marks.append((span.closed, f"{span.name} {span.outcome}"))
    for name, at in signals(history):
        marks.append((at, f"signal {name}"))
    marks.append((end, "completed"))
    marks.sort()
    steps: dict[str, float] = {"total": end - begin}
    for (t0, a), (t1, b) in zip(marks, marks[1:], strict=False):
        label = f"{a} → {b}"
        steps[label] = steps.get(label, 0.0) + (t1 - t0)
    wft = workflow_task_times(history)
    steps["workflow tasks (count)"] = wft["count"]
    steps["workflow task schedule→start (sum)"] = wft["wait"]
    steps["workflow task start→complete (sum)"] = wft["run"]
    return steps


def parent_steps(history: WorkflowHistory) -> dict[str, float]:
    """A parent's gaps: a child's end to the next child's start (what the parent adds)."""
    steps: dict[str, float] = {}
    last_end: float | None = None
    n = 0
    for event in history.events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED:
            last_end = event_time(event)
        elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED and last_end is not None:
            n += 1
            steps[f"child {n} ended → child {n + 1} started"] = event_time(event) - last_end
            last_end = None
    wft = workflow_task_times(history)
    steps["workflow tasks (count)"] = wft["count"]
    return steps


def workflow_task_times(history: WorkflowHistory) -> dict[str, float]:
    scheduled: float | None = None
    started: float | None = None
    wait = run = 0.0
    count = 0
    for event in history.events:
        kind = event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            scheduled = event_time(event)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and scheduled is not None:
            started = event_time(event)
            wait += started - scheduled
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and started is not None:
            run += event_time(event) - started
            count += 1
    return {"count": count, "wait": wait, "run": run}


def approval_decision(signal_method: Any) -> Any:
    """Build the approve signal's payload from its model, as user `bench`.

    Read at run time: the approval API is being built while this benchmark is.
    """
    import typing

    hints = typing.get_type_hints(signal_method)
    model = next(v for k, v in hints.items() if k not in ("return", "self"))
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if not info.is_required():
            continue
        if name in ("by", "user", "approver", "actor"):
            values[name] = "bench"
        elif name == "request_id":
            values[name] = uuid.uuid4().hex
        elif name == "phase":
            values[name] = "pre"
        elif name == "decision":
            values[name] = "approve"
        else:
            raise ValueError(f"cannot fill {model.__name__}.{name}")
    return model(**values)


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def make_drop(folder: Path, size: int, files: int = 8) -> None:
    """A drop version of `size` bytes in `files` files (random, so nothing compresses)."""
    folder.mkdir(parents=True)
    block = os.urandom(MB)
    each = max(1, size // files)
    for i in range(files):
        with open(folder / f"part-{i}.bin", "wb") as out:
            left = each
            while left > 0:
                chunk = block[: min(left, MB)]
                out.write(chunk)
                left -= len(chunk)
    (folder / "VERSION").write_text("1.0.0\n")


def remove_tree(path: Path) -> None:
    """Remove a tree, cache entries (sealed read-only) included."""
    if not path.exists():
        return
    for dirpath, _dirs, _files in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def sizes_json(sizes: Sizes) -> dict[str, Any]:
    return asdict(sizes)
