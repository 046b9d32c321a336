"""The CLI's reading commands: release list/show, history, approvals, status.

The API answers them from the record (they answer whether or not a worker is up);
`release show` adds what running stages say now, when they answer fast. Here they
are only asked for and rendered.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any
from urllib.parse import quote

from rich.table import Table
from rich.text import Text

from starter import render
from starter.client import Api
from starter.exit_codes import Exit
from starter.release_ref import release_path, release_ref

# `release list` renders the API's JSON as it is; the views that need the models
# (pydantic, the workflows' types) import them when they run.


def list_releases(api: Api, args: argparse.Namespace) -> int:
    if args.limit < 1 or args.page < 1:
        raise ValueError("--limit and --page count from 1")
    page = api.get(
        "/releases",
        {
            "pipeline": args.pipeline,
            "status": args.status,
            "stage_status": args.stage_status,
            "created_by": args.created_by,
            "limit": args.limit,
            "page": args.page,
        },
    )
    rows = [render.release_json(release) for release in page["releases"]]
    if args.json:
        print(json.dumps(rows))
    elif rows:
        render.console().print(render.list_table(rows))
    else:
        print("no releases" + (" on this page" if args.page > 1 else ""))
    return Exit.OK


def show(api: Api, args: argparse.Namespace) -> int:
    from starter.change_commands import print_changes, release_changes
    from starter.commands import fetch_release

    ref = release_ref(args.release)
    status, live = fetch_release(api, ref)
    changes = release_changes(api, ref)
    unavailable = live.get("live_unavailable")
    if args.json:
        data = render.release_json(status.model_dump(mode="json"))
        data["live"] = bool(live.get("live"))
        data["changes"] = changes
        if unavailable:
            data["live_unavailable"] = unavailable
        print(json.dumps(data))
        return Exit.OK
    render.console().print(render.release_view(status))
    if any(v.latest and v.latest.tasks for v in status.stages):
        render.console().print(render.tasks_table(status))
    print_changes(render.console(), changes)
    if unavailable:
        print(f"live view unavailable: {unavailable}; showing the recorded state")
    return Exit.OK


def history(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    events: list[dict[str, Any]] = api.get(release_path(ref, "history"))
    if args.json:
        # `via` only where a request came through the API (the shape is otherwise as before).
        print(json.dumps([_event_json(event) for event in events]))
    else:
        render.console().print(render.history_table(events))
    return Exit.OK


def approvals(api: Api, args: argparse.Namespace) -> int:
    waiting = api.get("/approvals", {"mine": True} if args.mine else None)
    rows = [
        {
            "release": f"{w['pipeline']}/{w['number']}",
            "name": w["release"],
            "stage": w["stage"],
            "attempt": w["attempt"]["attempt"],
            "waiting_for": w["kind"]
            if w["kind"] != "approval"
            else f"{w['phase']}-deployment approval",
            "approvers": w["approvers"],
            "deadline": _iso(w["deadline"]),
            "status": w["attempt"]["status"],
        }
        for w in waiting
    ]
    if args.json:
        print(json.dumps(rows))
        return Exit.OK
    if not rows:
        print("nothing is waiting" + (f" on {api.get('/me')['user']}" if args.mine else ""))
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


def status(api: Api, args: argparse.Namespace) -> int:
    """The pipeline's stages × its newest releases, and what is deployed where."""
    if args.releases < 1:
        raise ValueError("--releases counts from 1")
    matrix = api.get(
        f"/pipelines/{quote(args.pipeline, safe='')}/status", {"releases": args.releases}
    )
    if not matrix["releases"]:
        raise ValueError(f"pipeline {args.pipeline!r} has no recorded releases")
    if args.json:
        print(json.dumps(matrix, separators=(",", ":"), ensure_ascii=False))
        return Exit.OK
    console = render.console()
    console.print(_deployed_table(matrix))
    console.print(_matrix_table(matrix))
    return Exit.OK


def _deployed_table(matrix: dict[str, Any]) -> Table:
    table = Table(show_edge=False, header_style="bold", title_justify="left")
    table.title = f"{matrix['pipeline']}: what is where"
    for column in ("stage", "deployed now", "since (UTC)", "by", "before", "in progress"):
        table.add_column(column)
    for stage in matrix["deployed"]:
        now = stage["deployed"]
        table.add_row(
            stage["stage"],
            _deployment(now) if now else Text("nothing", style="dim"),
            render.when(_time(now["ended_at"])) if now else "-",
            _by(now) if now else "-",
            ", ".join(d["release"] for d in stage.get("previous", [])) or "-",
            ", ".join(f"{d['release']} ({d['status']})" for d in stage["in_progress"]) or "-",
        )
    return table


def _matrix_table(matrix: dict[str, Any]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    table.add_column("release")
    table.add_column("created (UTC)")
    for name in matrix["stages"]:
        table.add_column(name)
    for row in matrix["releases"]:  # ReleaseStatus, as JSON
        by_stage = {view["name"]: view for view in row["stages"]}
        cells: list[Text | str] = [
            f"{row['name']} ({row['pipeline']}/{row['number']})",
            render.when(_time(row["created_at"])),
        ]
        for name in matrix["stages"]:
            view = by_stage.get(name)
            if view is None:
                cells.append(Text("-", style="dim"))
                continue
            text = render.styled(view["status"])
            attempts = view["attempts"]
            if attempts and attempts[-1]["attempt"] > 1:
                text.append(f" #{attempts[-1]['attempt']}", style="dim")
            cells.append(text)
        table.add_row(*cells)
    return table


def _by(deployed: dict[str, Any]) -> str:
    """Who deployed it, and how when it was a rollback."""
    by: str = deployed["triggered_by"]
    return f"{by} (rollback)" if deployed.get("reason") == "rollback" else by


def _deployment(deployed: dict[str, Any]) -> Text:
    text = Text(deployed["release"], style="bold")
    if deployed["attempt"] > 1:
        text.append(f" (attempt {deployed['attempt']})", style="dim")
    return text


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _iso(text: str | None) -> str | None:
    """An API time as Python writes it (`+00:00`, not `Z`), as this command always has."""
    moment = _time(text)
    return moment.isoformat() if moment else None


def _event_json(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "via" or v is not None}
