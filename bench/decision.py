"""The decision round trip: approving a deployment, from the call to the verdict, beside a
bare workflow update round trip, on the same server in one run.

Each run times, in turn:

- (a) in-process: `starter.releases.decide(...)` (what `stageflow approve` calls) with the
  benchmark's warm, connected client, from the call to the returned verdict;
- (b) the limit: `execute_update` of `BareDecision.approve` (bench/bare.py), whose handler
  records a small event and returns it, with the same client;
- (c) the CLI as a user runs it: `stageflow approve PIPELINE/N dev`, spawn → exit (the
  verdict printed);
- (d) the CLI's start-up apart: `python -m bench.cli_startup approve PIPELINE/N dev`
  (spawn → imports, credentials, the API reached → exit), and `stageflow --help`.

Every target is idle and waiting for its decision when it is timed (the stage is
`waiting_for_approval`, the bare workflow has finished its first workflow task), and what
a decision sets off (the stage's job, the bare workflow's end) is over before the next is
timed, so each side meets the same quiet server. A first round is a warm-up, not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError

from bench.bare import BareDecision, BareVerdict
from bench.figures import APPROVAL, Bench, wait_for_event
from bench.history import event_kinds, histories, signals
from bench.report import Figure, Target, median
from bench.world import ROOT, wait_for, wait_for_children
from starter.releases import ReleaseRef, decide, latest_attempt
from workflows.names import stage_workflow_id
from workflows.release import StageStatus

STAGE = "dev"
APPROVER = "bench"  # the pipeline's approver, and who the CLI signs in as (World.signed_in)
CREATOR = "bench-creator"  # not the approver: a creator may not approve by default


@dataclass
class Round:
    """One run's times (s) and verdicts."""

    in_process: float
    bare: float
    cli: float
    startup: float
    help: float
    verdicts: dict[str, str]
    refs: tuple[ReleaseRef, ReleaseRef]


