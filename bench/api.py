"""`python -m bench.api`: the front door's figures (issue 13), on one dev server.

    python -m bench.api                                   # 20 runs, 20 clients, 1-2 min
    python -m bench.api --rounds 5 --approval-rounds 1 --shows 100   # a quick check
    python -m bench.api --clients 20 --out PATH           # JSON elsewhere

It starts, on 127.0.0.1 and free ports, in one temporary directory: a Temporal dev
server (as `stageflow server` does), a control worker and an agent (`python -m
starter.cli worker|agent`), and the API (`python -m starter.cli serve --port P`); it
makes the approver `bench` with `stageflow user add bench --admin` (the token is the
last line it prints). Everything it starts it stops by PID at the end, also when a
figure fails or the run is interrupted.

The figures:

- **CLI wall time** — spawn → exit, each run a fresh process, the three commands taking
  turns: `stageflow --help` (target ≤ 0.15 s), `stageflow release list` (target
  ≤ 0.3 s) and, as the limit, the Go CLI `temporal workflow list --address … --namespace
  default` against the same server. `release list` runs with `STAGEFLOW_URL` and
  `STAGEFLOW_TOKEN` in its environment: it asks the API, which answers from the record.
  A first round is a warm-up, not counted.
- **approve** — each round, a release whose `--clients` stages all wait for `bench`'s
  pre-deployment approval (created by `bench-creator`: a creator may not approve);
  `--clients` HTTP clients (one `httpx.AsyncClient` each, its own connection, opened
  before) each `POST /api/v1/releases/P/N/stages/sK/approve` one stage, all at once;
  client time of each call. Every verdict is checked (`accepted`), and the stages have
  run their jobs before the next round. A first round is a warm-up, not counted.
- **release show** — `GET /api/v1/releases/P/N` of the releases the rounds made, from
  `--clients` clients at once, each sending its share of `--shows` one after another;
  client time of each request (after one warm-up request per client). `details` counts
  the answers with the live view (`live`) and why it was unavailable.

Times are medians, p90 and p99 (nearest rank). It prints a table and writes JSON to
`bench/results/api.json` (or `--out`); the machine may be shared: the load averages
before and after are in it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.decision import run_timed, stageflow_command
from bench.report import Figure, Target, machine, p90, write_results
from bench.world import ROOT, World, wait_for
from starter.releases import ReleaseRef
from worker.devserver import free_port, temporal_binary

RESULTS = Path(__file__).resolve().parent / "results"
APPROVER = "bench"  # the pipeline's approver and the API's user
CREATOR = "bench-creator"  # makes the releases: a creator may not approve them
GO_LIMIT = "Go `temporal workflow list`"


def approval_pipeline(name: str, pool: str, stages: int) -> str:
    """A pipeline of `stages` stages s1, s2, … all started by the release (the default
    trigger), each waiting for the approver before its one `true` task."""
    approvals = f"{{approvals: {{approvers: [{APPROVER}]}}}}"
    task = "{name: t, script: 'true'}"
    lines = [f"name: {name}", "stages:"]
    lines += [
        f"  - {{name: s{k}, pool: {pool}, pre_deployment: {approvals}, tasks: [{task}]}}"
        for k in range(1, stages + 1)
    ]
    return "\n".join(lines) + "\n"


def p99(values: list[float]) -> float:
    """The 99th percentile, nearest rank (the largest value for fewer than 100 samples)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


