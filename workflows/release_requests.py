"""What asks the PipelineWorkflow for a release, and what it answers: its own module,
so the PipelineWorkflow and the triggers' rules (workflows/triggering.py) share them."""

from __future__ import annotations

from workflows.changes import ReleaseChanges
from workflows.pipeline import Model, Pipeline
from workflows.release import ResolvedArtifact


class NewRelease(Model):
    """`create_release` update: everything but the number and name."""

    pipeline: Pipeline
    revision: str
    artifacts: list[ResolvedArtifact] = []
    variables: dict[str, str] = {}
    until: str | None = None
    description: str = ""
    created_by: str
    request_id: str
    changes: ReleaseChanges | None = None


class CreatedRelease(Model):
    number: int
    name: str
    workflow_id: str
