"""Stored pipelines: apply a pipeline file as a new revision, and read one back.

`apply_file` validates the file as `release create` does (nothing invalid is ever
stored) and stores it through the record (activities/record/stored_pipelines.py);
`stored_pipeline` parses a stored revision again, which a release by name
(`release create P`) and a trigger release from. Relative paths in a stored
definition (drop folders, local repositories) are relative to the file it was
applied from, as they were when it was a file.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from activities.pipeline_loader import (
    InvalidPipeline,
    PipelineProblem,
    load_pipeline,
    parse_pipeline,
)
from activities.record import Database
from activities.record.stored_pipelines import (
    AppliedRevision,
    StoredDefinition,
    apply_definition,
    stored_definition,
)
from workflows.pipeline import Pipeline


class NoStoredPipeline(LookupError):
    """No stored revision of that name (or number): say what there is instead."""


def read_definition(path: Path) -> tuple[Pipeline, str, str]:
    """The validated pipeline of a file, its sha256 and its text; InvalidPipeline."""
    pipeline, sha256 = load_pipeline(path)
    content = path.read_bytes()
    if hashlib.sha256(content).hexdigest() != sha256:
        problem = PipelineProblem(file=str(path), message="the file changed while it was read")
        raise InvalidPipeline([problem])
    return pipeline, sha256, content.decode("utf-8-sig")


async def apply_file(db: Database, path: Path, author: str) -> tuple[Pipeline, AppliedRevision]:
    """Store the file as the pipeline's next revision, unless the latest is the same."""
    definition = read_definition(path)
    return definition[0], await store_definition(db, definition, path, author)


async def store_definition(
    db: Database, definition: tuple[Pipeline, str, str], source: Path, author: str
) -> AppliedRevision:
    """Store what `read_definition` read (the pipeline, its sha256, its text) as the
    pipeline's next revision, unless the latest is the same: what was checked is what
    is stored."""
    pipeline, sha256, text = definition
    return await apply_definition(
        db, pipeline.name, sha256, text, author, datetime.now(UTC), str(source.resolve())
    )


async def stored_pipeline(
    db: Database, name: str, revision: int | None = None
) -> tuple[Pipeline, StoredDefinition]:
    """A stored revision (the latest when None), parsed and validated again."""
    stored = await stored_definition(db, name, revision)
    if stored is None:
        which = f"revision {revision} of pipeline {name!r}" if revision else f"pipeline {name!r}"
        raise NoStoredPipeline(
            f"no stored {which}: store one with `stageflow pipeline apply FILE`"
            + (f" (see `stageflow pipeline history {name}`)" if revision else "")
        )
    if stored.text is None:
        raise NoStoredPipeline(
            f"revision {stored.revision} of pipeline {name!r} was recorded without its text"
            " (before stored pipelines): apply the file again"
        )
    return parse_pipeline(stored.text, stored_file(stored)), stored


def stored_file(stored: StoredDefinition) -> str:
    """Where a stored revision came from, as problems and relative paths name it."""
    return stored.source or f"{stored.pipeline} revision {stored.revision}"
