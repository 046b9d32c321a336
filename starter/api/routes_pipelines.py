"""The stored pipelines' routes of /api/v1: apply a file as a new revision, list the
pipelines, show one revision, its history and the diff between two revisions; a
pipeline's triggers (their Schedules), pause and resume, and the artifact webhook.

Who may apply: an admin of the pipeline (Access.administer); who may read: a viewer.
The API reads the file, as `release create FILE` does: the path is one on the server.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.pipeline_loader import InvalidPipeline
from activities.pipelines import NoStoredPipeline, stored_pipeline
from activities.record.stored_pipelines import (
    AppliedRevision,
    StoredDefinition,
    StoredPipeline,
    StoredRevision,
    stored_definition,
    stored_pipelines,
    stored_revisions,
    unified_diff,
)
from activities.triggers import TriggerProblem, Triggers
from starter.api.access import Access
from starter.api.app import AccessDep, Service, ServiceDep
from starter.api.params import MAX_NUMBER, Name, PipelineName, StageName, Text
from starter.api.problems import Problem, not_found
from starter.api.routes import Action, ValidateBody, read_file, server_file, store
from starter.triggers import TriggerView, list_triggers, pause_trigger
from workflows.pipeline import Pipeline
from workflows.triggering import TriggerOutcome

RevisionQuery = Annotated[
    int | None, Query(ge=1, le=MAX_NUMBER, description="a revision number; default: the latest")
]


class Diff(BaseModel):
    pipeline: str
    from_revision: int
    to_revision: int
    diff: str


def add_pipeline_routes(api: APIRouter) -> None:
    """The stored pipelines' routes, on `api` (mounted at /api/v1)."""

    @api.post(
        "/pipelines/apply",
        tags=["pipelines"],
        summary="store a pipeline file as its next revision (when it changed)",
    )
    async def apply(body: ValidateBody, svc: ServiceDep, can: AccessDep) -> AppliedRevision:
        path = server_file(body.file)
        definition = read_file(path)
        await can.administer(definition[0].name)
        return await store(svc, definition, path, can.principal.user)

    @api.get("/pipelines", tags=["pipelines"], summary="every pipeline, its latest revision")
    async def list_pipelines(svc: ServiceDep, can: AccessDep) -> list[StoredPipeline]:
        return [p for p in await stored_pipelines(svc.db) if await can.may_view(p.name)]

    @api.get(
        "/pipelines/{pipeline}", tags=["pipelines"], summary="a stored revision, with its text"
    )
    async def show(
        pipeline: PipelineName, svc: ServiceDep, can: AccessDep, revision: RevisionQuery = None
    ) -> StoredDefinition:
        await can.view(pipeline)
        return await _stored(svc, pipeline, revision)

    @api.get(
        "/pipelines/{pipeline}/history",
        tags=["pipelines"],
        summary="the stored revisions: who applied each, when",
    )
    async def history(
        pipeline: PipelineName, svc: ServiceDep, can: AccessDep
    ) -> list[StoredRevision]:
        await can.view(pipeline)
        found = await stored_revisions(svc.db, pipeline)
        if not found:
            raise not_found(f"no stored revision of pipeline {pipeline!r}")
        return found

    @api.get(
        "/pipelines/{pipeline}/diff",
        tags=["pipelines"],
        summary="the unified diff from one revision to another (default: the latest)",
    )
    async def diff(
        pipeline: PipelineName,
        svc: ServiceDep,
        can: AccessDep,
        from_revision: Annotated[int, Query(ge=1, le=MAX_NUMBER)],
        to_revision: RevisionQuery = None,
    ) -> Diff:
        await can.view(pipeline)
        before = await _stored(svc, pipeline, from_revision)
        after = await _stored(svc, pipeline, to_revision)
        return Diff(
            pipeline=pipeline,
            from_revision=before.revision,
            to_revision=after.revision,
            diff=unified_diff(before, after),
        )


class PauseBody(BaseModel):
    reason: Text = ""


