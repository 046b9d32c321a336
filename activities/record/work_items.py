"""What releases bring, read from the record: their commits and work items.

A release's snapshot holds what it brings over the release before it
(`ReleaseSpec.changes`, workflows/changes.py); its work items are rows too
(`release_work_items`), so "which releases bring ABC-12" is one indexed query.
What a stage holds is what its current release and every earlier one brought:
`stageflow where ITEM` names a stage when its current release's number is at least
that of the first release that brought the item.
"""

from __future__ import annotations

from pydantic import Field
from sqlalchemy import func, select

from activities.record.database import Database
from activities.record.queries import deployed_on
from activities.record.tables import PipelineRow, ReleaseRow, ReleaseWorkItemRow
from activities.record.views import Deployed
from workflows.changes import ReleaseChanges
from workflows.pipeline import Model

# A range of releases read for their changes (`release diff`, a stage far behind).
MOST_RELEASES = 500


class BroughtBy(Model):
    """A release and what it brought over the one before it."""

    number: int
    release: str
    changes: ReleaseChanges


class StageHolding(Model):
    """A stage on which a work item is deployed: its current release contains it."""

    stage: str
    deployed: Deployed


class WorkItemPlaces(Model):
    """Where one work item is, in one pipeline (`stageflow where ITEM`)."""

    pipeline: str
    item: str
    brought_by: list[int] = Field(description="the releases whose commits name it")
    contained_from: int = Field(description="the first of them: it and later ones contain it")
    stages: list[StageHolding] = Field(description="stages whose current release contains it")


async def latest_release_number(db: Database, pipeline: str) -> int | None:
    """The number of the pipeline's newest recorded release; None before the first."""
    async with db.reading() as session:
        return (
            await session.execute(
                select(func.max(ReleaseRow.number))
                .join(PipelineRow, PipelineRow.id == ReleaseRow.pipeline_id)
                .where(PipelineRow.name == pipeline)
            )
        ).scalar()


async def changes_between(
    db: Database, pipeline: str, after: int | None, upto: int
) -> list[BroughtBy]:
    """What the releases numbered in (after, upto] brought, oldest first."""
    r = ReleaseRow
    query = (
        select(r.number, r.name, r.snapshot)
        .join(PipelineRow, PipelineRow.id == r.pipeline_id)
        .where(PipelineRow.name == pipeline, r.number <= upto)
        .order_by(r.number.desc())
        .limit(MOST_RELEASES)
    )
    if after is not None:
        query = query.where(r.number > after)
    async with db.reading() as session:
        found = (await session.execute(query)).all()
    return [
        BroughtBy(
            number=row.number,
            release=row.name,
            changes=ReleaseChanges.model_validate(row.snapshot.get("changes") or {}),
        )
        for row in reversed(found)
    ]


async def where_is(db: Database, item: str, pipelines: list[str]) -> list[WorkItemPlaces]:
    """In each of `pipelines` whose releases bring `item`: which do, and on which stages
    a release containing it is deployed now."""
    w, r = ReleaseWorkItemRow, ReleaseRow
    async with db.reading() as session:
        found = (
            await session.execute(
                select(PipelineRow.name, r.number)
                .select_from(w)
                .join(r, r.id == w.release_id)
                .join(PipelineRow, PipelineRow.id == r.pipeline_id)
                .where(w.item == item, PipelineRow.name.in_(pipelines))
                .order_by(PipelineRow.name, r.number)
            )
        ).all()
    numbers: dict[str, list[int]] = {}
    for name, number in found:
        numbers.setdefault(name, []).append(number)
    places = []
    for name, brought_by in numbers.items():
        first = brought_by[0]
        stages = [
            StageHolding(stage=stage.stage, deployed=stage.deployed)
            for stage in await deployed_on(db, name)
            if stage.deployed is not None and stage.deployed.number >= first
        ]
        places.append(
            WorkItemPlaces(
                pipeline=name, item=item, brought_by=brought_by, contained_from=first, stages=stages
            )
        )
    return places
