"""The release commands of the CLI: one function each, printing what they did."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import Client

from starter import render
from starter.exit_codes import Exit
from starter.read_commands import waiting_on
from starter.releases import (
    ReleaseRef,
    StageNotFound,
    abandon_release,
    cancel_stage,
    create_release,
    decide,
    deploy_now,
    deploy_stage,
    ignore_gate,
    latest_attempt,
    parse_vars,
    release_status,
    settled,
)
from worker.settings import Settings, connect
from workflows.audit import AuditEvent
from workflows.pipeline import parse_duration
from workflows.release import ReleaseStatus, StageStatus

FAILED_STATUSES = {StageStatus.FAILED, StageStatus.CANCELED, StageStatus.REJECTED}
POLL = 0.3


async def create(client: Client, settings: Settings, args: argparse.Namespace) -> int:
    created = await create_release(
        client,
        Path(args.file),
        user=settings.user,
        artifact_versions=parse_vars(args.artifact, "--artifact"),
        variables=parse_vars(args.var),
        until=args.until,
        description=args.description,
        task_queue=settings.task_queue,
    )
    pipeline = created.workflow_id.split("/")[1]
    ref = ReleaseRef(pipeline, created.number)
    if not args.wait:
        if args.json:
            print(
                json.dumps(
                    {
                        "pipeline": pipeline,
                        "number": created.number,
                        "name": created.name,
                        "reference": str(ref),
                        "workflow_id": created.workflow_id,
                    }
                )
            )
        else:
            print(f"created {pipeline} {created.name} ({ref})")
        return Exit.OK
    if not args.json:
        print(f"created {pipeline} {created.name} ({ref})", flush=True)
    status = await _wait_settled(client, ref, live=not args.json)
    if args.json:
        print(json.dumps(render.release_json(status)))
    else:
        render.console().print(render.release_view(status))
    return _exit_code(status)


async def _wait_settled(client: Client, ref: ReleaseRef, live: bool) -> ReleaseStatus:
    """Poll the release until no stage is queued or running, showing progress."""
    status = await release_status(client, ref)
    if not live or not sys.stdout.isatty():
        while not settled(status):
            await asyncio.sleep(POLL)
            status = await release_status(client, ref)
        return status
    with Live(_progress(status), console=render.console(), refresh_per_second=4) as view:
        while not settled(status):
            await asyncio.sleep(POLL)
            status = await release_status(client, ref)
            view.update(_progress(status))
    return status


def _progress(status: ReleaseStatus) -> Group:
    stages = Text()
    for index, view in enumerate(status.stages):
        if index:
            stages.append("  →  ")
        stages.append(f"{view.name} ")
        stages.append_text(render.styled(view.status.value))
    return Group(stages, render.tasks_table(status))


def _exit_code(status: ReleaseStatus) -> int:
    triggered = [v for v in status.stages if v.attempts]
    return Exit.FAILED if any(v.status in FAILED_STATUSES for v in triggered) else Exit.OK


async def deploy(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    if args.now:
        event = await deploy_now(client, ref, args.stage, settings.user)
        return _verdict(ref, f"deploy {args.stage} now", event, args.json)
    return await _deploy(client, settings, args, ref, redeploy=False)


async def redeploy(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    return await _deploy(client, settings, args, ref, redeploy=True)


async def _deploy(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef, redeploy: bool
) -> int:
    event = await deploy_stage(client, ref, args.stage, settings.user, redeploy=redeploy)
    return _verdict(ref, f"{args.command} {args.stage}", event, args.json)


async def abandon(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    event = await abandon_release(client, ref, settings.user, args.reason)
    return _verdict(ref, "abandon", event, args.json)


async def cancel(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    event = await cancel_stage(client, ref, args.stage, settings.user)
    return _verdict(ref, f"cancel {args.stage}", event, args.json)


async def logs(settings: Settings, args: argparse.Namespace, ref: ReleaseRef) -> int:
    """Print task logs from the log store; with --follow, stream a running task live.
    Which tasks ran comes from the record (and the live view of running stages)."""
    from starter.logs import print_logs
    from starter.read_commands import recorded_release
    from starter.reading import with_live_view

    status = await recorded_release(settings, ref)
    await with_live_view(settings, status)  # a task running now, if its stage answers
    names = [view.name for view in status.stages]
    if args.stage and args.stage not in names:
        raise StageNotFound(
            f"release {ref} has no stage {args.stage!r} (stages: {', '.join(names)})"
        )
    client = await connect(settings) if args.follow else None
    return await print_logs(client, settings, status, args)


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


# --- people's decisions ------------------------------------------------------------------


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`2026-12-01T03:00` (UTC unless an offset is given), `2026-12-01 03:00+01:00`, or `+2h`."""
    if text.startswith("+"):
        return (now or datetime.now(UTC)) + parse_duration(text[1:])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        raise ValueError(
            f"--defer-until {text!r}: use an ISO time like 2026-12-01T03:00 (UTC) or +2h"
        ) from err
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _verdict(ref: ReleaseRef, what: str, event: AuditEvent, as_json: bool) -> int:
    """Print the workflow's answer: accepted (exit 0), or refused and why (exit 2)."""
    if as_json:
        print(event.model_dump_json())
    elif event.outcome == "accepted":
        print(f"{ref}: {what} accepted" + (f" ({event.detail})" if event.detail else ""))
    else:
        print(f"error: {ref}: {what} refused: {event.detail}", file=sys.stderr)
    return Exit.OK if event.outcome == "accepted" else Exit.USAGE


