"""The control worker: every workflow, on the `stageflow` task queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.calendar import plan_start
from activities.gate_checks import check_http
from activities.notify import Notifier
from worker.running import run_until_stopped
from worker.settings import Settings
from workflows.names import CONTROL_TASK_QUEUE
from workflows.pipeline_workflow import PipelineWorkflow
from workflows.release_workflow import ReleaseWorkflow
from workflows.stage_workflow import StageWorkflow

WORKFLOWS = [PipelineWorkflow, ReleaseWorkflow, StageWorkflow]

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
) -> Worker:
    """Every workflow, and the control activities: start planning, mail, HTTP gate checks."""
    notifier = Notifier(settings.smtp, settings.outbox_dir, web_ui=web_ui)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=control_activities(notifier),
        workflow_runner=SANDBOX,
        max_concurrent_workflow_tasks=100,
    )


async def run_control_worker(
    client: Client, settings: Settings, stop: asyncio.Event, web_ui: str | None = None
) -> None:
    """Run until `stop` is set; running workflows simply continue on another worker.
    A worker that fails raises here (`stageflow up` restarts it)."""
    await run_until_stopped(control_worker(client, settings, settings.task_queue, web_ui), stop)


def control_activities(notifier: Notifier) -> list[Callable[..., Any]]:
    """What the control worker serves beside the workflows: plan a start, mail, HTTP checks."""
    return [plan_start, notifier.send_notification, check_http]
