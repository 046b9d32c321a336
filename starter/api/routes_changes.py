"""What releases bring, as routes of /api/v1: a release's commits and work items (its
own, and per stage since the release there now), where a work item is deployed, and
the difference between two releases. All from the record (activities/record/
work_items.py); a viewer of the pipeline may read them.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from activities import record
from activities.record.views import Deployed
from activities.record.work_items import BroughtBy, WorkItemPlaces, changes_between, where_is
from starter.api.app import AccessDep, ServiceDep
from starter.api.params import NameQuery, PipelineName, ReleaseNumber
from starter.api.routes import _spec
from workflows.changes import Commit, ReleaseChanges
from workflows.release import ReleaseSpec

ItemQuery = Annotated[
    str, Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$", description="ABC-12")
]


class StageChanges(BaseModel):
    """What deploying the release to a stage would bring there."""

    stage: str
    deployed: Deployed | None = Field(None, description="the release on the stage now")
    since: int | None = Field(None, description="the commits are of the releases after this")
    ahead: bool = Field(description="False: the stage has this release or a newer one")
    commits: list[Commit] = []
    work_items: list[str] = []


class ReleaseChangesView(BaseModel):
    pipeline: str
    number: int
    own: ReleaseChanges = Field(description="what it brings over the release before it")
    stages: list[StageChanges]


class Difference(BaseModel):
    """One artifact's or variable's value in each of two releases (None: not there)."""

    name: str
    before: str | None
    after: str | None


class ReleaseDiff(BaseModel):
    pipeline: str
    before: int
    after: int
    artifacts: list[Difference]
    variables: list[Difference]
    commits: list[Commit] = Field(description="brought by the releases after `before`")
    work_items: list[str]
    backwards: bool = Field(description="`after` is the older: its commits are taken away")


def add_change_routes(api: APIRouter) -> None:
    """The routes of what releases bring, on `api` (mounted at /api/v1)."""

    @api.get(
        "/releases/{pipeline}/{number}/changes",
        tags=["releases"],
        summary="the commits and work items it brings, over the one before and on each stage",
    )
    async def changes(
        pipeline: PipelineName, number: ReleaseNumber, svc: ServiceDep, can: AccessDep
    ) -> ReleaseChangesView:
        spec = await _spec(svc, can, pipeline, number)
        stages = []
        # A release without git artifacts brings no commits: its stages have none to read.
        known = spec.changes is not None and bool(spec.changes.artifacts)
        for stage in await record.deployed_on(svc.db, pipeline) if known else []:
            if stage.stage not in spec.pipeline.stage_names:
                continue
            current = stage.deployed.number if stage.deployed else None
            ahead = current is None or current < number
            brought = await changes_between(svc.db, pipeline, current, number) if ahead else []
            stages.append(
                StageChanges(
                    stage=stage.stage,
                    deployed=stage.deployed,
                    since=current,
                    ahead=ahead,
                    commits=_commits(brought),
                    work_items=_items(brought),
                )
            )
        return ReleaseChangesView(
            pipeline=pipeline, number=number, own=spec.changes or ReleaseChanges(), stages=stages
        )

    @api.get(
        "/work-items",
        tags=["releases"],
        summary="which releases bring a work item, and on which stages it is deployed",
    )
    async def where(
        item: ItemQuery, svc: ServiceDep, can: AccessDep, pipeline: NameQuery = None
    ) -> list[WorkItemPlaces]:
        if pipeline is not None:
            await can.view(pipeline)
            names = [pipeline]
        else:
            names = [n for n in await record.pipeline_names(svc.db) if await can.may_view(n)]
        return await where_is(svc.db, item, names)

    @api.get(
        "/releases/{pipeline}/{number}/diff/{other}",
        tags=["releases"],
        summary="artifact versions, variables, commits and work items from one release to another",
    )
    async def diff(
        pipeline: PipelineName,
        number: ReleaseNumber,
        other: ReleaseNumber,
        svc: ServiceDep,
        can: AccessDep,
    ) -> ReleaseDiff:
        before = await _spec(svc, can, pipeline, number)
        after = await _spec(svc, can, pipeline, other)
        older, newer = sorted((number, other))
        brought = await changes_between(svc.db, pipeline, older, newer) if older != newer else []
        return ReleaseDiff(
            pipeline=pipeline,
            before=number,
            after=other,
            artifacts=_differences(_versions(before), _versions(after)),
            variables=_differences(_variables(before), _variables(after)),
            commits=_commits(brought),
            work_items=_items(brought),
            backwards=other < number,
        )


def _commits(brought: list[BroughtBy]) -> list[Commit]:
    """Newest first, as `git log` lists them."""
    return [commit for release in reversed(brought) for commit in release.changes.commits]


def _items(brought: list[BroughtBy]) -> list[str]:
    return list(dict.fromkeys(item for r in brought for item in r.changes.work_items))


def _versions(spec: ReleaseSpec) -> dict[str, str]:
    return {
        a.alias: a.version + (f" ({a.commit[:12]})" if a.commit else "") for a in spec.artifacts
    }


def _variables(spec: ReleaseSpec) -> dict[str, str]:
    """Pipeline then release-time values; a secret by where it lives, never its value."""
    values = {
        name: value if isinstance(value, str) else f"secret {value.secret}"
        for name, value in spec.pipeline.variables.items()
    }
    return {**values, **spec.variables}


def _differences(before: dict[str, str], after: dict[str, str]) -> list[Difference]:
    return [
        Difference(name=name, before=before.get(name), after=after.get(name))
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    ]
