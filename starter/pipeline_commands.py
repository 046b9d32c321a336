"""The CLI's stored-pipeline commands: `pipeline apply`, `list`, `show`, `history`, `diff`.

The API stores and reads the revisions (starter/api/routes_pipelines.py); here they
are only asked for and rendered. `pipeline validate` and `schema` stay local: they
need no server.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import Any
from urllib.parse import quote

from rich.table import Table

from starter import render
from starter.client import Api
from starter.exit_codes import Exit


def apply(api: Api, args: argparse.Namespace) -> int:
    """Store the file as the pipeline's next revision, when it changed."""
    if not os.path.isfile(args.file):
        raise ValueError(f"{args.file}: no such file")
    applied = api.post("/pipelines/apply", {"file": os.path.abspath(args.file)})
    if args.json:
        print(json.dumps(applied))
    elif applied["changed"]:
        print(
            f"applied {applied['pipeline']} revision {applied['revision']}"
            f" (sha256 {applied['sha256'][:12]})"
        )
    else:
        print(
            f"{applied['pipeline']} unchanged: revision {applied['revision']}"
            f" by {applied['author']} is the same definition"
        )
    return Exit.OK


def list_pipelines(api: Api, args: argparse.Namespace) -> int:
    found = api.get("/pipelines")
    if args.json:
        print(json.dumps(found))
        return Exit.OK
    if not found:
        print("no pipelines: store one with `stageflow pipeline apply FILE`")
        return Exit.OK
    table = Table(show_edge=False, header_style="bold")
    for column in ("pipeline", "revision", "applied (UTC)", "by", "sha256"):
        table.add_column(column)
    for pipeline in found:
        latest = pipeline["latest"]
        if latest is None:
            table.add_row(pipeline["name"], "-", "-", "-", "(only from releases)")
        else:
            table.add_row(
                pipeline["name"],
                str(latest["revision"]),
                _when(latest["time"]),
                latest["author"],
                latest["sha256"][:12],
            )
    render.console().print(table)
    return Exit.OK


def show(api: Api, args: argparse.Namespace) -> int:
    """A stored revision's text (the latest, or --revision R), as it was applied."""
    stored = api.get(_path(args.pipeline), {"revision": args.revision})
    if args.json:
        print(json.dumps(stored))
        return Exit.OK
    print(
        f"# {stored['pipeline']} revision {stored['revision']}, applied by {stored['author']}"
        f" at {_when(stored['time'])} UTC from {stored['source'] or '(unknown)'}"
    )
    print(stored["text"] if stored["text"] is not None else "# (recorded without its text)")
    return Exit.OK


def history(api: Api, args: argparse.Namespace) -> int:
    found = api.get(_path(args.pipeline, "history"))
    if args.json:
        print(json.dumps(found))
        return Exit.OK
    table = Table(show_edge=False, header_style="bold", title_justify="left")
    table.title = f"{args.pipeline}: revisions"
    for column in ("revision", "applied (UTC)", "by", "sha256", "from"):
        table.add_column(column)
    for revision in found:
        table.add_row(
            str(revision["revision"]),
            _when(revision["time"]),
            revision["author"],
            revision["sha256"][:12],
            revision["source"] or "-",
        )
    render.console().print(table)
    return Exit.OK


def diff(api: Api, args: argparse.Namespace) -> int:
    """The unified diff from revision R1 to R2 (default: the latest)."""
    found = api.get(
        _path(args.pipeline, "diff"),
        {"from_revision": args.from_revision, "to_revision": args.to_revision},
    )
    if args.json:
        print(json.dumps(found))
    elif found["diff"]:
        print(found["diff"], end="")
    else:
        print(
            f"revisions {found['from_revision']} and {found['to_revision']} are the same definition"
        )
    return Exit.OK


def _path(pipeline: str, *rest: str) -> str:
    return "/".join([f"/pipelines/{quote(pipeline, safe='')}", *rest])


def _when(text: Any) -> str:
    return render.when(datetime.fromisoformat(text))


def triggers(api: Api, args: argparse.Namespace) -> int:
    """A pipeline's triggers, their last and next runs; --pause / --resume one."""
    if args.pause or args.resume:
        action, name = ("pause", args.pause) if args.pause else ("resume", args.resume)
        found = api.post(
            f"{_path(args.pipeline, 'triggers', quote(name, safe=''))}/{action}",
            {"reason": args.reason},
        )
    else:
        found = api.get(_path(args.pipeline, "triggers"))
    if args.json:
        print(json.dumps(found))
        return Exit.OK
    if not found:
        print(f"{args.pipeline} has no triggers")
        return Exit.OK
    table = Table(show_edge=False, header_style="bold", title_justify="left")
    table.title = f"{args.pipeline}: triggers"
    for column in ("trigger", "watches", "state", "last run (UTC)", "next run (UTC)", "runs"):
        table.add_column(column)
    for trigger in found:
        state = "missing (apply again)" if trigger["missing"] else "active"
        if trigger["paused"]:
            state = "paused" + (f" ({trigger['note']})" if trigger["note"] else "")
        table.add_row(
            trigger["name"],
            trigger["watches"],
            state,
            _when(trigger["last_run"]) if trigger["last_run"] else "-",
            _when(trigger["next_run"]) if trigger["next_run"] and not trigger["paused"] else "-",
            str(trigger["runs"]),
        )
    render.console().print(table)
    return Exit.OK


def trigger(api: Api, args: argparse.Namespace) -> int:
    """A release now of the latest revision with these artifact versions, as the
    pipeline's trigger on them (what the webhook does)."""
    from starter.commands import parse_pairs

    versions = parse_pairs(args.artifact, "--artifact")
    if not versions:
        raise ValueError("--artifact ALIAS=VERSION: name at least one new version")
    outcome = api.post(_path(args.pipeline, "triggers", "artifact"), {"artifacts": versions})
    if args.json:
        print(json.dumps(outcome))
        return Exit.OK
    for created in outcome["created"]:
        print(f"created {args.pipeline} {created['name']} ({args.pipeline}/{created['number']})")
    for reason in outcome["skipped"]:
        print(f"no release: {reason}")
    return Exit.OK
