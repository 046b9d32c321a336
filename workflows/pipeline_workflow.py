"""PipelineWorkflow: the single writer of what all releases of one pipeline share.

It hands out release numbers atomically (an update, started with
update-with-start), keeps the definition's revisions (the pipeline's change
history) and starts each release as an abandoned child, so a release outlives
the pipeline entity's continue-as-new.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from workflows.names import release_workflow_id
    from workflows.pipeline import Model, Pipeline
    from workflows.release import ReleaseSpec, ResolvedArtifact
    from workflows.release_workflow import (
        ReleaseInput,
        ReleaseWorkflow,
        release_search_attributes,
    )

# Remember this many recent request ids, so a retried create is not a second release.
REMEMBERED_REQUESTS = 200


class Revision(Model):
    """One version of the pipeline definition, as first used by a release."""

    revision: str
    author: str
    time: datetime
    first_release: int


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


class CreatedRelease(Model):
    number: int
    name: str
    workflow_id: str


class PipelineState(Model):
    """Input of a PipelineWorkflow; carried across continue-as-new."""

    name: str
    last_number: int = 0
    revisions: list[Revision] = []
    recent_requests: dict[str, CreatedRelease] = {}


def render_release_name(pipeline: Pipeline, number: int, now: datetime) -> str:
    """The release name from `release_name_format`; variables are data, not templates."""
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    plain = {k: v for k, v in pipeline.variables.items() if isinstance(v, str)}
    context = {**plain, "number": number, "pipeline": pipeline.name, "date": now}
    return env.from_string(pipeline.release_name_format).render(context).strip()


@workflow.defn(name="PipelineWorkflow")
class PipelineWorkflow:
    """One per pipeline: release numbers, definition revisions."""

    @workflow.init
    def __init__(self, state: PipelineState) -> None:
        self._state = state

    @workflow.run
    async def run(self, state: PipelineState) -> None:
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(self._state)

    @workflow.update
    async def create_release(self, request: NewRelease) -> CreatedRelease:
        """Take the next number, record the revision, start the ReleaseWorkflow."""
        known = self._state.recent_requests.get(request.request_id)
        if known is not None:
            return known
        self._state.last_number += 1
        number = self._state.last_number
        now = workflow.now()
        if not any(r.revision == request.revision for r in self._state.revisions):
            self._state.revisions.append(
                Revision(
                    revision=request.revision,
                    author=request.created_by,
                    time=now,
                    first_release=number,
                )
            )
        spec = ReleaseSpec(
            pipeline=request.pipeline,
            number=number,
            name=render_release_name(request.pipeline, number, now),
            artifacts=request.artifacts,
            variables=request.variables,
            until=request.until,
            description=request.description,
            created_by=request.created_by,
            created_at=now,
            revision=request.revision,
        )
        created = CreatedRelease(
            number=number,
            name=spec.name,
            workflow_id=release_workflow_id(spec.pipeline.name, number),
        )
        self._state.recent_requests[request.request_id] = created
        while len(self._state.recent_requests) > REMEMBERED_REQUESTS:
            self._state.recent_requests.pop(next(iter(self._state.recent_requests)))
        await workflow.start_child_workflow(
            ReleaseWorkflow.run,
            ReleaseInput(spec=spec),
            id=created.workflow_id,
            task_queue=workflow.info().task_queue,
            static_summary=f"{spec.pipeline.name} {spec.name}"
            + (f": {spec.description}" if spec.description else ""),
            search_attributes=release_search_attributes(spec, "in_progress"),
            parent_close_policy=workflow.ParentClosePolicy.ABANDON,
        )
        return created

    @workflow.query
    def revisions(self) -> list[Revision]:
        """The pipeline's change history: each definition revision, who, when."""
        return self._state.revisions

    @workflow.query
    def last_number(self) -> int:
        return self._state.last_number