class FireBody(Action):
    artifacts: dict[Name, Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f]*$")]] = (
        Field({}, description="alias → version; the others (all, when empty) at their default")
    )


def add_trigger_routes(api: APIRouter) -> None:
    """A stored pipeline's triggers: their Schedules, pause and resume, and the webhook
    that makes a release at once."""

    @api.get(
        "/pipelines/{pipeline}/triggers",
        tags=["pipelines"],
        summary="the latest revision's triggers, with their last and next runs",
    )
    async def triggers(
        pipeline: PipelineName, svc: ServiceDep, can: AccessDep
    ) -> list[TriggerView]:
        await can.view(pipeline)
        stored = await _latest_pipeline(svc, pipeline)
        return await list_triggers(await svc.client(), stored)

    @api.post(
        "/pipelines/{pipeline}/triggers/{trigger}/pause",
        tags=["pipelines"],
        summary="pause a trigger's Schedule (an admin's)",
    )
    async def pause(
        pipeline: PipelineName, trigger: StageName, body: PauseBody, svc: ServiceDep, can: AccessDep
    ) -> list[TriggerView]:
        return await _pause(svc, can, pipeline, trigger, body, pause=True)

    @api.post(
        "/pipelines/{pipeline}/triggers/{trigger}/resume",
        tags=["pipelines"],
        summary="resume a paused trigger's Schedule (an admin's)",
    )
    async def resume(
        pipeline: PipelineName, trigger: StageName, body: PauseBody, svc: ServiceDep, can: AccessDep
    ) -> list[TriggerView]:
        return await _pause(svc, can, pipeline, trigger, body, pause=False)

    @api.post(
        "/pipelines/{pipeline}/triggers/artifact",
        tags=["pipelines"],
        summary="a new artifact version: a release of it now (the webhook a CI calls)",
    )
    async def fire(
        pipeline: PipelineName, body: FireBody, svc: ServiceDep, can: AccessDep
    ) -> TriggerOutcome:
        await can.release(pipeline)
        triggers = Triggers(
            await svc.client(), svc.db, svc.settings.data_dir, svc.settings.task_queue
        )
        try:
            return await triggers.fire_now(
                pipeline,
                body.artifacts,
                can.principal.user,
                body.request_id or uuid.uuid4().hex,
            )
        except TriggerProblem as err:
            raise not_found(str(err)) from None
        except ValueError as err:  # an unknown alias or version
            raise Problem(422, "Invalid release", str(err)) from None
        except WorkflowUpdateFailedError as err:
            raise Problem(409, "Not released", str(err.cause or err)) from None


async def _pause(
    svc: Service, can: Access, pipeline: str, trigger: str, body: PauseBody, pause: bool
) -> list[TriggerView]:
    await can.administer(pipeline)
    stored = await _latest_pipeline(svc, pipeline)
    note = f"{'paused' if pause else 'resumed'} by {can.principal.user}" + (
        f": {body.reason}" if body.reason else ""
    )
    try:
        await pause_trigger(await svc.client(), stored, trigger, pause, note)
    except KeyError as err:
        raise not_found(str(err.args[0])) from None
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        raise not_found(
            f"trigger {trigger!r} of {pipeline!r} has no Schedule: apply the pipeline again"
        ) from None
    return await list_triggers(await svc.client(), stored)


async def _latest_pipeline(svc: Service, pipeline: str) -> Pipeline:
    try:
        found, _ = await stored_pipeline(svc.db, pipeline)
    except NoStoredPipeline as err:
        raise not_found(str(err)) from None
    except InvalidPipeline as err:
        raise Problem(422, "Invalid pipeline", "; ".join(str(p) for p in err.problems)) from None
    return found


async def _stored(svc: ServiceDep, pipeline: str, revision: int | None) -> StoredDefinition:
    found = await stored_definition(svc.db, pipeline, revision)
    if found is None:
        which = f"revision {revision} of pipeline" if revision else "revision of pipeline"
        raise not_found(f"no stored {which} {pipeline!r} (`stageflow pipeline history`)")
    return found
