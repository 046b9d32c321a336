"""Deployment calendars: cron matching, schedule windows, freezes, the start plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from activities.calendar import (
    MAX_PLAN_STEPS,
    CalendarProblem,
    calendar_problems,
    freeze_end,
    never_starts,
    next_schedule_start,
    parse_cron,
    plan_start,
    plan_start_time,
)
from workflows.control_api import StartPlanRequest
from workflows.pipeline import Freeze, Schedule


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


WEEKEND_FREEZE = Freeze(cron="0 18 * * fri", duration="62h")  # Friday 18:00 -> Monday 08:00

# --- cron -------------------------------------------------------------------------------


def test_cron_fields_expand_lists_ranges_and_steps() -> None:
    cron = parse_cron("*/15 9-17/4 1,15,31 */3 1-5")
    assert cron.minutes == (0, 15, 30, 45)
    assert cron.hours == (9, 13, 17)
    assert cron.days == (1, 15, 31)
    assert cron.months == (1, 4, 7, 10)
    assert cron.weekdays == (1, 2, 3, 4, 5)


def test_cron_star_and_start_with_step() -> None:
    cron = parse_cron("* * * * *")
    assert cron.minutes == tuple(range(60))
    assert cron.hours == tuple(range(24))
    assert cron.days == tuple(range(1, 32))
    assert cron.months == tuple(range(1, 13))
    assert cron.weekdays == tuple(range(7))
    assert parse_cron("5/20 * * * *").minutes == (5, 25, 45)


def test_cron_month_and_weekday_names_are_case_insensitive() -> None:
    cron = parse_cron("0 0 * JAN,Mar-may,dec Mon-FRI")
    assert cron.months == (1, 3, 4, 5, 12)
    assert cron.weekdays == (1, 2, 3, 4, 5)
    assert parse_cron("0 0 * * sat,sun").weekdays == (0, 6)


def test_cron_sunday_is_0_and_7_and_may_end_a_range() -> None:
    assert parse_cron("0 0 * * 0").weekdays == parse_cron("0 0 * * 7").weekdays == (0,)
    assert parse_cron("0 0 * * 5-7").weekdays == (0, 5, 6)
    assert parse_cron("0 0 * * mon-sun").weekdays == tuple(range(7))
    assert parse_cron("0 0 * * sun-sat").weekdays == tuple(range(7))


def test_cron_matches_local_wall_clock_minutes() -> None:
    cron = parse_cron("30 18 * * fri")
    assert cron.matches(datetime(2026, 12, 4, 18, 30))  # a Friday
    assert cron.matches(datetime(2026, 12, 4, 18, 30, 59))
    assert not cron.matches(datetime(2026, 12, 4, 18, 31))
    assert not cron.matches(datetime(2026, 12, 5, 18, 30))  # Saturday


def test_cron_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    either = parse_cron("0 0 13 * fri")
    assert either.matches(datetime(2026, 2, 13))  # Friday the 13th
    assert either.matches(datetime(2026, 8, 13))  # a Thursday, by its date
    assert either.matches(datetime(2026, 8, 14))  # a Friday, by its weekday
    assert not either.matches(datetime(2026, 8, 15))

    only_fridays = parse_cron("0 0 * * fri")
    assert not only_fridays.matches(datetime(2026, 8, 13))
    only_the_13th = parse_cron("0 0 13 * *")
    assert not only_the_13th.matches(datetime(2026, 8, 14))


def test_cron_day_field_starting_with_star_is_unrestricted_as_in_vixie_cron() -> None:
    both = parse_cron("0 0 */2 * fri")  # odd days AND Fridays
    assert both.matches(datetime(2026, 8, 7))  # Friday the 7th
    assert not both.matches(datetime(2026, 8, 14))  # Friday the 14th
    assert not both.matches(datetime(2026, 8, 9))  # Sunday the 9th


def test_cron_month_restricts_both_day_rules() -> None:
    cron = parse_cron("0 0 1 jan mon")
    assert cron.matches(datetime(2026, 1, 5))  # a Monday in January
    assert not cron.matches(datetime(2026, 2, 1))
    assert not cron.matches(datetime(2026, 2, 2))  # a Monday in February


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("* * * *", "5 fields"),
        ("* * * * * *", "5 fields"),
        ("60 * * * *", "minute"),
        ("-1 * * * *", "minute"),
        ("*/0 * * * *", "minute"),
        ("1,,2 * * * *", "minute"),
        ("1-2-3 * * * *", "minute"),
        ("*-5 * * * *", "minute"),
        ("5-1 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* */x * * *", "hour"),
        ("* * 0 * *", "day-of-month"),
        ("* * 32 * *", "day-of-month"),
        ("* * * 13 *", "month"),
        ("* * * foo *", "month"),
        ("* * * mon *", "month"),
        ("* * * * 8", "day-of-week"),
        ("* * * * funday", "day-of-week"),
        ("* * * * fri-mon", "day-of-week"),
        ("* * * * jan", "day-of-week"),
    ],
)
def test_invalid_cron_raises_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_cron(text)


# --- schedule windows -------------------------------------------------------------------


def test_weekday_schedule_from_friday_evening_opens_on_monday() -> None:
    schedule = Schedule(days=["mon", "tue", "wed", "thu", "fri"], time="03:00")
    assert next_schedule_start(schedule, utc(2026, 12, 4, 19, 0)) == utc(2026, 12, 7, 3, 0)


def test_schedule_later_the_same_day() -> None:
    schedule = Schedule(time="03:00")
    assert next_schedule_start(schedule, utc(2026, 12, 8, 1, 15)) == utc(2026, 12, 8, 3, 0)


def test_schedule_exactly_at_the_window_returns_now() -> None:
    schedule = Schedule(time="03:00")
    now = utc(2026, 12, 8, 3, 0)
    assert next_schedule_start(schedule, now) == now
    assert next_schedule_start(schedule, now + timedelta(microseconds=1)) == utc(2026, 12, 9, 3)


def test_schedule_in_its_own_time_zone() -> None:
    schedule = Schedule(days=["mon", "tue"], time="03:00", timezone="Europe/Berlin")
    # 03:00 CET is 02:00 UTC; Sunday evening UTC is already Monday 00:30 in Berlin.
    assert next_schedule_start(schedule, utc(2026, 12, 6, 23, 30)) == utc(2026, 12, 7, 2, 0)
    assert next_schedule_start(schedule, utc(2026, 12, 8, 2, 1)) == utc(2026, 12, 14, 2, 0)


def test_schedule_time_in_the_spring_gap_opens_when_the_gap_ends() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens.
    schedule = Schedule(days=["sun"], time="02:30", timezone="Europe/Berlin")
    assert next_schedule_start(schedule, utc(2026, 3, 28, 12, 0)) == utc(2026, 3, 29, 1, 0)


def test_schedule_time_in_the_autumn_fold_opens_at_its_first_occurrence() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    schedule = Schedule(time="02:30", timezone="Europe/Berlin")
    assert next_schedule_start(schedule, utc(2026, 10, 24, 12, 0)) == utc(2026, 10, 25, 0, 30)
    # After the first 02:30 the second one is no window: the next is Monday's.
    assert next_schedule_start(schedule, utc(2026, 10, 25, 0, 31)) == utc(2026, 10, 26, 1, 30)


def test_daily_berlin_window_moves_an_hour_earlier_in_utc_across_the_spring_change() -> None:
    schedule = Schedule(time="03:00", timezone="Europe/Berlin")  # every day
    opens = []
    moment = utc(2026, 3, 27, 12, 0)
    for _ in range(4):
        moment = next_schedule_start(schedule, moment)
        opens.append(moment)
        moment += timedelta(minutes=1)
    assert opens == [
        utc(2026, 3, 28, 2, 0),
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 1, 0),
        utc(2026, 3, 31, 1, 0),
    ]


def test_schedule_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_schedule_start(Schedule(time="03:00"), datetime(2026, 12, 8, 1, 0))


# --- freezes ----------------------------------------------------------------------------


def test_freeze_covers_friday_evening_to_monday_morning() -> None:
    monday_8 = utc(2026, 12, 7, 8, 0)
    assert freeze_end(WEEKEND_FREEZE, utc(2026, 12, 4, 17, 59)) is None
    assert freeze_end(WEEKEND_FREEZE, utc(2026, 12, 4, 18, 0)) == monday_8
    assert freeze_end(WEEKEND_FREEZE, utc(2026, 12, 5, 12, 0)) == monday_8
    assert freeze_end(WEEKEND_FREEZE, monday_8 - timedelta(microseconds=1)) == monday_8


def test_freeze_end_is_exclusive() -> None:
    assert freeze_end(WEEKEND_FREEZE, utc(2026, 12, 7, 8, 0)) is None
    assert freeze_end(WEEKEND_FREEZE, utc(2026, 12, 9, 12, 0)) is None


def test_freeze_in_a_local_time_zone() -> None:
    berlin = Freeze(cron="0 18 * * fri", duration="62h", timezone="Europe/Berlin")
    # 18:00 CET is 17:00 UTC; the window ends Monday 08:00 CET, 07:00 UTC.
    assert freeze_end(berlin, utc(2026, 12, 4, 16, 59)) is None
    assert freeze_end(berlin, utc(2026, 12, 4, 17, 0)) == utc(2026, 12, 7, 7, 0)
    assert freeze_end(berlin, utc(2026, 12, 6, 23, 30)) == utc(2026, 12, 7, 7, 0)
    assert freeze_end(berlin, utc(2026, 12, 7, 7, 0)) is None


def test_freeze_duration_is_elapsed_time_across_a_clock_change() -> None:
    berlin = Freeze(cron="0 18 * * fri", duration="62h", timezone="Europe/Berlin")
    # Friday 2026-03-27 18:00 CET = 17:00 UTC; 62 hours later is 07:00 UTC = 09:00 CEST.
    assert freeze_end(berlin, utc(2026, 3, 28, 0, 0)) == utc(2026, 3, 30, 7, 0)


def test_freeze_cron_time_in_the_spring_gap_starts_when_the_gap_ends() -> None:
    berlin = Freeze(cron="30 2 * * sun", duration="1h", timezone="Europe/Berlin")
    assert freeze_end(berlin, utc(2026, 3, 29, 0, 59)) is None
    assert freeze_end(berlin, utc(2026, 3, 29, 1, 0)) == utc(2026, 3, 29, 2, 0)
    assert freeze_end(berlin, utc(2026, 3, 29, 1, 30)) == utc(2026, 3, 29, 2, 0)


def test_freeze_cron_time_in_the_autumn_fold_matches_both_occurrences() -> None:
    berlin = Freeze(cron="30 2 25 10 *", duration="30m", timezone="Europe/Berlin")
    assert freeze_end(berlin, utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 25, 1, 0)  # CEST
    assert freeze_end(berlin, utc(2026, 10, 25, 1, 15)) is None
    assert freeze_end(berlin, utc(2026, 10, 25, 1, 45)) == utc(2026, 10, 25, 2, 0)  # CET


def test_overlapping_freeze_windows_end_with_the_latest() -> None:
    hourly = Freeze(cron="0 * * * *", duration="90m")
    assert freeze_end(hourly, utc(2026, 12, 8, 10, 15)) == utc(2026, 12, 8, 11, 30)


def test_two_week_freeze_is_searched_quickly() -> None:
    every_minute = Freeze(cron="* * * * *", duration="14d")
    at = utc(2026, 12, 8, 10, 15, 30)
    assert freeze_end(every_minute, at) == utc(2026, 12, 22, 10, 15)
    monthly = Freeze(cron="0 0 1 * *", duration="14d", timezone="Europe/Berlin")
    assert freeze_end(monthly, utc(2026, 12, 10, 12, 0)) == utc(2026, 12, 14, 23, 0)
    assert freeze_end(monthly, utc(2026, 12, 20, 12, 0)) is None
    never = Freeze(cron="0 0 30 2 *", duration="14d", timezone="Europe/Berlin")
    assert freeze_end(never, utc(2026, 3, 5, 12, 0)) is None
    # Looking back across the spring change: 15 March 00:00 CET is 14 March 23:00 UTC.
    ides = Freeze(cron="0 0 15 3 *", duration="20d", timezone="Europe/Berlin")
    assert freeze_end(ides, utc(2026, 4, 1, 12, 0)) == utc(2026, 4, 3, 23, 0)


# --- the start plan ---------------------------------------------------------------------


def test_plan_without_schedule_or_freezes_starts_now() -> None:
    now = utc(2026, 12, 8, 10, 15)
    plan = plan_start_time(None, [], now)
    assert plan.start_at == now
    assert plan.waits == []


def test_plan_waits_for_a_freeze_to_end() -> None:
    plan = plan_start_time(None, [WEEKEND_FREEZE], utc(2026, 12, 5, 9, 0))
    assert plan.start_at == utc(2026, 12, 7, 8, 0)
    assert [(wait.reason, wait.until) for wait in plan.waits] == [
        ("freeze", utc(2026, 12, 7, 8, 0))
    ]
    assert plan.waits[0].detail == "freeze '0 18 * * fri' for 2d14h (UTC) ends 2026-12-07 08:00 UTC"


def test_plan_moves_a_window_inside_a_freeze_to_the_next_window_after_it() -> None:
    schedule = Schedule(days=["mon", "tue", "wed", "thu", "fri"], time="07:00")
    plan = plan_start_time(schedule, [WEEKEND_FREEZE], utc(2026, 12, 4, 19, 0))
    assert plan.start_at == utc(2026, 12, 8, 7, 0)
    assert [(wait.reason, wait.until) for wait in plan.waits] == [
        ("schedule", utc(2026, 12, 7, 7, 0)),
        ("freeze", utc(2026, 12, 7, 8, 0)),
        ("schedule", utc(2026, 12, 8, 7, 0)),
    ]
    assert plan.waits[0].detail == "next window mon-fri 07:00 UTC"


def test_plan_detail_names_days_and_zone() -> None:
    schedule = Schedule(days=["tue", "mon"], time="03:00", timezone="Europe/Berlin")
    plan = plan_start_time(schedule, [], utc(2026, 12, 8, 12, 0))
    assert plan.start_at == utc(2026, 12, 14, 2, 0)
    assert plan.waits[0].detail == "next window mon, tue 03:00 Europe/Berlin"


def test_plan_in_a_window_outside_freezes_starts_now() -> None:
    schedule = Schedule(time="07:00")
    now = utc(2026, 12, 8, 7, 0)
    assert plan_start_time(schedule, [WEEKEND_FREEZE], now).start_at == now


def test_plan_gives_up_when_freezes_cover_every_window() -> None:
    always = Freeze(cron="0 0 * * *", duration="1d")
    with pytest.raises(ValueError, match=f"{MAX_PLAN_STEPS} steps"):
        plan_start_time(Schedule(time="03:00"), [always], utc(2026, 12, 8, 12, 0))


# --- freezes that leave no start ------------------------------------------------------

SINCE = utc(2026, 12, 8, 12, 0)
WEEKDAYS_3AM = Schedule(days=["mon", "tue", "wed", "thu", "fri"], time="03:00")


def test_a_freeze_every_day_all_day_leaves_no_start() -> None:
    assert never_starts(None, [Freeze(cron="0 0 * * *", duration="24h")], SINCE)
    assert never_starts(None, [Freeze(cron="0 * * * *", duration="1h")], SINCE)
    assert not never_starts(None, [Freeze(cron="0 0 * * *", duration="23h59m")], SINCE)


def test_weekly_freezes_that_together_cover_the_week_leave_no_start() -> None:
    weekdays = Freeze(cron="0 0 * * mon-fri", duration="1d")
    assert never_starts(None, [weekdays, Freeze(cron="0 0 * * sat", duration="2d")], SINCE)
    # Sunday 23:00 to midnight is free.
    assert not never_starts(None, [weekdays, Freeze(cron="0 0 * * sat", duration="47h")], SINCE)


def test_freezes_in_two_zones_can_cover_the_day_together() -> None:
    afternoon = Freeze(cron="0 12 * * *", duration="12h")  # 12:00-24:00 UTC
    tokyo_day = Freeze(cron="0 9 * * *", duration="12h", timezone="Asia/Tokyo")  # 00-12 UTC
    assert never_starts(None, [afternoon, tokyo_day], SINCE)


def test_a_24h_freeze_every_local_day_leaves_the_hour_the_clocks_go_back() -> None:
    # A duration is elapsed time, and 31 October 2027 in Berlin is 25 hours long.
    daily = Freeze(cron="0 0 * * *", duration="24h", timezone="Europe/Berlin")
    assert not never_starts(None, [daily], SINCE)
    assert plan_start_time(None, [daily], SINCE).start_at == utc(2027, 10, 31, 22, 0)
    longer = Freeze(cron="0 0 * * *", duration="25h", timezone="Europe/Berlin")
    assert never_starts(None, [longer], SINCE)


def test_a_schedule_whose_every_window_is_frozen_never_starts() -> None:
    nights = Freeze(cron="0 0 * * mon-fri", duration="4h")
    assert not never_starts(None, [nights], SINCE)
    assert never_starts(WEEKDAYS_3AM, [nights], SINCE)
    assert not never_starts(Schedule(time="03:00"), [nights], SINCE)  # Saturday's window


def test_a_walk_too_long_to_finish_does_not_count_as_never() -> None:
    # Minute-long windows: a year of them is more moves than the check makes.
    assert not never_starts(None, [Freeze(cron="* * * * *", duration="1m")], SINCE)


def test_calendar_problems_name_the_field_inside_the_stage() -> None:
    bad = calendar_problems(
        Schedule(time="03:00", timezone="Mars/Olympus_Mons"),
        [Freeze(cron="61 * * * *", duration="1h"), Freeze(cron="0 0 * * *", duration="1h")],
        SINCE,
    )
    assert bad == [
        CalendarProblem(("schedule", "timezone"), "unknown time zone 'Mars/Olympus_Mons'"),
        CalendarProblem(
            ("freezes", 0, "cron"), "cron '61 * * * *': minute field '61': 61 is out of range 0-59"
        ),
    ]
    always = [Freeze(cron="0 0 * * *", duration="1d")]
    assert calendar_problems(WEEKDAYS_3AM, always, SINCE) == [
        CalendarProblem(("freezes",), "the freezes cover all time: a deployment could never start")
    ]
    nights = [Freeze(cron="0 0 * * mon-fri", duration="4h")]
    assert calendar_problems(WEEKDAYS_3AM, nights, SINCE) == [
        CalendarProblem(
            ("schedule",),
            "every window of the schedule lies inside a freeze: a deployment could never start",
        )
    ]
    assert calendar_problems(WEEKDAYS_3AM, [WEEKEND_FREEZE], SINCE) == []
    assert calendar_problems(None, [], SINCE) == []


# --- the activity -----------------------------------------------------------------------


async def test_plan_start_activity_returns_the_plan() -> None:
    request = StartPlanRequest(
        schedule=Schedule(time="07:00"), freezes=[WEEKEND_FREEZE], now=utc(2026, 12, 5, 9, 0)
    )
    plan = await plan_start(request)
    assert plan.start_at == utc(2026, 12, 8, 7, 0)


async def test_unknown_time_zone_is_a_non_retryable_invalid_schedule() -> None:
    request = StartPlanRequest(
        schedule=Schedule(time="03:00", timezone="Mars/Olympus_Mons"), now=utc(2026, 12, 8)
    )
    with pytest.raises(ApplicationError) as caught:
        await plan_start(request)
    assert caught.value.type == "InvalidSchedule"
    assert caught.value.non_retryable
    assert "Mars/Olympus_Mons" in str(caught.value)


async def test_invalid_freeze_cron_is_a_non_retryable_invalid_schedule() -> None:
    request = StartPlanRequest(
        freezes=[Freeze(cron="61 * * * *", duration="1h")], now=utc(2026, 12, 8)
    )
    with pytest.raises(ApplicationError) as caught:
        await plan_start(request)
    assert caught.value.type == "InvalidSchedule"
    assert caught.value.non_retryable
    assert "minute" in str(caught.value)