@dataclass
class FrontDoor:
    """The running stack: the world's server and processes, the API and its user."""

    world: World
    url: str
    token: str
    pool: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def cli_env(self) -> dict[str, str]:
        """The environment `stageflow` commands run with: the API's URL and token (what
        the CLI will use), and the data dir and Temporal address (what it reads today)."""
        return self.world.env(
            STAGEFLOW_URL=self.url,
            STAGEFLOW_TOKEN=self.token,
            XDG_CONFIG_HOME=str(self.world.root / "config"),
        )

    def http(self) -> httpx.AsyncClient:
        """One client of the API: its own connection, kept for its requests."""
        return httpx.AsyncClient(
            base_url=f"{self.url}/api/v1",
            headers=self.headers,
            timeout=60,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def show(self, http: httpx.AsyncClient, ref: ReleaseRef) -> dict[str, Any]:
        response = await http.get(f"/releases/{ref}")
        if response.status_code != 200:
            raise RuntimeError(f"GET /releases/{ref}: {response.status_code} {response.text[:300]}")
        shown: dict[str, Any] = response.json()
        return shown


async def open_front_door(world: World, capacity: int) -> FrontDoor:
    """Start the control worker, an agent with `capacity` job slots, the API; add the
    approver with a token."""
    env = {"XDG_CONFIG_HOME": str(world.root / "config")}
    await world.start_worker()
    pool = world.pool("main")
    await world.start_agent("a1", pool, capacity=capacity)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = world.spawn(["-m", "starter.cli", "serve", "--port", str(port)], "api", **env)

    async def healthy() -> bool:
        if api.poll() is not None:
            log = (world.root / "api.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the API exited with {api.returncode}:\n{log}")
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{url}/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(healthy, timeout=60, what=f"{url}/healthz")
    # After the API is up: it has migrated the record `user add` writes to.
    added = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "starter.cli", "user", "add", APPROVER, "--admin"],
        cwd=ROOT,
        env=world.env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if added.returncode != 0 or not added.stdout.strip():
        raise RuntimeError(f"user add exited with {added.returncode}: {added.stderr[-500:]}")
    token = added.stdout.strip().splitlines()[-1]
    return FrontDoor(world=world, url=url, token=token, pool=pool)


# --- approve ---------------------------------------------------------------------------


@dataclass
class ApprovalRound:
    """One release's approvals: each accepted call's client time, and every verdict."""

    ref: ReleaseRef
    seconds: list[float]  # each accepted approve call
    verdicts: Counter[str]


async def approval_round(door: FrontDoor, clients: int, number: int) -> ApprovalRound:
    """One release with `clients` stages waiting for the approver, approved by
    `clients` clients at once; waits until the approved stages have run."""
    world = door.world
    name = f"bench-api-{world.suffix}-{number}"
    path = world.write_pipeline(name, approval_pipeline(name, door.pool, clients))
    ref = await world.create(path, user=CREATOR)
    stages = [f"s{k}" for k in range(1, clients + 1)]
    https = [door.http() for _ in stages]
    try:

        async def statuses() -> dict[str, str]:
            shown = await door.show(https[0], ref)
            return {stage["name"]: stage["status"] for stage in shown["stages"]}

        async def all_waiting() -> bool:
            return all(s == "waiting_for_approval" for s in (await statuses()).values())

        await wait_for(all_waiting, 120, f"{ref}: every stage waiting for {APPROVER}", 0.2)
        # Every client's connection is open before the approvals start.
        await asyncio.gather(*(http.get("/me") for http in https))

        async def approve(http: httpx.AsyncClient, stage: str) -> tuple[float, str]:
            body = {"comment": "bench", "request_id": uuid.uuid4().hex}
            started = time.perf_counter()
            response = await http.post(f"/releases/{ref}/stages/{stage}/approve", json=body)
            seconds = time.perf_counter() - started
            if response.status_code == 200:
                return seconds, response.json()["event"]["outcome"]
            return seconds, f"{response.status_code}: {response.text[:200]}"

        answers = await asyncio.gather(
            *(approve(http, stage) for http, stage in zip(https, stages, strict=True))
        )
        verdicts = Counter(verdict for _, verdict in answers)
        approved = {stage for stage, (_, v) in zip(stages, answers, strict=True) if v == "accepted"}

        async def settled() -> bool:
            now = await statuses()
            return all(now[stage] == "succeeded" for stage in approved)

        await wait_for(settled, 120, f"{ref}: the approved stages deployed", 0.2)
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return ApprovalRound(
        ref=ref,
        seconds=[seconds for seconds, verdict in answers if verdict == "accepted"],
        verdicts=verdicts,
    )


# --- release show ----------------------------------------------------------------------


