"""PipelineWorkflow: the single writer of what all releases of one pipeline share.

It hands out release numbers atomically (an update, started with
update-with-start), keeps the definition's revisions (the pipeline's change
history) and starts each release as an abandoned child, so a release outlives
the pipeline entity's continue-as-new. It holds each queued stage's slots
(workflows/queues.py: deployments ask, wait in line, are granted, end) and
what is deployed where, which rollbacks go by.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    from workflows.activity_refs import ENDED_WORKFLOWS
    from workflows.control_api import EndedRequest
    from workflows.names import release_workflow_id
    from workflows.pipeline import Model, Pipeline
    from workflows.queues import (
        Outbox,
        QueueNews,
        SlotMessage,
        StageDeployment,
        StageQueue,
        ask,
        deploying,
        leave,
        record_deployment,
    )
    from workflows.release import ReleaseSpec
    from workflows.release_requests import CreatedRelease, NewRelease
    from workflows.release_workflow import (
        ReleaseInput,
        ReleaseWorkflow,
        release_search_attributes,
    )
    from workflows.triggering import (
        TriggerFiring,
        TriggerOutcome,
        decide,
        remember_key,
    )

# Remember this many recent request ids, so a retried create is not a second release.
REMEMBERED_REQUESTS = 200
# While a stage's slots are held, this often the pipeline looks for holders whose
# workflows ended without saying so (terminated in Temporal, or with their release).
SLOT_CHECK_EVERY = timedelta(minutes=1)
QUEUE_SIGNAL = "queue"


class Revision(Model):
    """One version of the pipeline definition, as first used by a release."""

    revision: str
    author: str
    time: datetime
    first_release: int


class PipelineState(Model):
    """Input of a PipelineWorkflow; carried across continue-as-new."""

    name: str
    last_number: int = 0
    revisions: list[Revision] = []
    recent_requests: dict[str, CreatedRelease] = {}
    queues: dict[str, StageQueue] = {}
    deployed: dict[str, list[StageDeployment]] = {}
    # Per trigger, what it saw (label → version, commit or key: workflows/triggering.py),
    # and the releases triggers made, by key.
    triggers: dict[str, dict[str, str]] = {}
    trigger_keys: dict[str, int] = {}


def render_release_name(pipeline: Pipeline, number: int, now: datetime) -> str:
    """The release name from `release_name_format`; variables are data, not templates."""
    env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    plain = {k: v for k, v in pipeline.variables.items() if isinstance(v, str)}
    context = {**plain, "number": number, "pipeline": pipeline.name, "date": now}
    return env.from_string(pipeline.release_name_format).render(context).strip()


@workflow.defn(name="PipelineWorkflow")
class PipelineWorkflow:
    """One per pipeline: release numbers, definition revisions, stage slots, what is where."""

    @workflow.init
    def __init__(self, state: PipelineState) -> None:
        self._state = state
        # What to tell deployments in the queues, in order; sent by the main loop.
        self._outbox: Outbox = []

    @workflow.run
    async def run(self, state: PipelineState) -> None:
        while True:
            try:
                await workflow.wait_condition(
                    lambda: bool(self._outbox) or workflow.info().is_continue_as_new_suggested(),
                    timeout=SLOT_CHECK_EVERY if self._anyone_queued() else None,
                    timeout_summary="look for slot holders that ended without a word",
                )
            except TimeoutError:
                await self._free_the_ended()
            await self._send()
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() or bool(self._outbox)
                )
                if not self._outbox:
                    workflow.continue_as_new(self._state)

    @workflow.signal
    def slots(self, message: SlotMessage) -> None:
        """A deployment asks for a slot, begins its jobs, or has ended."""
        queues = self._state.queues
        if message.kind == "ask":
            self._outbox += ask(queues, message, workflow.now())
        elif message.kind == "deploying":
            self._outbox += deploying(queues, message)
        else:
            self._outbox += leave(queues, message.stage, {message.workflow_id})
            record_deployment(self._state.deployed, message, workflow.now())

    @workflow.query
    def queues(self) -> dict[str, StageQueue]:
        """Each queued stage's slots: who holds them and who waits."""
        return self._state.queues

    @workflow.query
    def deployed(self) -> dict[str, list[StageDeployment]]:
        """What is deployed where: per stage, the deployments that put a release there,
        the current one last."""
        return self._state.deployed

    def _anyone_queued(self) -> bool:
        return any(q.holders or q.waiting for q in self._state.queues.values())

    async def _send(self) -> None:
        """Tell the deployments their news; one that cannot be told has ended: its place
        is freed (which may be news for others)."""
        while self._outbox:
            batch, self._outbox = self._outbox, []
            told = await asyncio.gather(*(self._tell(i, news) for i, news in batch))
            gone = {workflow_id for (workflow_id, _), ok in zip(batch, told, strict=True) if not ok}
            if gone:
                self._leave(gone)

    async def _tell(self, workflow_id: str, news: QueueNews) -> bool:
        try:
            await workflow.get_external_workflow_handle(workflow_id).signal(QUEUE_SIGNAL, news)
        except Exception:  # the workflow is not running any more
            return False
        return True

    async def _free_the_ended(self) -> None:
        ids = [
            slot.workflow_id
            for queue in self._state.queues.values()
            for slot in queue.holders + queue.waiting
        ]
        found = await ENDED_WORKFLOWS.execute(
            EndedRequest(workflow_ids=ids),
            task_queue=workflow.info().task_queue,
            summary=f"which of {len(ids)} queued deployments have ended",
        )
        if found.ended:
            self._leave(set(found.ended))

    def _leave(self, workflow_ids: set[str]) -> None:
        for stage in list(self._state.queues):
            self._outbox += leave(self._state.queues, stage, workflow_ids)

    @workflow.update
    async def create_release(self, request: NewRelease) -> CreatedRelease:
        """Take the next number, record the revision, start the ReleaseWorkflow."""
        return await self._start_release(request)

    @workflow.update
    async def fire_trigger(self, firing: TriggerFiring) -> TriggerOutcome:
        """A trigger's firing: release what is new to it and to every trigger (one release
        per version, whichever trigger saw it first), and note what it saw."""
        before = self._state.triggers.get(firing.trigger)
        chosen, skipped, seen = decide(before, self._state.trigger_keys, firing)
        # A release asked for (the webhook) observes nothing: what the trigger saw stays.
        if firing.observed or firing.baseline or before is not None:
            self._state.triggers[firing.trigger] = seen
        for candidate in chosen:
            remember_key(self._state.trigger_keys, candidate.key, 0)  # taken before any await
        outcome = TriggerOutcome(
            pipeline=self._state.name,
            trigger=firing.trigger,
            skipped=skipped,
            baseline=firing.baseline and not chosen and not skipped,
        )
        for position, candidate in enumerate(chosen):
            try:
                created = await self._start_release(candidate.release)
            except BaseException:
                # Not made: the next firing must see these versions as new again.
                for unmade in chosen[position:]:
                    self._state.trigger_keys.pop(unmade.key, None)
                if before is None:
                    self._state.triggers.pop(firing.trigger, None)
                else:
                    self._state.triggers[firing.trigger] = before
                raise
            remember_key(self._state.trigger_keys, candidate.key, created.number)
            outcome.created.append(created)
        return outcome

    @workflow.query
    def trigger_seen(self, trigger: str) -> dict[str, str] | None:
        """What a trigger saw when it last fired (None: it never has)."""
        return self._state.triggers.get(trigger)

    async def _start_release(self, request: NewRelease) -> CreatedRelease:
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
            changes=request.changes,
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
