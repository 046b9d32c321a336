"""Stored pipelines: each applied definition is a numbered revision of its pipeline.

`stageflow pipeline apply FILE` (and `release create FILE`, which applies the file
first) stores the definition's text once per sha256 (`pipeline_revisions`, which
releases fill too) and, when it differs from the pipeline's latest revision, a new
revision: number, author, time, sha256, the file it came from. `release create P`
releases the latest; `pipeline history`, `show --revision R` and `diff` read them.

The API writes these rows itself, as it writes people and tokens: a definition is
configuration a person brings, not release state, and applying one must work while
no worker runs. Revision numbers are taken in the write's transaction: SQLite's
writers are serialized, and on PostgreSQL the unique (pipeline, number) makes a
racing second apply fail, and it is tried again.
"""

from __future__ import annotations

import difflib
from datetime import datetime
from typing import Any

from pydantic import Field
from sqlalchemy import Table, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from activities.record.database import Database
from activities.record.tables import PipelineRow, RevisionRow, StoredRevisionRow
from activities.record.writes import write_revision
from workflows.pipeline import Model

APPLY_TRIES = 3


class StoredRevision(Model):
    """One revision of a stored pipeline."""

    pipeline: str
    revision: int = Field(description="1, 2, … per pipeline")
    sha256: str
    author: str
    time: datetime
    source: str | None = Field(None, description="the file it was applied from")


class AppliedRevision(StoredRevision):
    """What `pipeline apply` did: a new revision, or none when nothing changed."""

    changed: bool


class StoredDefinition(StoredRevision):
    """A revision with its text."""

    text: str | None = Field(None, description="None for a definition recorded without it")


class StoredPipeline(Model):
    """A pipeline in `pipeline list`: its latest revision."""

    name: str
    latest: StoredRevision | None = None


async def apply_definition(
    db: Database, pipeline: str, sha256: str, text: str, author: str, time: datetime, source: str
) -> AppliedRevision:
    """Store `text` as the pipeline's next revision unless its latest has the same sha256."""
    for attempt in range(APPLY_TRIES):
        try:
            return await db.run_write(_apply, pipeline, sha256, text, author, time, source)
        except IntegrityError:  # another apply took the number (PostgreSQL)
            if attempt == APPLY_TRIES - 1:
                raise
    raise AssertionError("unreachable")


def _apply(
    session: Connection,
    pipeline: str,
    sha256: str,
    text: str,
    author: str,
    time: datetime,
    source: str,
) -> AppliedRevision:
    write_revision(session, pipeline, sha256, author, time, text, None)
    pipeline_id = session.execute(
        select(PipelineRow.id).where(PipelineRow.name == pipeline)
    ).scalar_one()
    stored = _stored_table()
    latest = session.execute(
        select(stored)
        .where(stored.c.pipeline_id == pipeline_id)
        .order_by(stored.c.number.desc())
        .limit(1)
    ).first()
    if latest is not None and latest.sha256 == sha256:
        return AppliedRevision(pipeline=pipeline, changed=False, **_revision_fields(latest))
    number = (latest.number if latest is not None else 0) + 1
    session.execute(
        stored.insert().values(
            pipeline_id=pipeline_id,
            number=number,
            sha256=sha256,
            author=author,
            time=time,
            source=source,
        )
    )
    return AppliedRevision(
        pipeline=pipeline,
        revision=number,
        sha256=sha256,
        author=author,
        time=time,
        source=source,
        changed=True,
    )


async def stored_revisions(db: Database, pipeline: str) -> list[StoredRevision]:
    """The pipeline's revisions, oldest first (`pipeline history`)."""
    stored = _stored_table()
    async with db.reading() as session:
        found = (
            await session.execute(
                select(stored)
                .join(PipelineRow, PipelineRow.id == stored.c.pipeline_id)
                .where(PipelineRow.name == pipeline)
                .order_by(stored.c.number)
            )
        ).all()
    return [StoredRevision(pipeline=pipeline, **_revision_fields(row)) for row in found]


async def stored_definition(
    db: Database, pipeline: str, revision: int | None = None
) -> StoredDefinition | None:
    """Revision `revision` of the pipeline (its latest when None), with its text."""
    stored = _stored_table()
    query = (
        select(stored, RevisionRow.definition)
        .join(PipelineRow, PipelineRow.id == stored.c.pipeline_id)
        .outerjoin(
            RevisionRow,
            (RevisionRow.pipeline_id == stored.c.pipeline_id)
            & (RevisionRow.sha256 == stored.c.sha256),
        )
        .where(PipelineRow.name == pipeline)
    )
    if revision is None:
        query = query.order_by(stored.c.number.desc()).limit(1)
    else:
        query = query.where(stored.c.number == revision)
    async with db.reading() as session:
        row = (await session.execute(query)).first()
    if row is None:
        return None
    return StoredDefinition(pipeline=pipeline, text=row.definition, **_revision_fields(row))


async def stored_pipelines(db: Database) -> list[StoredPipeline]:
    """Every pipeline the record knows, by name, with its latest revision if stored."""
    stored = _stored_table()
    latest = (
        select(stored.c.pipeline_id, func.max(stored.c.number).label("number"))
        .group_by(stored.c.pipeline_id)
        .subquery()
    )
    query = (
        select(PipelineRow.name, stored)
        .outerjoin(latest, latest.c.pipeline_id == PipelineRow.id)
        .outerjoin(
            stored,
            (stored.c.pipeline_id == PipelineRow.id) & (stored.c.number == latest.c.number),
        )
        .order_by(PipelineRow.name)
    )
    async with db.reading() as session:
        found = (await session.execute(query)).all()
    return [
        StoredPipeline(
            name=row.name,
            latest=StoredRevision(pipeline=row.name, **_revision_fields(row))
            if row.number is not None
            else None,
        )
        for row in found
    ]


def unified_diff(before: StoredDefinition, after: StoredDefinition) -> str:
    """`pipeline diff`: the change from one revision's text to another's."""
    return "".join(
        difflib.unified_diff(
            (before.text or "").splitlines(keepends=True),
            (after.text or "").splitlines(keepends=True),
            fromfile=f"{before.pipeline} revision {before.revision}",
            tofile=f"{after.pipeline} revision {after.revision}",
        )
    )


def _stored_table() -> Table:
    table = StoredRevisionRow.__table__
    assert isinstance(table, Table)
    return table


def _revision_fields(row: Any) -> dict[str, Any]:
    return {
        "revision": row.number,
        "sha256": row.sha256,
        "author": row.author,
        "time": row.time,
        "source": row.source,
    }