async def show_latency(
    door: FrontDoor, refs: list[ReleaseRef], requests: int, clients: int
) -> tuple[list[float], dict[str, Any]]:
    """`requests` GETs of the releases in turn, shared by `clients` clients sending at
    once; each client's first request (opening its connection) is not counted."""
    share = math.ceil(requests / clients)
    live: Counter[str] = Counter()

    async def client(k: int) -> list[float]:
        times = []
        async with door.http() as http:
            await door.show(http, refs[k % len(refs)])
            for i in range(share):
                ref = refs[(k + i) % len(refs)]
                started = time.perf_counter()
                shown = await door.show(http, ref)
                times.append(time.perf_counter() - started)
                live["live" if shown["live"] else f"not live: {shown['live_unavailable']}"] += 1
        return times

    shares = await asyncio.gather(*(client(k) for k in range(clients)))
    states = Counter(await _states(door, refs))
    return [t for times in shares for t in times], {
        "releases": [str(ref) for ref in refs],
        "release_states": dict(states),
        "live_view": dict(live),
    }


async def _states(door: FrontDoor, refs: list[ReleaseRef]) -> list[str]:
    async with door.http() as http:
        return [f"{(s := await door.show(http, ref))['state']}/{s['status']}" for ref in refs]


# --- CLI wall time ---------------------------------------------------------------------


async def cli_wall_times(door: FrontDoor, rounds: int) -> dict[str, list[float]]:
    """Each round runs the three commands in turn, each a fresh process; the first
    round is a warm-up (the files in the page cache)."""
    env = door.cli_env()
    stageflow = stageflow_command()
    commands = {
        "help": [*stageflow, "--help"],
        "release_list": [*stageflow, "release", "list"],
        "go_list": [
            temporal_binary(),
            "workflow",
            "list",
            "--address",
            door.world.address,
            "--namespace",
            "default",
        ],
    }
    # What each command's output must hold, so a failing command is not timed as fast.
    expect = {"help": "usage", "release_list": "bench-api-", "go_list": "bench-api-"}
    times: dict[str, list[float]] = {key: [] for key in commands}
    for round_ in range(rounds + 1):
        for key, argv in commands.items():
            seconds, code, output = await run_timed(argv, env, timeout=60)
            if code != 0 or expect[key] not in output:
                raise RuntimeError(f"{' '.join(argv)} exited with {code}: {output[-500:]}")
            if round_ > 0:
                times[key].append(seconds)
    return times


# --- the report ------------------------------------------------------------------------


def figures_of(
    cli: dict[str, list[float]] | None,
    approve: list[float] | None,
    approve_details: dict[str, Any],
    show: list[float] | None,
    show_details: dict[str, Any],
    clients: int,
) -> list[Figure]:
    found: list[Figure] = []
    if cli is not None:
        go = cli["go_list"]
        found += [
            Figure(
                key="cli_help",
                name="`stageflow --help` (spawn → exit)",
                unit="s",
                stageflow=cli["help"],
                limit=go,
                limit_name=GO_LIMIT,
                target=Target("value", "<=", 0.15, "≤ 0.15 s"),
                notes="each run a fresh process",
            ),
            Figure(
                key="cli_release_list",
                name="`stageflow release list` (spawn → table printed, exit)",
                unit="s",
                stageflow=cli["release_list"],
                limit=go,
                limit_name=GO_LIMIT,
                target=Target("value", "<=", 0.3, "≤ 0.3 s"),
                notes="with STAGEFLOW_URL/STAGEFLOW_TOKEN (and the data dir) in its env",
            ),
            Figure(
                key="go_workflow_list",
                name="`temporal workflow list` (the Go CLI, same server)",
                unit="s",
                stageflow=go,
                notes="the limit of the two CLI figures",
            ),
        ]
    if approve is not None:
        found.append(
            Figure(
                key="api_approve",
                name=f"API approve, {clients} clients at once (POST …/stages/S/approve)",
                unit="s",
                stageflow=approve,
                notes="client time to the accepted verdict; one stage each, all waiting",
                details=approve_details,
            )
        )
    if show is not None:
        found.append(
            Figure(
                key="api_release_show",
                name=f"API release show, {clients} clients (GET /releases/P/N)",
                unit="s",
                stageflow=show,
                notes="client time: the record's read and the live view (starter/reading.py)",
                details=show_details,
            )
        )
    return found


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.0f} ms"


