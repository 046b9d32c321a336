"""`python -m bench [--quick | --tiny] [options]`: run every figure, print the table,
write `bench/results/latest.json` (and, for a full run, `bench/results/<date>.json`)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.decision import decision_round_trip
from bench.figures import MB, PRESETS, Bench, Sizes, startup
from bench.report import FIGURE_KEYS, Figure, machine, markdown_table, table, write_results
from bench.world import World
from worker.devserver import SQLITE_PRAGMAS

RESULTS = Path(__file__).resolve().parent / "results"
SQLITE_CHOICES: dict[str, list[str] | None] = {
    "shipped": None,
    "wal-normal": ["journal_mode=wal", "synchronous=normal"],
    "none": [],
}
GROUPS = [
    "latency",
    "approval",
    "decision",
    "throughput",
    "logs",
    "artifacts",
    "failover",
    "startup",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Stageflow beside bare Temporal and the raw shell, on one dev server.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    size.add_argument(
        "--tiny", action="store_true", help="tiny sizes, for the test that keeps it alive"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated groups of: {', '.join(GROUPS)}"
    )
    parser.add_argument(
        "--runs", type=int, help="repeats for latency, approval and decision figures"
    )
    parser.add_argument("--releases", type=int, help="releases started at once for throughput")
    parser.add_argument("--log-mb", type=int, help="task output size in MB")
    parser.add_argument("--drop-mb", type=int, help="artifact drop size in MB")
    parser.add_argument(
        "--repeats", type=int, help="repeats of the log, download, start-up and failover figures"
    )
    parser.add_argument("--agents", type=int, help="agents in the main pool (default 2)")
    parser.add_argument("--capacity", type=int, help="job slots per main agent (default 20)")
    parser.add_argument(
        "--sqlite",
        choices=sorted(SQLITE_CHOICES),
        default="shipped",
        help="dev server SQLite pragmas: shipped (WAL + synchronous=full, what `stageflow "
        "server` uses), wal-normal (WAL + synchronous=normal), none (SQLite defaults)",
    )
    parser.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dev server dynamic config value, e.g. history.maxInFlightUpdates=100",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--no-record", action="store_true", help="write no dated copy")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    return parser


def sizes_from(args: argparse.Namespace) -> tuple[str, Sizes]:
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    sizes = PRESETS[preset]
    changes: dict[str, Any] = {}
    if args.runs:
        changes.update(latency_runs=args.runs, approval_runs=args.runs, decision_runs=args.runs)
    if args.releases:
        changes["throughput_releases"] = args.releases
        # A burst finishes at a few releases per second: give every wait time for that.
        changes["timeout"] = max(sizes.timeout, args.releases * 2.0)
    if args.log_mb:
        changes["log_bytes"] = args.log_mb * MB
    if args.drop_mb:
        changes["drop_bytes"] = args.drop_mb * MB
    if args.repeats:
        changes.update(
            log_runs=args.repeats,
            download_runs=args.repeats,
            startup_runs=args.repeats,
            failover_runs=args.repeats,
        )
    if args.agents:
        changes["agents"] = args.agents
    if args.capacity:
        changes["capacity"] = args.capacity
    return preset, dataclasses.replace(sizes, **changes)


async def run(args: argparse.Namespace) -> int:
    preset, sizes = sizes_from(args)
    groups = [g.strip() for g in args.only.split(",") if g.strip()] or GROUPS
    unknown = set(groups) - set(GROUPS)
    if unknown:
        print(f"unknown group(s): {', '.join(sorted(unknown))}; use {', '.join(GROUPS)}")
        return 2
    # Ctrl-C or a TERM cancels the run; the `finally` below still stops every process.
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    began = time.monotonic()
    load_before = os.getloadavg()
    started_at = dt.datetime.now(dt.UTC)
    root = Path(tempfile.mkdtemp(prefix="stageflow-bench-"))
    print(f"bench {preset}: work dir {root}", flush=True)
    figures: list[Figure] = []
    errors: dict[str, str] = {}

    def say(text: str) -> None:
        print(text, flush=True)

    async def measure(group: str, coroutine: Any) -> None:
        say(f"{group} …")
        try:
            figures.extend(await coroutine)
        except Exception as err:
            errors[group] = f"{type(err).__name__}: {err}"
            say(f"  {group} FAILED: {errors[group]}")
            traceback.print_exc()

    world = await World.start(root, SQLITE_CHOICES[args.sqlite], args.server_config)
    try:
        bench = Bench(world, sizes, log=say)
        await bench.start_processes()
        say(f"server and processes up in {time.monotonic() - began:.1f}s; warming up …")
        await bench.warm_up()
        plan = [
            ("latency", bench.release_latency),
            ("approval", bench.approval_latency),
            ("decision", lambda: decision_round_trip(bench)),
            ("throughput", bench.throughput),
            ("logs", bench.log_streaming),
            ("artifacts", bench.artifact_download),
            ("failover", bench.failover),
        ]
        for group, figure in plan:
            if group in groups:
                await measure(group, figure())
    finally:
        world.close()
    if "startup" in groups:
        # Its own stacks, after the main one has stopped, so nothing else runs meanwhile.
        await measure("startup", startup(root / "startup", sizes, log=say))

    order = {key: i for i, key in enumerate(FIGURE_KEYS)}
    figures.sort(key=lambda f: order.get(f.key, len(order)))
    print()
    print(table(figures))
    record = {
        "preset": preset,
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - began, 1),
        "machine": machine(),
        # Anything else running on the machine shows here (the figures share its 2 cores).
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "server": {
            "sqlite": args.sqlite,
            "sqlite_pragmas": (
                SQLITE_PRAGMAS if args.sqlite == "shipped" else SQLITE_CHOICES[args.sqlite]
            ),
            "dynamic_config": args.server_config,
            "ui": "headless",
        },
        "sizes": dataclasses.asdict(sizes),
        "groups": groups,
        "figures": {f.key: f.to_json() for f in figures},
        "errors": errors,
        "markdown": markdown_table(figures),
    }
    latest = args.results_dir / "latest.json"
    write_results(latest, record)
    print(f"\nresults: {latest}")
    complete = (
        not errors and groups == GROUPS and args.sqlite == "shipped" and not args.server_config
    )
    if preset == "full" and not args.no_record and complete:
        dated = args.results_dir / f"{started_at.date().isoformat()}.json"
        write_results(dated, record)
        print(f"record:  {dated}")
    print(f"took {record['seconds']:.0f}s")
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = asyncio.run(run(args))
    sys.stdout.flush()
    return code
