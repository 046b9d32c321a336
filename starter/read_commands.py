"""The CLI's reading commands: release list/show, history, approvals, status.

All read the record (starter/reading.py): they answer whether or not a worker
is up; `release show` adds what running stages say now, when they answer fast.
"""

from __future__ import annotations

import argparse
import json

from rich.table import Table
from rich.text import Text

from activities import record
from activities.record import Waiting
from activities.record.views import Deployed, StatusMatrix, TrailEvent
from starter import render
from starter.exit_codes import Exit
from starter.reading import reading, termination, with_live_view
from starter.releases import ReleaseNotFound, ReleaseRef
from worker.settings import Settings
from workflows.release import ReleaseStatus


async def list_releases(settings: Settings, args: argparse.Namespace) -> int:
    if args.limit < 1 or args.page < 1:
        raise ValueError("--limit and --page count from 1")
    async with reading(settings) as db:
        found = (
            []
            if db is None
            else await record.releases(
                db,
                pipeline=args.pipeline,
                status=args.status,
                stage_status=args.stage_status,
                created_by=args.created_by,
                limit=args.limit,
                offset=(args.page - 1) * args.limit,
            )
        )
    rows = [render.release_json(status) for status in found]
    if args.json:
        print(json.dumps(rows))
    elif rows:
        render.console().print(render.list_table(rows))
    else:
        print("no releases" + (" on this page" if args.page > 1 else ""))
    return Exit.OK


async def recorded_release(settings: Settings, ref: ReleaseRef) -> ReleaseStatus:
    """The release from the record; ReleaseNotFound if the record does not know it."""
    async with reading(settings) as db:
        found = None if db is None else await record.release(db, ref.pipeline, ref.number)
    if found is None:
        raise ReleaseNotFound(f"release {ref} not found")
    return found


async def show(settings: Settings, args: argparse.Namespace) -> int:
    ref = ReleaseRef.parse(args.release)  # a ValueError is a usage error: exit 2
    status = await recorded_release(settings, ref)
    unavailable = await with_live_view(settings, status)
    if args.json:
        data = render.release_json(status)
        data["live"] = unavailable is None
        if unavailable:
            data["live_unavailable"] = unavailable
        print(json.dumps(data))
        return Exit.OK
    render.console().print(render.release_view(status))
    if any(v.latest and v.latest.tasks for v in status.stages):
        render.console().print(render.tasks_table(status))
    if unavailable:
        print(f"live view unavailable: {unavailable}; showing the recorded state")
    return Exit.OK


async def history(settings: Settings, args: argparse.Namespace, ref: ReleaseRef) -> int:
    async with reading(settings) as db:
        events = None if db is None else await record.trail(db, ref.pipeline, ref.number)
    if events is None:
        raise ReleaseNotFound(f"release {ref} not found")
    terminated = await termination(settings, ref) if _maybe_running(events) else None
    if terminated is not None:
        events.append(TrailEvent(**terminated.model_dump()))
    if args.json:
        # `via` only where a request came through the API (the shape is otherwise as before).
        print(json.dumps([_event_json(event) for event in events]))
    else:
        render.console().print(render.history_table(events))
    return Exit.OK


def _maybe_running(events: list[TrailEvent]) -> bool:
    """A release whose trail has no end (abandon, close) may still run in Temporal."""
    return not any(e.action in ("abandon", "close") and e.outcome == "accepted" for e in events)


async def waiting_on(settings: Settings, user: str | None) -> list[Waiting]:
    """What waits on people (on `user`: what they may decide now), from the record."""
    async with reading(settings) as db:
        return [] if db is None else await record.releases_waiting_on(db, user)


async def approvals(settings: Settings, args: argparse.Namespace) -> int:
    waiting = await waiting_on(settings, settings.user if args.mine else None)
    rows = [
        {
            "release": w.reference,
            "name": w.release,
            "stage": w.stage,
            "attempt": w.attempt.attempt,
            "waiting_for": w.kind if w.kind != "approval" else f"{w.phase}-deployment approval",
            "approvers": w.approvers,
            "deadline": w.deadline.isoformat() if w.deadline else None,
            "status": w.attempt.status.value,
        }
        for w in waiting
    ]
    if args.json:
        print(json.dumps(rows))
        return Exit.OK
    if not rows:
        print("nothing is waiting" + (f" on {settings.user}" if args.mine else ""))
        return Exit.OK
    table = Table(show_edge=False, header_style="bold")
    for column in ("release", "stage", "waiting for", "approvers", "deadline (UTC)"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            f"{row['release']} ({row['name']})",
            row["stage"],
            row["waiting_for"],
            ", ".join(row["approvers"]) or "anyone",
            (row["deadline"] or "-")[:16].replace("T", " "),
        )
    render.console().print(table)
    return Exit.OK


async def status(settings: Settings, args: argparse.Namespace) -> int:
    """The pipeline's stages × its newest releases, and what is deployed where."""
    if args.releases < 1:
        raise ValueError("--releases counts from 1")
    async with reading(settings) as db:
        matrix = (
            None if db is None else await record.status_matrix(db, args.pipeline, args.releases)
        )
    if matrix is None or not matrix.releases:
        raise ReleaseNotFound(f"pipeline {args.pipeline!r} has no recorded releases")
    if args.json:
        print(matrix.model_dump_json())
        return Exit.OK
    console = render.console()
    console.print(_deployed_table(matrix))
    console.print(_matrix_table(matrix))
    return Exit.OK


def _deployed_table(matrix: StatusMatrix) -> Table:
    table = Table(show_edge=False, header_style="bold", title_justify="left")
    table.title = f"{matrix.pipeline}: what is where"
    for column in ("stage", "deployed now", "since (UTC)", "by", "in progress"):
        table.add_column(column)
    for stage in matrix.deployed:
        now = stage.deployed
        table.add_row(
            stage.stage,
            _deployment(now) if now else Text("nothing", style="dim"),
            render.when(now.ended_at) if now else "-",
            now.triggered_by if now else "-",
            ", ".join(f"{d.release} ({d.status.value})" for d in stage.in_progress) or "-",
        )
    return table


def _matrix_table(matrix: StatusMatrix) -> Table:
    table = Table(show_edge=False, header_style="bold")
    table.add_column("release")
    table.add_column("created (UTC)")
    for name in matrix.stages:
        table.add_column(name)
    for row in matrix.releases:
        by_stage = {view.name: view for view in row.stages}
        cells: list[Text | str] = [
            f"{row.name} ({row.pipeline}/{row.number})",
            render.when(row.created_at),
        ]
        for name in matrix.stages:
            view = by_stage.get(name)
            if view is None:
                cells.append(Text("-", style="dim"))
                continue
            text = render.styled(view.status.value)
            if view.latest is not None and view.latest.attempt > 1:
                text.append(f" #{view.latest.attempt}", style="dim")
            cells.append(text)
        table.add_row(*cells)
    return table


def _deployment(deployed: Deployed) -> Text:
    text = Text(deployed.release, style="bold")
    if deployed.attempt > 1:
        text.append(f" (attempt {deployed.attempt})", style="dim")
    return text


def _event_json(event: TrailEvent) -> dict[str, object]:
    return event.model_dump(mode="json", exclude={"via"} if event.via is None else None)