def table(figures: list[Figure]) -> str:
    rows = [("figure", "n", "p50", "p90", "p99", "limit p50 (p90)", "target", "met?")]
    for f in figures:
        limit = f"{_ms(f.limit_value)} ({_ms(p90(f.limit))})" if f.limit else "-"
        rows.append(
            (
                f.name,
                str(len(f.stageflow)),
                _ms(f.value),
                _ms(p90(f.stageflow)),
                _ms(p99(f.stageflow)),
                limit,
                f.target.text if f.target else "-",
                {True: "yes", False: "NO", None: "-"}[f.met],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + (f"\nlimit: {GO_LIMIT}" if any(f.limit for f in figures) else "")


def figure_json(f: Figure) -> dict[str, Any]:
    data = f.to_json()
    data["stageflow_p99"] = None if not f.stageflow else round(p99(f.stageflow), 6)
    return data


# --- the run ---------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> int:
    # Ctrl-C or a TERM cancels the run; the `finally` below still stops every process.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    began = time.monotonic()
    load_before = os.getloadavg()
    started_at = datetime.now(UTC)
    errors: dict[str, str] = {}
    cli: dict[str, list[float]] | None = None
    approve: list[float] | None = None
    show: list[float] | None = None
    approve_details: dict[str, Any] = {}
    show_details: dict[str, Any] = {}

    async def measure(name: str, work: Awaitable[Any]) -> Any:
        print(f"{name} …", flush=True)
        try:
            return await work
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"
            print(f"  {name} FAILED: {errors[name]}", flush=True)
            return None

    root = Path(tempfile.mkdtemp(prefix="stageflow-bench-api-"))
    print(f"bench api: work dir {root}", flush=True)
    try:
        world = await World.start(root)
        try:
            door = await open_front_door(world, capacity=args.clients)
            print(f"stack up in {time.monotonic() - began:.1f}s: API at {door.url}", flush=True)

            async def approvals() -> list[ApprovalRound]:
                return [
                    await approval_round(door, args.clients, k)
                    for k in range(args.approval_rounds + 1)
                ]

            rounds = await measure("approve", approvals())
            if rounds:
                approve = [s for r in rounds[1:] for s in r.seconds]
                verdicts: Counter[str] = Counter()
                for r in rounds[1:]:
                    verdicts.update(r.verdicts)
                approve_details = {
                    "rounds": len(rounds) - 1,
                    "stages_per_release": args.clients,
                    "verdicts": dict(verdicts),
                    "warm_up_seconds": rounds[0].seconds,
                }
                refs = [r.ref for r in rounds]
                shown = await measure(
                    "release show", show_latency(door, refs, args.shows, args.clients)
                )
                if shown:
                    show, show_details = shown
            cli = await measure("CLI wall time", cli_wall_times(door, args.rounds))
        finally:
            world.close()
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    figures = figures_of(cli, approve, approve_details, show, show_details, args.clients)
    print()
    print(table(figures))
    record = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - began, 1),
        "machine": machine(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "options": {
            "rounds": args.rounds,
            "clients": args.clients,
            "shows": args.shows,
            "approval_rounds": args.approval_rounds,
        },
        "figures": {f.key: figure_json(f) for f in figures},
        "errors": errors,
    }
    write_results(args.out, record)
    print(f"\nresults: {args.out}\ntook {record['seconds']:.0f}s")
    return 1 if errors else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api",
        description="CLI wall time beside the Go temporal CLI; the API's release show "
        "and approve latency under concurrent clients (issue 13).",
    )
    parser.add_argument("--rounds", type=int, default=20, help="runs of each CLI command")
    parser.add_argument(
        "--clients", type=int, default=20, help="concurrent API clients (and stages per release)"
    )
    parser.add_argument(
        "--shows", type=int, default=400, help="release show requests, shared by the clients"
    )
    parser.add_argument(
        "--approval-rounds",
        type=int,
        default=5,
        help="releases whose stages are all approved at once (after a warm-up one)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "api.json")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (every log)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("rounds", "clients", "shows", "approval_rounds"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} counts from 1", file=sys.stderr)
            return 2
    try:
        return asyncio.run(run(args))
    except (KeyboardInterrupt, asyncio.CancelledError):  # everything started is stopped
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # sdk-python #300: runtime teardown must not change the exit code
