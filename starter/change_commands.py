"""The CLI's commands about what releases bring: `where ITEM`, `release diff`, and the
commits and work items `release show` prints. The API answers from the record
(starter/api/routes_changes.py); here they are only asked for and rendered.
"""

from __future__ import annotations

import argparse
import json
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from starter import render
from starter.client import Api, ApiError
from starter.exit_codes import Exit
from starter.release_ref import ReleaseRef, release_path, release_ref

# `release show` lists at most this many commits per stage; `--json` has them all.
SHOWN_COMMITS = 10


def release_changes(api: Api, ref: ReleaseRef) -> dict[str, Any]:
    """What the release brings; nothing while the record has not taken the release in
    (`release show` can answer from its live view before)."""
    try:
        return dict(api.get(release_path(ref, "changes")))
    except ApiError as err:
        if err.status != 404:
            raise
        return {"pipeline": ref.pipeline, "number": ref.number, "own": NOTHING, "stages": []}


NOTHING: dict[str, Any] = {"since_release": None, "artifacts": [], "work_items": []}


def print_changes(console: Console, changes: dict[str, Any]) -> None:
    """What the release brings: over the release before it, and on each stage since the
    release there now. Nothing for a release without git artifacts."""
    own = changes["own"]
    if not own["artifacts"]:
        return
    since = f"Release {own['since_release']}" if own["since_release"] else "the start"
    items = ", ".join(own["work_items"]) or "none"
    commits = sum(len(a["commits"]) for a in own["artifacts"])
    console.print(f"brings since {since}: {commits} commits; work items: {items}")
    for stage in changes["stages"]:
        there = stage["deployed"]
        if not stage["ahead"]:
            console.print(f"  {stage['stage']}: has {there['release']}, this release or newer")
            continue
        head = f"  {stage['stage']} (has {there['release']})" if there else f"  {stage['stage']}"
        items = ", ".join(stage["work_items"]) or "no work items"
        console.print(f"{head}: {len(stage['commits'])} commits, {items}")
        for commit in stage["commits"][:SHOWN_COMMITS]:
            console.print(
                f"    {commit['sha'][:10]} {commit['subject']} ({commit['author']})",
                highlight=False,
                markup=False,
            )
        if len(stage["commits"]) > SHOWN_COMMITS:
            console.print(f"    … {len(stage['commits']) - SHOWN_COMMITS} more (--json)")


def where(api: Api, args: argparse.Namespace) -> int:
    """On which stages a work item is deployed, and which releases bring it."""
    found = api.get("/work-items", {"item": args.item, "pipeline": args.pipeline})
    if args.json:
        print(json.dumps(found))
        return Exit.OK
    if not found:
        print(f"no release brings {args.item}")
        return Exit.OK
    table = Table(show_edge=False, header_style="bold")
    for column in ("pipeline", "stage", "release there", "since (UTC)", "brought by"):
        table.add_column(column)
    for place in found:
        brought = ", ".join(str(n) for n in place["brought_by"])
        if not place["stages"]:
            table.add_row(place["pipeline"], "(not deployed)", "-", "-", brought)
        for stage in place["stages"]:
            deployed = stage["deployed"]
            table.add_row(
                place["pipeline"],
                stage["stage"],
                deployed["release"],
                render.when(_time(deployed["ended_at"])),
                brought,
            )
    render.console().print(table)
    return Exit.OK


def diff(api: Api, args: argparse.Namespace) -> int:
    """Artifact versions, variables, commits and work items from one release to another."""
    before, after = release_ref(args.before), release_ref(args.after)
    if before.pipeline != after.pipeline:
        raise ValueError(
            f"{before} and {after}: releases of two pipelines; compare releases of one"
        )
    path = f"/releases/{quote(before.pipeline, safe='')}/{before.number}/diff/{after.number}"
    found = api.get(path)
    if args.json:
        print(json.dumps(found))
        return Exit.OK
    console = render.console()
    console.print(f"{before} → {after}", highlight=False)
    for kind in ("artifacts", "variables"):
        for change in found[kind]:
            console.print(
                f"  {kind[:-1]} {change['name']}: {change['before'] or '(none)'} → "
                f"{change['after'] or '(none)'}",
                highlight=False,
                markup=False,
            )
    word = "taken away" if found["backwards"] else "brought"
    console.print(f"  {len(found['commits'])} commits {word}", highlight=False)
    for commit in found["commits"]:
        console.print(
            f"    {commit['sha'][:10]} {commit['subject']} ({commit['author']})",
            highlight=False,
            markup=False,
        )
    console.print(f"  work items {word}: {', '.join(found['work_items']) or 'none'}")
    return Exit.OK


def _time(text: str | None) -> Any:
    from datetime import datetime

    return datetime.fromisoformat(text) if text else None
