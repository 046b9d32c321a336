"""A pipeline's triggers as Temporal Schedules: set when the pipeline is stored, listed
with their last and next runs, paused and resumed.

Each trigger is the Schedule `trigger/<pipeline>/<name>` (visible and pausable in the
Web UI, or with `temporal schedule`), starting a TriggerWorkflow every `poll` (an
artifact trigger) or at its cron times in its time zone (a scheduled one). Storing a
revision sets them: a new trigger's Schedule is created, a changed one updated (a
paused one stays paused), one the revision no longer has deleted.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from activities.calendar import CronExpression, parse_cron
from activities.pipeline_loader import InvalidPipeline
from activities.pipelines import NoStoredPipeline, store_definition, stored_pipeline
from activities.record import Database
from activities.record.stored_pipelines import AppliedRevision
from workflows.pipeline import ArtifactTrigger, Pipeline, ReleaseTrigger, ScheduleTrigger
from workflows.trigger_workflow import TRIGGER_WORKFLOW
from workflows.triggering import TriggerInput


class TriggerView(BaseModel):
    """One trigger as `stageflow triggers P` shows it."""

    name: str
    kind: str = Field(description="artifact or schedule")
    watches: str = Field(description="what it looks at, or when it fires")
    schedule_id: str
    paused: bool = False
    note: str = ""
    last_run: datetime | None = None
    next_run: datetime | None = None
    runs: int = 0
    missing: bool = Field(False, description="no Schedule in Temporal: store the pipeline again")


def schedule_id(pipeline: str, trigger: str) -> str:
    return f"trigger/{pipeline}/{trigger}"


def trigger_schedule(pipeline: Pipeline, trigger: ReleaseTrigger, task_queue: str) -> Schedule:
    """The Schedule of one trigger: a TriggerWorkflow at its times; a firing still running
    when the next is due makes that one skip."""
    name = str(trigger.name)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            TRIGGER_WORKFLOW,
            TriggerInput(pipeline=pipeline.name, trigger=name),
            id=schedule_id(pipeline.name, name),
            task_queue=task_queue,
            static_summary=f"{pipeline.name}: trigger {name} ({watches(trigger)})",
        ),
        spec=_spec(trigger),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


def watches(trigger: ReleaseTrigger) -> str:
    if isinstance(trigger, ScheduleTrigger):
        when = f"cron {trigger.schedule.cron} {trigger.schedule.timezone}"
        return when + (", only if changed" if trigger.schedule.only_if_changed else "")
    branches = trigger.branches
    chosen = ""
    if branches is not None:
        chosen = " on " + (", ".join(branches.include) or "every branch")
        chosen += f" but {', '.join(branches.exclude)}" if branches.exclude else ""
    return f"artifact {trigger.artifact}{chosen}, every {_duration(trigger.poll)}"


def _spec(trigger: ReleaseTrigger) -> ScheduleSpec:
    if isinstance(trigger, ArtifactTrigger):
        return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=trigger.poll)])
    cron = parse_cron(trigger.schedule.cron)
    return ScheduleSpec(calendars=_calendars(cron), time_zone_name=trigger.schedule.timezone)


def _calendars(cron: CronExpression) -> list[ScheduleCalendarSpec]:
    """The cron expression as Temporal calendars. As in Vixie cron, when both day fields
    are restricted either may match: two calendars then, one per day field."""

    def ranges(values: tuple[int, ...]) -> list[ScheduleRange]:
        return [ScheduleRange(value) for value in values]

    every_day, every_weekday = ranges(tuple(range(1, 32))), ranges(tuple(range(7)))
    common = {
        "second": [ScheduleRange(0)],
        "minute": ranges(cron.minutes),
        "hour": ranges(cron.hours),
        "month": ranges(cron.months),
        "comment": cron.text,
    }
    days, weekdays = ranges(cron.days), ranges(cron.weekdays)
    if cron.days_restricted and cron.weekdays_restricted:
        return [
            ScheduleCalendarSpec(day_of_month=days, day_of_week=every_weekday, **common),  # type: ignore[arg-type]
            ScheduleCalendarSpec(day_of_month=every_day, day_of_week=weekdays, **common),  # type: ignore[arg-type]
        ]
    return [ScheduleCalendarSpec(day_of_month=days, day_of_week=weekdays, **common)]  # type: ignore[arg-type]


async def set_triggers(
    client: Client, pipeline: Pipeline, task_queue: str, before: Pipeline | None
) -> None:
    """Make the pipeline's Schedules what its triggers say: create, update (keeping a
    pause), and delete those of `before` (the previous revision) it no longer has."""
    for trigger in pipeline.triggers:
        wanted = trigger_schedule(pipeline, trigger, task_queue)
        ident = schedule_id(pipeline.name, str(trigger.name))
        try:
            await client.create_schedule(ident, wanted)
        except ScheduleAlreadyRunningError:

            def keep_state(given: ScheduleUpdateInput, wanted: Schedule = wanted) -> ScheduleUpdate:
                wanted.state = given.description.schedule.state
                return ScheduleUpdate(schedule=wanted)

            await client.get_schedule_handle(ident).update(keep_state)
    kept = {schedule_id(pipeline.name, str(t.name)) for t in pipeline.triggers}
    gone = {schedule_id(pipeline.name, str(t.name)) for t in (before.triggers if before else [])}
    # Also those an earlier apply left (its Schedules were not all set): the listing is
    # eventually consistent, the previous revision is not.
    prefix = schedule_id(pipeline.name, "")
    gone |= {s.id async for s in await client.list_schedules() if s.id.startswith(prefix)}
    for ident in sorted(gone - kept):
        try:
            await client.get_schedule_handle(ident).delete()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise


async def list_triggers(client: Client, pipeline: Pipeline) -> list[TriggerView]:
    """Each trigger of the stored pipeline, with its Schedule's state and runs."""
    views = []
    for trigger in pipeline.triggers:
        name = str(trigger.name)
        view = TriggerView(
            name=name,
            kind="schedule" if isinstance(trigger, ScheduleTrigger) else "artifact",
            watches=watches(trigger),
            schedule_id=schedule_id(pipeline.name, name),
        )
        try:
            described = await client.get_schedule_handle(view.schedule_id).describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            view.missing = True
            views.append(view)
            continue
        info, state = described.info, described.schedule.state
        view.paused, view.note = state.paused, state.note or ""
        view.runs = info.num_actions
        view.last_run = info.recent_actions[-1].started_at if info.recent_actions else None
        view.next_run = info.next_action_times[0] if info.next_action_times else None
        views.append(view)
    return views