def stageflow_command() -> list[str]:
    """`stageflow` as a user runs it: the console script beside this interpreter."""
    script = Path(sys.executable).with_name("stageflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "starter.cli"]


async def run_timed(argv: list[str], env: dict[str, str], timeout: float) -> tuple[float, int, str]:
    """Run a command to its end: (seconds from spawn to exit, exit code, its output)."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        raise TimeoutError(f"{' '.join(argv)} did not end within {timeout:.0f}s") from None
    seconds = time.perf_counter() - started
    assert process.returncode is not None
    return seconds, process.returncode, output.decode(errors="replace")


def cli_verdict(code: int, output: str) -> str:
    """What `stageflow approve` answered: "accepted", or the line it printed instead."""
    if code == 0 and " accepted" in output:
        return "accepted"
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return f"exit {code}: {last[:200]}"


class DecisionRoundTrip:
    """The figure's runs against one Bench's world."""

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.world = bench.world
        self.client = bench.client
        self.timeout = bench.sizes.timeout
        self.env = self.world.env()
        self.stageflow = stageflow_command()
        self._made = 0

    async def figures(self) -> list[Figure]:
        self.env = {**self.world.env(), **await self.world.signed_in(APPROVER)}
        await self.round()  # warm-up: the CLI's files in the page cache, decide's code paths
        rounds = [await self.round() for _ in range(self.bench.sizes.decision_runs)]
        measured = await self.mechanism([r.refs[0] for r in rounds])
        return self.report(rounds, measured)

    # --- one run ------------------------------------------------------------------------

    async def round(self) -> Round:
        direct, by_cli, bare = await asyncio.gather(
            self.release_waiting(), self.release_waiting(), self.bare_waiting()
        )
        verdicts: dict[str, str] = {}

        started = time.perf_counter()
        event = await asyncio.wait_for(
            decide(self.client, direct, STAGE, APPROVER, "approve", phase="pre", comment="bench"),
            self.timeout,
        )
        in_process = time.perf_counter() - started
        verdicts["in_process"] = event.outcome if event else "no answer"
        await self.settled(direct)

        started = time.perf_counter()
        answer = await bare.execute_update(BareDecision.approve, APPROVER)
        bare_seconds = time.perf_counter() - started
        verdicts["bare"] = answer.outcome
        await bare.result()

        approve = ["approve", str(by_cli), STAGE, "--comment", "bench"]
        cli, code, output = await run_timed([*self.stageflow, *approve], self.env, self.timeout)
        verdicts["cli"] = cli_verdict(code, output)
        if verdicts["cli"] == "accepted":
            await self.settled(by_cli)

        startup_argv = [sys.executable, "-m", "bench.cli_startup", *approve]
        startup, code, output = await run_timed(startup_argv, self.env, self.timeout)
        if code != 0:
            raise RuntimeError(f"bench.cli_startup exited with {code}: {output[-500:]}")
        help_seconds, code, output = await run_timed(
            [*self.stageflow, "--help"], self.env, self.timeout
        )
        if code != 0:
            raise RuntimeError(f"stageflow --help exited with {code}: {output[-500:]}")
        return Round(
            in_process, bare_seconds, cli, startup, help_seconds, verdicts, (direct, by_cli)
        )

    async def release_waiting(self) -> ReleaseRef:
        """A release of a pipeline of its own (so no queue holds it) whose stage waits for
        the approver."""
        self._made += 1
        name = f"bench-decision-{self.world.suffix}-{self._made}"
        pipeline = self.world.write_pipeline(
            name, APPROVAL.format(name=name, pool=self.bench.main_pool)
        )
        ref = await self.world.create(pipeline, user=CREATOR)

        async def waiting() -> bool:
            with contextlib.suppress(LookupError, RPCError, WorkflowQueryFailedError):
                attempt = await latest_attempt(self.client, ref, STAGE)  # not deployed yet
                return attempt.status == StageStatus.WAITING_FOR_APPROVAL
            return False

        await wait_for(waiting, self.timeout, f"{ref} {STAGE} to wait for approval")
        return ref

    async def bare_waiting(self) -> WorkflowHandle[BareDecision, list[BareVerdict]]:
        self._made += 1
        handle = await self.client.start_workflow(
            BareDecision.run,
            id=f"bare/{self.world.suffix}/decision-{self._made}",
            task_queue=self.world.bare_queue,
        )
        await wait_for_event(
            self.client, handle.id, EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, self.timeout
        )
        return handle

    async def settled(self, ref: ReleaseRef) -> None:
        """What the approval set off is over: the stage has run its job."""
        await wait_for_children(self.client, ref.workflow_id, 1, self.timeout)
        await self.bench.check_succeeded(ref, [STAGE])

    async def mechanism(self, refs: list[ReleaseRef]) -> str:
        """How the decisions reached the stage, read from its history: an update, or a
        signal (and the verdict polled)."""
        ids = [stage_workflow_id(r.pipeline, r.number, STAGE, 1) for r in refs]
        found: Counter[str] = Counter()
        for history in await histories(self.client, ids):
            if event_kinds(history)["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"]:
                found["approve update"] += 1
            elif signals(history, "approve"):
                found["approve signal, verdict polled"] += 1
            else:
                found["neither update nor signal"] += 1
        return ", ".join(found) if len(found) > 1 else next(iter(found), "no runs")

    # --- the figures ----------------------------------------------------------------------

    def report(self, rounds: list[Round], measured: str) -> list[Figure]:
        in_process = [r.in_process for r in rounds]
        bare = [r.bare for r in rounds]
        cli = [r.cli for r in rounds]
        startup = [r.startup for r in rounds]
        help_ = [r.help for r in rounds]
        minus = [r.cli - r.startup for r in rounds]
        verdicts = {
            side: dict(Counter(r.verdicts[side] for r in rounds))
            for side in ("in_process", "bare", "cli")
        }
        command = "stageflow approve PIPELINE/N dev --comment bench"
        self.log(
            f"  decision round trip ({measured}): decide {median(in_process) * 1000:.0f} ms, "
            f"bare update {median(bare) * 1000:.0f} ms "
            f"({median(in_process) / median(bare):.2f}x); CLI {median(cli):.2f}s, start-up "
            f"{median(startup):.2f}s (--help {median(help_):.2f}s), CLI minus start-up "
            f"{median(minus) * 1000:.0f} ms; verdicts {verdicts}"
        )
        details = {
            "measured": measured,
            "verdicts": verdicts,
            "runs": len(rounds),
            "command": command,
            "startup_command": "python -m bench.cli_startup " + command.removeprefix("stageflow "),
        }
        return [
            Figure(
                key="decision_round_trip",
                name=f"decision round trip (decide approve, call → verdict; {measured})",
                unit="s",
                stageflow=in_process,
                limit=bare,
                limit_name="bare update round trip (execute_update)",
                target=Target("ratio", "<=", 1.5, "≤ 1.5×"),
                notes="client times, warm connected client, the target idle and waiting",
                details=details,
            ),
            Figure(
                key="decision_cli",
                name=f"decision via the CLI (`{command}`, spawn → verdict printed, exit)",
                unit="s",
                stageflow=cli,
                notes="as a user runs it; includes the CLI's start-up",
                details={"verdicts": verdicts["cli"], "measured": measured},
            ),
            Figure(
                key="decision_cli_startup",
                name="CLI start-up (spawn → the API reached, exit)",
                unit="s",
                stageflow=startup,
                notes="bench/cli_startup.py: the CLI's imports, parsing, credentials, GET /me",
            ),
            Figure(
                key="decision_cli_help",
                name="CLI start-up (`stageflow --help`, spawn → exit)",
                unit="s",
                stageflow=help_,
                notes="leaves through argparse's SystemExit, so with the interpreter's "
                "teardown, which the CLI's commands skip (os._exit)",
            ),
            Figure(
                key="decision_cli_minus_startup",
                name="CLI decision minus start-up (each run: CLI − spawn → connected)",
                unit="s",
                stageflow=minus,
                limit=bare,
                limit_name="bare update round trip",
                notes="what the CLI adds to its start-up; the ratio is for reading, "
                "the target is on the in-process figure",
                details={"measured": measured},
            ),
        ]

    def log(self, text: str) -> None:
        self.bench.log(text)


async def decision_round_trip(bench: Bench) -> list[Figure]:
    """The decision round trip figures (see the module's docstring)."""
    return await DecisionRoundTrip(bench).figures()
