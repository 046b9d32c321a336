"""The stored pipelines' routes of /api/v1: apply a file as a new revision, list the
pipelines, show one revision, its history and the diff between two revisions.

Who may apply: an admin of the pipeline (Access.administer); who may read: a viewer.
The API reads the file, as `release create FILE` does: the path is one on the server.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from activities.pipeline_loader import InvalidPipeline, load_pipeline
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
from starter.api.app import AccessDep, ServiceDep
from starter.api.params import MAX_NUMBER, PipelineName
from starter.api.problems import Problem, not_found
from starter.api.routes import ValidateBody, server_file
from starter.pipelines import apply_file

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
        try:
            pipeline, _ = load_pipeline(path)
        except InvalidPipeline as err:
            raise Problem(
                422, "Invalid pipeline", "; ".join(str(p) for p in err.problems)
            ) from None
        await can.administer(pipeline.name)
        try:
            _, applied = await apply_file(svc.db, path, can.principal.user)
        except InvalidPipeline as err:
            raise Problem(
                422, "Invalid pipeline", "; ".join(str(p) for p in err.problems)
            ) from None
        return applied

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


async def _stored(svc: ServiceDep, pipeline: str, revision: int | None) -> StoredDefinition:
    found = await stored_definition(svc.db, pipeline, revision)
    if found is None:
        which = f"revision {revision} of pipeline" if revision else "revision of pipeline"
        raise not_found(f"no stored {which} {pipeline!r} (`stageflow pipeline history`)")
    return found
