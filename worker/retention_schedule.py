"""The daily Schedule that runs the record's retention (RetentionWorkflow).

Every control worker ensures it at start: created when absent, left as it is
when present (an operator may have paused it or changed its time in the Web UI
or with `temporal schedule`), and two workers starting at once both succeed.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
)
from temporalio.service import RPCError, RPCStatusCode

from workflows.record_api import RetentionInput
from workflows.retention_workflow import RETENTION_WORKFLOW

log = logging.getLogger(__name__)

RETENTION_SCHEDULE_ID = "stageflow-retention"
# Once a day at a quiet time, off the hour that every other job in the world picks.
RETENTION_HOUR, RETENTION_MINUTE = 3, 17
# A run missed while the Temporal server was down is made up within this long.
CATCHUP_WINDOW = timedelta(days=1)
# A run that takes longer than this is stopped (the activity's three tries of an hour
# each fit in it); the next day's run goes on from where it stopped.
RUN_TIMEOUT = timedelta(hours=4)


def retention_schedule(task_queue: str, schedule_id: str = RETENTION_SCHEDULE_ID) -> Schedule:
    """RetentionWorkflow on `task_queue` daily at 03:17 UTC (workflow ids `schedule_id`
    and the time); a run still going when the next is due makes that one skip."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RETENTION_WORKFLOW,
            RetentionInput(),
            id=schedule_id,
            task_queue=task_queue,
            execution_timeout=RUN_TIMEOUT,
            static_summary="the record's retention: delete what each pipeline no longer keeps",
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    hour=[ScheduleRange(RETENTION_HOUR)],
                    minute=[ScheduleRange(RETENTION_MINUTE)],
                    comment="daily, 03:17 UTC",
                )
            ],
            time_zone_name="UTC",
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=CATCHUP_WINDOW),
    )


async def ensure_retention_schedule(
    client: Client, task_queue: str, *, schedule_id: str = RETENTION_SCHEDULE_ID
) -> None:
    """Create the Schedule `stageflow-retention` (or `schedule_id`: tests sharing a
    server give their own) unless it exists; one that exists is left as it is."""
    handle = client.get_schedule_handle(schedule_id)
    try:
        await handle.describe()
        return
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    try:
        await client.create_schedule(schedule_id, retention_schedule(task_queue, schedule_id))
    except ScheduleAlreadyRunningError:
        return  # another worker created it a moment ago
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
        return
    log.info("retention: schedule %s created (daily, 03:17 UTC)", schedule_id)
