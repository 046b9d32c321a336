"""The control worker: every workflow, on the `stageflow` task queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.calendar import plan_start
from activities.gate_checks import check_http
from activities.notify import Notifier
from activities.record import open_database
from activities.record.recorder import Recorder
from activities.record.retention import Retention
from activities.triggers import Triggers
from activities.workflow_checks import Lookout
from worker.backfill import backfill
from worker.retention_schedule import ensure_retention_schedule
from worker.running import run_until_stopped
from worker.settings import Settings
from workflows.names import CONTROL_TASK_QUEUE
from workflows.pipeline_workflow import PipelineWorkflow
from workflows.release_workflow import ReleaseWorkflow
from workflows.retention_workflow import RetentionWorkflow
from workflows.stage_workflow import StageWorkflow
from workflows.trigger_workflow import TriggerWorkflow

log = logging.getLogger(__name__)

WORKFLOWS = [PipelineWorkflow, ReleaseWorkflow, StageWorkflow, RetentionWorkflow, TriggerWorkflow]

# Pure libraries the workflows use, loaded once instead of per workflow run.
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "pydantic", "pydantic_core", "jinja2", "markupsafe", "annotated_types"
    )
)


def control_worker(
    client: Client,
    settings: Settings,
    task_queue: str = CONTROL_TASK_QUEUE,
    web_ui: str | None = None,
    recorder: Recorder | None = None,
    retention: Retention | None = None,
) -> Worker:
    """Every workflow, and the control activities: start planning, mail, HTTP gate
    checks, the record's writes."""
    notifier = Notifier(
        settings.smtp, settings.outbox_dir, web_ui=web_ui, public_url=settings.public_url
    )
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=control_activities(
            notifier,
            recorder or Recorder(settings.record_url, client),
            retention or Retention(open_database(settings.record_url), settings.log_dir),
            Lookout(client),
            Triggers(client, open_database(settings.record_url), settings.data_dir, task_queue),
        ),
        workflow_runner=SANDBOX,
        max_concurrent_workflow_tasks=100,
    )


async def run_control_worker(
    client: Client, settings: Settings, stop: asyncio.Event, web_ui: str | None = None
) -> None:
    """Run until `stop` is set; running workflows simply continue on another worker.
    A worker that fails raises here (`stageflow up` restarts it).

    The record's schema is migrated first; a database that is away then does not
    keep the worker from starting (the record's writes wait and retry)."""
    recorder = Recorder(settings.record_url, client)
    try:
        await recorder.database()
    except Exception as err:  # the writes retry until the database is back
        log.warning("record: database unavailable at start (%s); writes will retry", err)
    retention = Retention(open_database(settings.record_url), settings.log_dir)
    worker = control_worker(client, settings, settings.task_queue, web_ui, recorder, retention)
    try:
        await ensure_retention_schedule(client, settings.task_queue)
    except Exception as err:  # the next start tries again; `retention run` works meanwhile
        log.warning("record: the retention schedule was not created (%s)", err)
    # Its queries are answered by this worker: started beside it, not before.
    backfilling = asyncio.create_task(_backfill(client, recorder, settings.task_queue))
    try:
        await run_until_stopped(worker, stop)
    finally:
        backfilling.cancel()
        await recorder.close()
        await retention.db.close()


async def _backfill(client: Client, recorder: Recorder, task_queue: str) -> None:
    """Releases that exist only in Temporal, into the record (once: worker/backfill.py)."""
    try:
        imported = await backfill(client, await recorder.database(), task_queue=task_queue)
    except Exception as err:  # the next start tries again
        log.warning("record: backfill from Temporal did not run (%s)", err)
        return
    if imported:
        log.info("record: %d releases imported from Temporal", imported)


def control_activities(
    notifier: Notifier,
    recorder: Recorder,
    retention: Retention,
    lookout: Lookout,
    triggers: Triggers,
) -> list[Callable[..., Any]]:
    """What the control worker serves beside the workflows: plan a start, mail, HTTP
    checks, the record's writes and its retention, which slot holders have ended, a
    trigger's firing."""
    return [
        plan_start,
        notifier.send_notification,
        check_http,
        recorder.record,
        retention.apply_retention,
        lookout.ended_workflows,
        triggers.fire_trigger,
    ]