async def pause_trigger(
    client: Client, pipeline: Pipeline, name: str, pause: bool, note: str
) -> None:
    """Pause or resume one trigger's Schedule; KeyError for a trigger it does not have."""
    pipeline.trigger(name)
    handle = client.get_schedule_handle(schedule_id(pipeline.name, name))
    if pause:
        await handle.pause(note=note)
    else:
        await handle.unpause(note=note)


def _duration(value: object) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


async def store_and_set(
    db: Database,
    client: Client,
    definition: tuple[Pipeline, str, str],
    source: Path,
    author: str,
    task_queue: str,
) -> AppliedRevision:
    """Store a definition read from `source` (when it changed) and set its triggers'
    Schedules. A Temporal that does not answer leaves the revision stored: applying
    again sets them."""
    pipeline = definition[0]
    before = await _latest(db, pipeline.name)
    applied = await store_definition(db, definition, source, author)
    try:
        await set_triggers(client, pipeline, task_queue, before)
    except RPCError as err:
        raise TriggersNotSet(
            f"stored {pipeline.name} revision {applied.revision}, but its triggers were not"
            f" set ({err}): apply it again"
        ) from err
    return applied


class TriggersNotSet(RuntimeError):
    """The revision is stored; Temporal did not take its Schedules."""


async def _latest(db: Database, name: str) -> Pipeline | None:
    """The stored pipeline a new revision follows, to know which triggers went."""
    try:
        pipeline, _ = await stored_pipeline(db, name)
    except (NoStoredPipeline, InvalidPipeline):
        return None
    return pipeline
