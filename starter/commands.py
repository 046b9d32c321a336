"""The release commands of the CLI: create a release and act on it through the API, one
function each, printing what the workflows answered.

Who acts is the signed-in person (starter/client.py): the API passes them to the
workflow. Each action carries a request id, so one sent again after a lost answer
is answered once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from starter import render
from starter.client import Api, ApiError, Refused
from starter.exit_codes import Exit
from starter.release_ref import ReleaseRef, release_path, release_ref
from workflows.audit import AuditEvent
from workflows.pipeline import parse_duration
from workflows.release import ReleaseStatus, StageAttempt, StageStatus

FAILED_STATUSES = {StageStatus.FAILED, StageStatus.CANCELED, StageStatus.REJECTED}
POLL = 0.3
# How long a release just created may take to show in the record.
RECORDED_SECONDS = 30.0


def fetch_release(api: Api, ref: ReleaseRef) -> tuple[ReleaseStatus, dict[str, Any]]:
    """The release as the API shows it (recorded, and live where its stages answer), and
    what the API said beside it (`live`, `live_unavailable`)."""
    shown: dict[str, Any] = api.get(release_path(ref))
    live = {key: shown.pop(key, None) for key in ("live", "live_unavailable")}
    return ReleaseStatus.model_validate(shown), live


def parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r}: use KEY=VALUE")
        values[key] = value
    return values


# --- releases ------------------------------------------------------------------------


def create(api: Api, args: argparse.Namespace) -> int:
    """Create a release of a stored pipeline (its latest revision), or of a pipeline file.
    The API reads the file (it runs where the data dir is), so the path goes as an
    absolute one; the pipeline is checked there, and stored when it changed. A name
    that is also a file here is the file."""
    source = (
        {"file": os.path.abspath(args.pipeline)}
        if os.path.isfile(args.pipeline)
        else {"pipeline": args.pipeline}
    )
    if "pipeline" in source and ("/" in args.pipeline or args.pipeline.endswith((".yml", ".yaml"))):
        raise ValueError(f"{args.pipeline}: no such file")
    created = api.post(
        "/releases",
        {
            **source,
            "artifacts": parse_pairs(args.artifact, "--artifact"),
            "variables": parse_pairs(args.var, "--var"),
            "until": args.until,
            "description": args.description,
        },
    )
    pipeline, number, name = created["pipeline"], created["number"], created["name"]
    ref = ReleaseRef(pipeline, number)
    if not args.wait:
        if args.json:
            print(
                json.dumps(
                    {
                        "pipeline": pipeline,
                        "number": number,
                        "name": name,
                        "reference": str(ref),
                        "workflow_id": f"release/{ref}",
                    }
                )
            )
        else:
            print(f"created {pipeline} {name} ({ref})")
        return Exit.OK
    if not args.json:
        print(f"created {pipeline} {name} ({ref})", flush=True)
    status = _wait_settled(api, ref, live=not args.json)
    if args.json:
        print(json.dumps(render.release_json(status.model_dump(mode="json"))))
    else:
        render.console().print(render.release_view(status))
    return _exit_code(status)


def _wait_settled(api: Api, ref: ReleaseRef, live: bool) -> ReleaseStatus:
    """Poll the release until no stage is queued or running, showing progress."""
    status = _first_look(api, ref)
    if not live or not sys.stdout.isatty():
        while not settled(status):
            time.sleep(POLL)
            status, _ = fetch_release(api, ref)
        return status
    with Live(_progress(status), console=render.console(), refresh_per_second=4) as view:
        while not settled(status):
            time.sleep(POLL)
            status, _ = fetch_release(api, ref)
            view.update(_progress(status))
    return status


def _first_look(api: Api, ref: ReleaseRef) -> ReleaseStatus:
    """The new release, once the record has it (its workflow writes it as it starts)."""
    deadline = time.monotonic() + RECORDED_SECONDS
    while True:
        try:
            return fetch_release(api, ref)[0]
        except ApiError as err:
            if err.status != 404 or time.monotonic() >= deadline:
                raise
        time.sleep(POLL)


def settled(status: ReleaseStatus) -> bool:
    """No stage is queued or in progress, and none is due that the release starts by
    itself (the record may show a stage's end a moment before what follows it starts).
    Stages that wait for a person (manual, or past `--until`) count as settled."""
    if any(v.status != StageStatus.NOT_DEPLOYED and not v.status.is_final for v in status.stages):
        return False
    return status.state != "active" or not _due(status)


def _due(status: ReleaseStatus) -> list[str]:
    """The stages the release will start without a person but has not yet: `after
    release` ones, and `after X, Y` ones whose stages have all succeeded; none past
    `--until`."""
    names = [view.name for view in status.stages]
    reach = names.index(status.until) + 1 if status.until in names else len(names)
    succeeded = {v.name for v in status.stages if v.status == StageStatus.SUCCEEDED}
    due = []
    for view in status.stages[:reach]:
        if view.attempts or view.held:
            continue
        if view.trigger == "after release" and "release" not in names:
            due.append(view.name)  # (a stage named `release` makes it `after_stages`)
        elif view.trigger.startswith("after "):
            needed = view.trigger.removeprefix("after ").split(", ")
            if set(needed) <= succeeded:
                due.append(view.name)
    return due


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


# --- actions -------------------------------------------------------------------------


def _act(api: Api, ref: ReleaseRef, what: str, path: str, body: dict[str, Any], json_: bool) -> int:
    """Send one action and print the workflow's verdict: accepted (exit 0), or refused
    and why (exit 2)."""
    try:
        event = api.act(path, body, check=f"stageflow history {ref}")
    except Refused as refused:
        event = refused.event
    return _verdict(ref, what, AuditEvent.model_validate(event), json_)


def _verdict(ref: ReleaseRef | str, what: str, event: AuditEvent, as_json: bool) -> int:
    if as_json:
        print(event.model_dump_json())
    elif event.outcome == "accepted":
        print(f"{ref}: {what} accepted" + (f" ({event.detail})" if event.detail else ""))
    else:
        print(f"error: {ref}: {what} refused: {event.detail}", file=sys.stderr)
    return Exit.OK if event.outcome == "accepted" else Exit.USAGE


def deploy(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    if args.now:
        path = release_path(ref, "stages", args.stage, "deploy-now")
        return _act(api, ref, f"deploy {args.stage} now", path, {}, args.json)
    path = release_path(ref, "stages", args.stage, "deploy")
    return _act(api, ref, f"deploy {args.stage}", path, {}, args.json)


def redeploy(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    path = release_path(ref, "stages", args.stage, "redeploy")
    return _act(api, ref, f"redeploy {args.stage}", path, {}, args.json)


def cancel(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    path = release_path(ref, "stages", args.stage, "cancel")
    return _act(api, ref, f"cancel {args.stage}", path, {}, args.json)


def abandon(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    return _act(
        api, ref, "abandon", release_path(ref, "abandon"), {"reason": args.reason}, args.json
    )


# --- people's decisions --------------------------------------------------------------


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


def approve(api: Api, args: argparse.Namespace) -> int:
    if args.all_mine:
        if args.release or args.stage:
            raise ValueError("--all-mine approves everything waiting on you: give no release")
        return _approve_all_mine(api, args)
    if not (args.release and args.stage):
        raise ValueError("approve needs PIPELINE/NUMBER STAGE (or --all-mine)")
    ref = release_ref(args.release)
    defer = parse_time(args.defer_until) if args.defer_until else None
    phase = "post" if args.post else "pre"
    body = {
        "phase": phase,
        "comment": args.comment,
        "defer_until": defer.isoformat() if defer else None,
    }
    path = release_path(ref, "stages", args.stage, "approve")
    return _act(api, ref, f"approve {args.stage} ({phase}-deployment)", path, body, args.json)


def _approve_all_mine(api: Api, args: argparse.Namespace) -> int:
    waiting = [w for w in api.get("/approvals", {"mine": True}) if w["kind"] == "approval"]
    if not waiting:
        print(f"nothing is waiting on {api.get('/me')['user']}")
        return Exit.OK
    worst: int = Exit.OK
    for item in waiting:
        ref = ReleaseRef(item["pipeline"], item["number"])
        stage, phase = item["stage"], item["phase"]
        path = release_path(ref, "stages", stage, "approve")
        body = {"phase": phase, "comment": args.comment}
        code = _act(api, ref, f"approve {stage} ({phase}-deployment)", path, body, args.json)
        worst = max(worst, code)
    return worst


def reject(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    body = {"phase": "post" if args.post else "pre", "comment": args.comment}
    path = release_path(ref, "stages", args.stage, "reject")
    return _act(api, ref, f"reject {args.stage}", path, body, args.json)


def resume(api: Api, args: argparse.Namespace) -> int:
    """Go on after a manual intervention; after a failed task (guided failure), with what
    to do with it: --retry, --skip or --fail."""
    ref = release_ref(args.release)
    path = release_path(ref, "stages", args.stage, "resume")
    body: dict[str, Any] = {"comment": args.comment}
    what = f"resume {args.stage}"
    if args.choice:
        body["choice"] = args.choice
        what += f" --{args.choice}"
    return _act(api, ref, what, path, body, args.json)


def rollback(api: Api, args: argparse.Namespace) -> int:
    """Redeploy the release that was on the stage before the current one (or --to N)."""
    path = f"/pipelines/{args.pipeline}/stages/{args.stage}/rollback"
    body: dict[str, Any] = {} if args.to is None else {"to": args.to}
    try:
        event = api.act(path, body, check=f"stageflow status {args.pipeline}")
    except Refused as refused:
        event = refused.event
    return _verdict(
        args.pipeline, f"rollback {args.stage}", AuditEvent.model_validate(event), args.json
    )


def hold(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    path = release_path(ref, "stages", args.stage, "hold")
    return _act(api, ref, f"hold {args.stage}", path, {"reason": args.reason}, args.json)


def unhold(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    path = release_path(ref, "stages", args.stage, "unhold")
    return _act(api, ref, f"unhold {args.stage}", path, {}, args.json)


def gates(api: Api, args: argparse.Namespace) -> int:
    """The gate evaluations of the stage's latest deployment (`release show` carries
    them), or with --ignore: skip one check from now on."""
    ref = release_ref(args.release)
    phase = "post" if args.post else "pre"
    if args.ignore:
        path = release_path(ref, "stages", args.stage, "ignore-gate")
        body = {"check": args.ignore, "phase": phase}
        return _act(api, ref, f"ignore gate check {args.ignore!r}", path, body, args.json)
    attempt = _latest_attempt(api, ref, args.stage)
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


def _latest_attempt(api: Api, ref: ReleaseRef, stage: str) -> StageAttempt:
    status, _ = fetch_release(api, ref)
    names = [view.name for view in status.stages]
    if stage not in names:
        raise ValueError(f"release {ref} has no stage {stage!r} (stages: {', '.join(names)})")
    latest = status.stage(stage).latest
    if latest is None:
        raise ValueError(f"stage {stage!r} of {ref} has not been deployed")
    return latest
