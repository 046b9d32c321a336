"""How releases, stages and events look in a terminal (rich) and in `--json`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    # The models, for the views that need them: `release list` renders the API's JSON
    # as it is and stays clear of pydantic's start-up cost.
    from workflows.release import ReleaseStatus, StageView

STATUS_STYLE = {
    "succeeded": "green",
    "partially_succeeded": "yellow",
    "failed": "red",
    "canceled": "magenta",
    "skipped": "dim",
    "rejected": "red",
    "in_progress": "cyan",
    "queued": "blue",
    "not_deployed": "dim",
    "abandoned": "magenta",
}


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def took(duration: timedelta | None) -> str:
    if duration is None:
        return "-"
    seconds = duration.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    from workflows.pipeline import format_duration

    return format_duration(duration)


def next_action(ref: str, view: StageView) -> str:
    """What a person can do next with this stage, as the command that works in its state."""
    from workflows.release import StageStatus

    latest = view.latest
    if view.held and (view.status.is_final or view.status == StageStatus.NOT_DEPLOYED):
        # "held by alice on qa: why" (on a later stage) or "held by alice: why"
        hold = view.held.partition(":")[0].partition(" on ")[2] or view.name
        return f"stageflow unhold {ref} {hold}"
    if (
        view.status == StageStatus.WAITING_FOR_INTERVENTION
        and latest
        and latest.tasks
        and any(t.status.value == "failed" for t in latest.tasks)
    ):
        return f"stageflow resume {ref} {view.name} --retry | --skip | --fail"
    if view.status == StageStatus.WAITING_FOR_APPROVAL:
        pending = [a for a in (latest.approvals if latest else []) if a.status == "pending"]
        post = " --post" if pending and pending[-1].phase == "post" else ""
        return f"stageflow approve {ref} {view.name}{post}"
    if view.status == StageStatus.DEFERRED:
        return f"stageflow deploy {ref} {view.name} --now"
    if view.status == StageStatus.WAITING_FOR_INTERVENTION:
        return f"stageflow resume {ref} {view.name}"
    if view.status == StageStatus.EVALUATING_GATES:
        post = " --post" if latest and latest.gates and latest.gates[-1].phase == "post" else ""
        return f"stageflow gates {ref} {view.name}{post}"
    if not view.status.is_final and view.status != StageStatus.NOT_DEPLOYED:
        return f"stageflow cancel {ref} {view.name}"  # queued, in progress, scheduled
    if view.status == StageStatus.NOT_DEPLOYED:
        return f"stageflow deploy {ref} {view.name}"
    return f"stageflow redeploy {ref} {view.name}"


def release_json(data: dict[str, Any]) -> dict[str, Any]:
    """A release for `--json`: the API's JSON of it (ReleaseStatus, as the API shows it),
    with its reference and each stage's latest attempt in brief."""
    data = dict(data)
    data["reference"] = f"{data['pipeline']}/{data['number']}"
    for stage in data["stages"]:
        latest = stage["attempts"][-1] if stage["attempts"] else None
        stage["attempt"] = latest["attempt"] if latest else 0
        stage["started_at"] = latest["started_at"] if latest else None
        stage["ended_at"] = latest["ended_at"] if latest else None
        stage["triggered_by"] = latest["triggered_by"] if latest else None
    return data


def release_view(status: ReleaseStatus) -> Group:
    ref = f"{status.pipeline}/{status.number}"
    header = Table.grid(padding=(0, 2))
    header.add_row(Text(f"{status.pipeline} {status.name}", style="bold"), Text(ref, style="dim"))
    header.add_row("status", styled(status.status))
    header.add_row("created", f"{when(status.created_at)} UTC by {status.created_by}")
    if status.description:
        header.add_row("description", status.description)
    if status.until:
        header.add_row("until", status.until)
    for artifact in status.artifacts:
        extra = f" ({artifact.commit[:10]})" if artifact.commit else ""
        header.add_row(
            f"artifact {artifact.alias}", f"{artifact.version}{extra}  [dim]{artifact.type}[/dim]"
        )
    stages = Table(show_edge=False, header_style="bold")
    for column in ("stage", "status", "attempt", "started", "duration", "by", "next"):
        stages.add_column(column)
    for view in status.stages:
        latest = view.latest
        duration = None
        if latest and latest.ended_at:
            duration = latest.ended_at - latest.started_at
        stages.add_row(
            view.name,
            styled(view.status.value),
            str(latest.attempt) if latest else "-",
            when(latest.started_at) if latest else "-",
            took(duration),
            f"{latest.triggered_by} ({latest.reason})" if latest else view.trigger,
            next_action(ref, view) if status.state == "active" else "",
        )
    parts: list[Any] = [header, Text(""), stages]
    for view in status.stages:
        latest = view.latest
        if view.held:
            parts.append(Text(f"{view.name}: {view.held}", style="yellow"))
        if latest and latest.waiting_reason.startswith("queued"):
            parts.append(Text(f"{view.name}: {latest.waiting_reason}", style="yellow"))
        if latest and latest.message:
            parts.append(Text(f"{view.name}: {latest.message}", style="yellow"))
    return Group(*parts)


def tasks_table(status: ReleaseStatus) -> Table:
    """Every task of every deployed stage's latest attempt: for the live view."""
    table = Table(show_edge=False, header_style="bold")
    for column in ("stage", "task", "status", "agent", "tries", "duration"):
        table.add_column(column)
    for view in status.stages:
        latest = view.latest
        if latest is None:
            continue
        for run in latest.tasks:
            table.add_row(
                view.name,
                run.task if run.job == "job" else f"{run.job}/{run.task}",
                styled(run.status.value),
                run.agent or "-",
                str(run.tries or "-"),
                took(run.duration),
            )
    return table


def history_table(events: Sequence[dict[str, Any]]) -> Table:
    """The audit trail as the API gives it (TrailEvent of activities/record/views.py)."""
    table = Table(show_edge=False, header_style="bold")
    for column in ("time (UTC)", "who", "action", "stage", "outcome", "detail"):
        table.add_column(column)
    for event in events:
        # How the person signed in, for a request that came through the API.
        via = event.get("via")
        table.add_row(
            when(datetime.fromisoformat(event["time"])),
            f"{event['actor']} ({via})" if via else event["actor"],
            event["action"],
            event.get("stage") or "",
            Text(event["outcome"], style="green" if event["outcome"] == "accepted" else "red"),
            event.get("detail") or "",
        )
    return table


def list_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for column in ("release", "name", "status", "created (UTC)", "by", "stages"):
        table.add_column(column)
    for row in rows:
        stages = Text()
        for index, stage in enumerate(row["stages"]):
            if index:
                stages.append("  ")
            stages.append(f"{stage['name']}:")
            stages.append_text(styled(stage["status"]))
        table.add_row(
            f"{row['pipeline']}/{row['number']}",
            row["name"],
            styled(row["status"]),
            row["created_at"][:19].replace("T", " ") if row.get("created_at") else "-",
            row.get("created_by") or "-",
            stages,
        )
    return table


def console(stderr: bool = False) -> Console:
    """A console; when output is not a terminal (pipes, tests) lines are not cut at 80."""
    out = sys.stderr if stderr else sys.stdout
    width = None if out.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)
