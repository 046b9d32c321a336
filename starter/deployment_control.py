"""Control across releases, as a client of Temporal: what is deployed where (the
PipelineWorkflow's word), a rollback, and holds on a release's stages."""

from __future__ import annotations

import uuid

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from starter.release_ref import ReleaseRef
from starter.releases import _release_update, _stage_of, release_status
from workflows.audit import AuditEvent
from workflows.names import pipeline_workflow_id
from workflows.pipeline_workflow import PipelineWorkflow
from workflows.queues import StageDeployment, StageQueue, rollback_target
from workflows.release import DeployRequest, HoldRequest
from workflows.release_workflow import ReleaseWorkflow


class NoRollback(ValueError):
    """A rollback that cannot be: nothing before, or a release never deployed there."""


class PipelineNotFound(LookupError):
    pass


async def deployed_where(client: Client, pipeline: str) -> dict[str, list[StageDeployment]]:
    """Per stage, the deployments that put a release there, the current one last."""
    handle = client.get_workflow_handle_for(PipelineWorkflow.run, pipeline_workflow_id(pipeline))
    try:
        return await handle.query(PipelineWorkflow.deployed)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise PipelineNotFound(f"pipeline {pipeline!r} has no releases") from None
        raise


async def stage_queues(client: Client, pipeline: str) -> dict[str, StageQueue]:
    handle = client.get_workflow_handle_for(PipelineWorkflow.run, pipeline_workflow_id(pipeline))
    return await handle.query(PipelineWorkflow.queues)


async def plan_rollback(
    client: Client, pipeline: str, stage: str, to: int | None
) -> tuple[StageDeployment, StageDeployment]:
    """(what is on the stage now, the deployment a rollback puts back), or NoRollback."""
    entries = (await deployed_where(client, pipeline)).get(stage, [])
    target = rollback_target(entries, stage, to)
    if isinstance(target, str):
        raise NoRollback(target)
    return entries[-1], target


async def rollback_stage(
    client: Client,
    pipeline: str,
    stage: str,
    user: str,
    to: int | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """Deploy again the release that was on `stage` before the current one (or release
    `to`): its release's verdict, kept in its trail as a rollback."""
    current, target = await plan_rollback(client, pipeline, stage, to)
    ref = ReleaseRef(pipeline, target.number)
    status = await release_status(client, ref, live=False)
    _stage_of(status, ref, stage)
    request = DeployRequest(
        stage=stage,
        by=user,
        request_id=request_id or uuid.uuid4().hex,
        detail=f"rollback of {stage} from {current.release} to {target.release}",
    )
    return await _release_update(client, status, ReleaseWorkflow.rollback, request)


async def hold_stage(
    client: Client,
    ref: ReleaseRef,
    stage: str,
    user: str,
    reason: str = "",
    request_id: str | None = None,
    lift: bool = False,
) -> AuditEvent:
    """Hold a release back from `stage` and the stages after it (or, `lift`, let it go)."""
    status = await release_status(client, ref, live=False)
    _stage_of(status, ref, stage)
    request = HoldRequest(
        stage=stage, by=user, reason=reason, request_id=request_id or uuid.uuid4().hex
    )
    method = ReleaseWorkflow.unhold if lift else ReleaseWorkflow.hold
    return await _release_update(client, status, method, request)
