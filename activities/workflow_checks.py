"""What the PipelineWorkflow asks Temporal about other workflows: which of its slot
holders have ended without saying so (terminated, or ended with their release)."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workflows.activity_refs import ENDED_WORKFLOWS
from workflows.control_api import EndedRequest, EndedResult


class Lookout:
    """The control worker's view of Temporal, for the `ended_workflows` activity."""

    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name=ENDED_WORKFLOWS.name)
    async def ended_workflows(self, request: EndedRequest) -> EndedResult:
        running = await asyncio.gather(*(self._running(i) for i in request.workflow_ids))
        return EndedResult(
            ended=[i for i, alive in zip(request.workflow_ids, running, strict=True) if not alive]
        )

    async def _running(self, workflow_id: str) -> bool:
        try:
            described = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return described.status == WorkflowExecutionStatus.RUNNING
