"""The control worker: every workflow, on the `stageflow` task queue."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

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


def control_worker(client: Client, task_queue: str = CONTROL_TASK_QUEUE) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        activities=[],
        workflow_runner=SANDBOX,
        max_concurrent_workflow_tasks=100,
    )


async def run_control_worker(
    client: Client, stop: asyncio.Event, task_queue: str = CONTROL_TASK_QUEUE
) -> None:
    """Run until `stop` is set; running workflows simply continue on another worker."""
    async with control_worker(client, task_queue):
        await stop.wait()
