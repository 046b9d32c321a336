"""Deployment calendars: when may a deployment start, given its schedule and freezes?

A `Schedule` opens a window at a local time on some weekdays; a `Freeze` blocks
starts for a `duration` from every match of a 5-field cron expression. Both are
read in their own time zone. Everything here is a pure function of its inputs
(no I/O, no wall clock) except `plan_start`, the activity that wraps
`plan_start_time` for the workflow. `calendar_problems` walks the same way when
a pipeline is validated, so what would fail the plan is refused before a deployment.

Time-zone rules, used the same way for schedules and freezes:

- a local time that does not exist that day (the spring-forward gap) happens at
  the end of the gap, the first valid local instant after it;
- a local time that happens twice (the fall-back fold) is a schedule window at
  its first occurrence only, while a freeze's cron matches both occurrences
  (each is an instant whose local clock shows a matching time);
- a freeze's `duration` is elapsed time, not local clock time.

All datetimes in and out are timezone-aware; results are in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.activity_refs import PLAN_START
from workflows.control_api import StartPlan, StartPlanRequest, StartWait
from workflows.pipeline import WEEKDAYS, Freeze, Schedule, format_duration

# --- cron expressions -------------------------------------------------------------------

_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DAY_NAMES = {name: number for number, name in enumerate(("sun",) + WEEKDAYS[:-1])}

# (name, lowest, highest, names) for the five fields, in order.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DAY_NAMES),
)
_VALUE = re.compile(r"\d+|[a-z]+")


@dataclass(frozen=True)
class CronExpression:
    """A parsed 5-field cron expression (minute hour day-of-month month day-of-week).

    Each field holds its matching values in ascending order; `weekdays` uses
    0 = Sunday .. 6 = Saturday. As in Vixie cron, when both day fields are
    restricted a day matches if EITHER matches; a field counts as unrestricted
    when it starts with `*` (so `*/2` is unrestricted, also as in Vixie cron).
    """

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    days_restricted: bool
    weekdays_restricted: bool

    def matches_day(self, day: date) -> bool:
        """Whether the month and the day fields allow this calendar day."""
        if day.month not in self.months:
            return False
        by_date = day.day in self.days
        by_weekday = day.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return by_date or by_weekday
        return by_date and by_weekday

    def matches(self, when: datetime) -> bool:
        """Whether a local wall-clock time (its minute; seconds ignored) matches."""
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and self.matches_day(when.date())
        )

    def latest_at_or_before(self, ceiling: datetime, floor: datetime) -> datetime | None:
        """The latest matching whole-minute wall time in [floor, ceiling] (naive, local).

        Steps back a day at a time over days the day fields rule out, so a search
        over weeks costs a few microseconds per day.
        """
        day = ceiling.date()
        while datetime.combine(day, time(23, 59)) >= floor:
            if self.matches_day(day):
                for hour in reversed(self.hours):
                    if day == ceiling.date() and hour > ceiling.hour:
                        continue
                    for minute in reversed(self.minutes):
                        wall = datetime(day.year, day.month, day.day, hour, minute)
                        if wall <= ceiling:
                            return wall if wall >= floor else None
            day -= timedelta(days=1)
        return None


@lru_cache(maxsize=256)
def parse_cron(text: str) -> CronExpression:
    """Parse a 5-field cron expression; a ValueError names the field that is wrong.

    Each field is `*` or a comma list of `n`, `a-b`, `*/s`, `a-b/s` or `a/s`
    (from a to the field's end). Months take jan..dec and days of the week
    sun..sat (case-insensitive); day-of-week 0 and 7 are both Sunday, and a range
    may end at `sun` (`mon-sun`).
    """
    parts = text.split()
    if len(parts) != len(_FIELDS):
        raise ValueError(
            f"cron {text!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}"
        )
    values = [_parse_field(text, part, *field) for part, field in zip(parts, _FIELDS, strict=True)]
    weekdays = tuple(sorted({value % 7 for value in values[4]}))
    return CronExpression(
        text=text,
        minutes=values[0],
        hours=values[1],
        days=values[2],
        months=values[3],
        weekdays=weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )


def _parse_field(
    text: str, part: str, field: str, low: int, high: int, names: dict[str, int]
) -> tuple[int, ...]:
    def fail(problem: str) -> ValueError:
        return ValueError(f"cron {text!r}: {field} field {part!r}: {problem}")

    def number(token: str, range_end: bool = False) -> int:
        token = token.lower()
        if not _VALUE.fullmatch(token):
            raise fail(f"{token!r} is not a number" + (" or a name" if names else ""))
        if token.isdigit():
            value = int(token)
        elif token in names:
            value = names[token]
            # `mon-sun`: Sunday as the end of a range is 7, not 0.
            if range_end and field == "day-of-week" and value == 0:
                value = 7
        else:
            known = f" (one of {', '.join(names)})" if names else ""
            raise fail(f"{token!r} is not a known value{known}")
        if not low <= value <= high:
            raise fail(f"{value} is out of range {low}-{high}")
        return value

    top = 6 if field == "day-of-week" else high  # where `*` and `a/s` end: 7 is Sunday again
    selected: set[int] = set()
    for item in part.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise fail(f"step {step_text!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, top
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = number(first), number(last, range_end=True)
            if start > end:
                raise fail(f"range {base!r} runs backwards")
        elif base:
            start = number(base)
            end = top if slash else start
        else:
            raise fail("empty value")
        selected.update(range(start, end + 1, step))
    return tuple(sorted(selected))


# --- time zones -------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:
        raise ZoneInfoNotFoundError(f"unknown time zone {name!r}") from None


def _require_aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")
    return value.astimezone(UTC)


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always has one
    return offset


def _local(instant: datetime, offset: timedelta) -> datetime:
    """The naive wall-clock time of a UTC instant at a known offset."""
    return instant.replace(tzinfo=None) + offset


def _transition(zone: ZoneInfo, early: datetime, late: datetime) -> datetime:
    """The first instant in (early, late] that has `late`'s offset (offsets differ at the ends)."""
    target = _offset(zone, late)
    low, high = 0, (late - early) // timedelta(microseconds=1)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset(zone, early + timedelta(microseconds=middle)) == target:
            high = middle
        else:
            low = middle
    return early + timedelta(microseconds=high)


# Offsets are probed this far apart when looking back for a change; two changes
# within one probe that return to the same offset would go unnoticed (none exist).
_PROBE = timedelta(days=1)


def _offset_since(zone: ZoneInfo, instant: datetime, floor: datetime) -> datetime | None:
    """When the offset in force at `instant` took effect, if after `floor`; else None."""
    offset = _offset(zone, instant)
    late = instant
    while late > floor:
        early = max(late - _PROBE, floor)
        if _offset(zone, early) != offset:
            return _transition(zone, early, late)
        late = early
    return None


def _instant_of(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a naive local time: its first occurrence, or the gap's end."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap fold=0 reads the time with the offset before the change and fold=1
    # with the one after; the change itself lies between the two instants.
    other = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return _transition(zone, min(first, other), max(first, other))


# --- schedules and freezes --------------------------------------------------------------


def next_schedule_start(schedule: Schedule, after: datetime) -> datetime:
    """The earliest instant at or after `after` that opens one of the schedule's windows.

    A window opens at `schedule.time` on each of `schedule.days`, local time in
    `schedule.timezone`. Returns a UTC datetime.
    """
    after = _require_aware(after, "after")
    if not schedule.days:
        raise ValueError("the schedule has no days")
    zone = _zone(schedule.timezone)
    hour, minute = (int(part) for part in schedule.time.split(":"))
    first_day = after.astimezone(zone).date() - timedelta(days=1)
    candidates = []
    # Nine days cover a week of weekdays from the day before `after`'s local date.
    for offset in range(10):
        day = first_day + timedelta(days=offset)
        if WEEKDAYS[day.weekday()] not in schedule.days:
            continue
        opens = _instant_of(datetime(day.year, day.month, day.day, hour, minute), zone)
        if opens >= after:
            candidates.append(opens)
    if not candidates:
        raise ValueError(f"no schedule window found after {after.isoformat()}")
    return min(candidates)


def _latest_freeze_start(
    cron: CronExpression, zone: ZoneInfo, floor: datetime, at: datetime
) -> datetime | None:
    """The latest instant t with floor < t <= at whose local time matches `cron`.

    Walks back through the spans of constant UTC offset: within one span local
    time is UTC plus a constant, so the latest matching local time is the latest
    matching instant. A matching local time inside a spring-forward gap counts
    as the instant the gap ends.
    """
    ceiling = at
    while ceiling > floor:
        offset = _offset(zone, ceiling)
        since = _offset_since(zone, ceiling, floor)
        span_start = since if since is not None else floor
        wall = cron.latest_at_or_before(_local(ceiling, offset), _local(span_start, offset))
        if wall is not None:
            start = (wall - offset).replace(tzinfo=UTC)
            return start if start > floor else None
        if since is None:
            return None
        before = _offset(zone, since - timedelta(microseconds=1))
        if before < offset:
            skipped = cron.latest_at_or_before(
                _local(since, offset) - timedelta(microseconds=1), _local(since, before)
            )
            if skipped is not None:
                return since
        ceiling = since - timedelta(microseconds=1)
    return None


def freeze_end(freeze: Freeze, at: datetime) -> datetime | None:
    """When the freeze that covers `at` ends (UTC), or None when no freeze window covers it.

    Each cron match t (local time in `freeze.timezone`) freezes [t, t + duration):
    the end is exclusive. When windows overlap, the latest end wins.
    """
    at = _require_aware(at, "at")
    cron = parse_cron(freeze.cron)
    if freeze.duration <= timedelta(0):
        return None
    start = _latest_freeze_start(cron, _zone(freeze.timezone), at - freeze.duration, at)
    return None if start is None else start + freeze.duration


# How many schedule/freeze moves plan_start_time makes before it gives up.
MAX_PLAN_STEPS = 1000
# `never_starts` looks this far past the longest freeze: within a year every cron
# pattern and every zone's clock changes come round again (leap days and weekday/date
# coincidences aside). MAX_COVERAGE_STEPS bounds the moves it makes on the way.
COVERAGE_HORIZON = timedelta(days=366)
MAX_COVERAGE_STEPS = 20_000


def plan_start_time(schedule: Schedule | None, freezes: list[Freeze], now: datetime) -> StartPlan:
    """The earliest start at or after `now` that is in a schedule window and in no freeze.

    Alternates: move to the next schedule window, then past any freeze that
    covers it, until neither moves. Each move is recorded as a `StartWait`.
    Raises ValueError when the freezes cover every window for MAX_PLAN_STEPS
    moves, or when a cron expression or time is invalid.
    """
    now = _require_aware(now, "now")
    _check_calendar(schedule, freezes)
    waits: list[StartWait] = []
    start, _ = _earliest_start(schedule, freezes, now, MAX_PLAN_STEPS, waits=waits)
    if start is None:
        raise ValueError(
            f"no start time found after {MAX_PLAN_STEPS} steps from {now.isoformat()}: "
            "the freezes seem to cover every schedule window"
        )
    return StartPlan(start_at=start, waits=waits)


def never_starts(schedule: Schedule | None, freezes: list[Freeze], since: datetime) -> bool:
    """Whether no deployment could ever start: from `since` on, every instant (with a
    schedule, every window) lies inside a freeze.

    Walks as `plan_start_time` does, until a year past the longest freeze
    (COVERAGE_HORIZON). A walk that needs more than MAX_COVERAGE_STEPS moves to
    get there (windows of a few minutes chained for weeks) answers False: this is
    for refusing a pipeline, so it says True only when it has shown it. Raises
    ValueError (or ZoneInfoNotFoundError) for an invalid cron expression or zone.
    """
    since = _require_aware(since, "since")
    _check_calendar(schedule, freezes)
    if not freezes:
        return False
    until = since + max(freeze.duration for freeze in freezes) + COVERAGE_HORIZON
    start, reached = _earliest_start(schedule, freezes, since, MAX_COVERAGE_STEPS, until=until)
    return start is None and reached > until


@dataclass(frozen=True)
class CalendarProblem:
    """Why `plan_start` would refuse a stage's schedule and freezes.

    `path` is inside the stage, e.g. `("freezes", 1, "cron")` or `("schedule",)`.
    """

    path: tuple[str | int, ...]
    message: str


def calendar_problems(
    schedule: Schedule | None, freezes: list[Freeze], since: datetime
) -> list[CalendarProblem]:
    """What would fail a stage's start plan, found before any deployment: invalid cron
    expressions and unknown time zones, freezes that cover all time, a schedule whose
    every window lies inside the freezes. Empty when a deployment can start."""
    problems = []
    if schedule is not None:
        problems += _zone_problems(("schedule", "timezone"), schedule.timezone)
    for index, freeze in enumerate(freezes):
        try:
            parse_cron(freeze.cron)
        except ValueError as err:
            problems.append(CalendarProblem(("freezes", index, "cron"), str(err)))
        problems += _zone_problems(("freezes", index, "timezone"), freeze.timezone)
    if problems:
        return problems
    never = "a deployment could never start"
    if never_starts(None, freezes, since):
        return [CalendarProblem(("freezes",), f"the freezes cover all time: {never}")]
    if schedule is not None and never_starts(schedule, freezes, since):
        message = f"every window of the schedule lies inside a freeze: {never}"
        return [CalendarProblem(("schedule",), message)]
    return []


def cron_problems(cron: str, timezone: str) -> list[CalendarProblem]:
    """What is wrong with a scheduled trigger's `cron` and `timezone` (paths below it)."""
    problems = []
    try:
        parse_cron(cron)
    except ValueError as err:
        problems.append(CalendarProblem(("cron",), str(err)))
    return problems + _zone_problems(("timezone",), timezone)


def _zone_problems(path: tuple[str | int, ...], name: str) -> list[CalendarProblem]:
    try:
        _zone(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a key at all, e.g. `/UTC`
        return [CalendarProblem(path, f"unknown time zone {name!r}")]
    return []


def _check_calendar(schedule: Schedule | None, freezes: list[Freeze]) -> None:
    """Fail on a bad freeze or zone even when the walk never reaches it."""
    if schedule is not None:
        _zone(schedule.timezone)
    for freeze in freezes:
        parse_cron(freeze.cron)
        _zone(freeze.timezone)


def _earliest_start(
    schedule: Schedule | None,
    freezes: list[Freeze],
    now: datetime,
    max_steps: int,
    until: datetime | None = None,
    waits: list[StartWait] | None = None,
) -> tuple[datetime | None, datetime]:
    """The walk of `plan_start_time`: (the start, where the walk got to).

    The start is None when `max_steps` moves did not find one, or when the walk
    got past `until` inside a freeze. Each move is appended to `waits`, if given.
    """
    candidate = now
    for _ in range(max_steps):
        if until is not None and candidate > until:
            return None, candidate
        if schedule is not None:
            opens = next_schedule_start(schedule, candidate)
            if opens != candidate:
                candidate = opens
                if waits is not None:
                    detail = _schedule_detail(schedule)
                    waits.append(StartWait(reason="schedule", until=opens, detail=detail))
        ends = [(end, freeze) for freeze in freezes if (end := freeze_end(freeze, candidate))]
        if not ends:
            return candidate, candidate
        end, freeze = max(ends, key=lambda pair: pair[0])
        candidate = end
        if waits is not None:
            waits.append(StartWait(reason="freeze", until=end, detail=_freeze_detail(freeze, end)))
    return None, candidate


def _schedule_detail(schedule: Schedule) -> str:
    return f"next window {_day_list(schedule.days)} {schedule.time} {schedule.timezone}"


def _day_list(days: Sequence[str]) -> str:
    """`mon-fri`, `mon, wed` or `mon-wed, sat`: runs of three or more days as a range."""
    indexes = sorted({WEEKDAYS.index(day) for day in days})
    runs: list[list[int]] = []
    for index in indexes:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    parts: list[str] = []
    for run in runs:
        if len(run) >= 3:
            parts.append(f"{WEEKDAYS[run[0]]}-{WEEKDAYS[run[-1]]}")
        else:
            parts.extend(WEEKDAYS[index] for index in run)
    return ", ".join(parts)


def _freeze_detail(freeze: Freeze, end: datetime) -> str:
    text = (
        f"freeze {freeze.cron!r} for {format_duration(freeze.duration)} ({freeze.timezone}) "
        f"ends {end:%Y-%m-%d %H:%M} UTC"
    )
    if freeze.timezone != "UTC":
        local = end.astimezone(_zone(freeze.timezone))
        text += f" ({local:%Y-%m-%d %H:%M} {freeze.timezone})"
    return text


# --- the activity -----------------------------------------------------------------------


@activity.defn(name=PLAN_START.name)
async def plan_start(request: StartPlanRequest) -> StartPlan:
    """When may this deployment start, given its schedule and freezes?

    An activity, not workflow code, although it is a pure computation: time-zone
    rules come from the machine's tzdata, which may differ between the worker
    that first ran the workflow and one that replays it (or change with an
    update). The activity's result is kept in the workflow's history, so every
    replay sees the same plan. `request.now` is the workflow's time; the wall
    clock is never read. A naive `now` is taken as UTC.

    Raises a non-retryable `InvalidSchedule` for an unknown time zone, an
    invalid cron expression, or freezes that cover every schedule window.
    """
    now = request.now if request.now.tzinfo is not None else request.now.replace(tzinfo=UTC)
    try:
        return plan_start_time(request.schedule, request.freezes, now)
    except ZoneInfoNotFoundError as err:
        raise ApplicationError(
            err.args[0] if err.args else "unknown time zone",
            type="InvalidSchedule",
            non_retryable=True,
        ) from err
    except ValueError as err:
        raise ApplicationError(str(err), type="InvalidSchedule", non_retryable=True) from err