async def approve(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    defer = parse_time(args.defer_until) if args.defer_until else None
    phase = "post" if args.post else "pre"
    event = await decide(
        client,
        ref,
        args.stage,
        settings.user,
        "approve",
        phase=phase,
        comment=args.comment,
        defer_until=defer,
    )
    return _verdict(ref, f"approve {args.stage} ({phase}-deployment)", event, args.json)


async def approve_all_mine(client: Client, settings: Settings, args: argparse.Namespace) -> int:
    recorded = await waiting_on(settings, settings.user)
    waiting = [w for w in recorded if w.kind == "approval"]
    if not waiting:
        print(f"nothing is waiting on {settings.user}")
        return Exit.OK
    worst = Exit.OK
    for item in waiting:
        ref = ReleaseRef(item.pipeline, item.number)
        event = await decide(
            client,
            ref,
            item.stage,
            settings.user,
            "approve",
            phase=item.phase,
            comment=args.comment,
        )
        code = _verdict(ref, f"approve {item.stage} ({item.phase}-deployment)", event, args.json)
        worst = max(worst, code)
    return worst


async def reject(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    phase = "post" if args.post else "pre"
    event = await decide(
        client, ref, args.stage, settings.user, "reject", phase=phase, comment=args.comment
    )
    return _verdict(ref, f"reject {args.stage}", event, args.json)


async def resume(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    event = await decide(client, ref, args.stage, settings.user, "resume", comment=args.comment)
    return _verdict(ref, f"resume {args.stage}", event, args.json)


async def gates(
    client: Client, settings: Settings, args: argparse.Namespace, ref: ReleaseRef
) -> int:
    phase = "post" if args.post else "pre"
    if args.ignore:
        event = await ignore_gate(client, ref, args.stage, settings.user, args.ignore, phase)
        return _verdict(ref, f"ignore gate check {args.ignore!r}", event, args.json)
    attempt = await latest_attempt(client, ref, args.stage)
    states = [g for g in attempt.gates if g.phase == phase]
    if args.json:
        print(json.dumps([g.model_dump(mode="json") for g in states]))
        return Exit.OK
    if not states:
        print(
            f"{ref} {args.stage}: no {phase}-deployment gates evaluated (attempt {attempt.attempt})"
        )
        return Exit.OK
    for state in states:
        print(
            f"{phase}-deployment gates: {state.status}, deadline {render.when(state.deadline)} UTC"
            + (f", ignored: {', '.join(state.ignored)}" if state.ignored else "")
        )
        table = Table(show_edge=False, header_style="bold")
        for column in ("time (UTC)", "check", "healthy", "reason"):
            table.add_column(column)
        for evaluation in state.evaluations:
            for result in evaluation.results:
                table.add_row(
                    render.when(evaluation.time),
                    result.check,
                    "ignored" if result.ignored else ("yes" if result.healthy else "no"),
                    result.reason,
                )
        render.console().print(table)
    return Exit.OK
