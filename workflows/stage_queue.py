"""A deployment's side of its stage's queue (DESIGN.md StageWorkflow step 1): ask the
PipelineWorkflow for a slot and wait in line, say so before the jobs begin, and
report the end, which frees the slot and tells the pipeline what is deployed where.
The pipeline's side, and the rules, are in workflows/queues.py."""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.audit import SYSTEM
    from workflows.deployment import Deployment
    from workflows.names import pipeline_workflow_id
    from workflows.queues import TOLD_PLACES, QueueNews, SlotMessage
    from workflows.release import ReleaseSpec, StageAttempt

# Releases started before their deployments told the pipeline how they ended.
REPORT_PATCH = "deployment-reports-to-pipeline"


class StageSlot:
    """Where this deployment stands in its stage's queue, as the pipeline told it."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.granted = False
        self.go = False
        self.superseded_by: str | None = None

    @property
    def queued(self) -> bool:
        return self.d.stage.queue is not None

    @property
    def may_be_superseded(self) -> bool:
        """Only under latest_only; under sequence a holder keeps its slot to its end."""
        queue = self.d.stage.queue
        return queue is not None and queue.policy == "latest_only"

    async def take(self) -> None:
        """Ask for a slot and wait until it is granted (a supersession cancels the wait)."""
        queue = self.d.stage.queue
        if queue is None:
            return
        self.d.wait(None, "queued: asking for a slot")
        await self._tell("ask", queue=queue)
        await workflow.wait_condition(lambda: self.granted)
        self.d.attempt.slot_granted_at = workflow.now()
        self.d.wait(None)

    async def begin_jobs(self) -> None:
        """Before the jobs: the pipeline's go, unless a newer release superseded this one."""
        if not self.may_be_superseded:
            return
        await self._tell("deploying")
        await workflow.wait_condition(lambda: self.go)

    def hear(self, news: QueueNews) -> bool:
        """Take the pipeline's news; True when this deployment must stop (superseded)."""
        if news.kind == "granted":
            self.granted = True
        elif news.kind == "go":
            self.go = True
        elif news.kind == "place" and not self.granted:
            if news.place > TOLD_PLACES:
                self.d.wait(None, f"queued: {TOLD_PLACES} or more ahead in line")
            else:
                held = ", ".join(news.holders) or "nobody"
                self.d.wait(
                    None,
                    f"queued: {_ordinal(news.place)} of {news.waiting} in line; "
                    f"the slot is held by {held}",
                )
        elif news.kind == "superseded" and not self.go and self.superseded_by is None:
            self.superseded_by = news.by
            self.d.trail.accept(SYSTEM, "superseded", f"by {news.by} (queue: latest_only)")
            return True
        return False

    async def report_end(self, attempt: StageAttempt) -> None:
        """Tell the pipeline how the deployment ended: its slot frees, and a success puts
        the release on the stage (what is deployed where). A deployment started on its
        own, not by a release (tests, tools), has no pipeline to tell."""
        if workflow.info().parent is not None and workflow.patched(REPORT_PATCH):
            await report_end(self.d.spec, self.d.stage.name, attempt)

    async def _tell(self, kind: str, **fields: object) -> None:
        spec = self.d.spec
        message = SlotMessage.model_validate(
            {
                "kind": kind,
                "stage": self.d.stage.name,
                "workflow_id": workflow.info().workflow_id,
                "number": spec.number,
                "release": spec.name,
                "attempt": self.d.input.attempt,
                **fields,
            }
        )
        await workflow.get_external_workflow_handle(
            pipeline_workflow_id(spec.pipeline.name)
        ).signal("slots", message)


async def report_end(spec: ReleaseSpec, stage: str, attempt: StageAttempt) -> None:
    """The `ended` message for a deployment, sent by it or (terminated) by its release.
    A pipeline workflow that is not running is not a reason to fail the deployment."""
    pipeline = spec.pipeline.name
    message = SlotMessage(
        kind="ended",
        stage=stage,
        workflow_id=attempt.workflow_id,
        number=spec.number,
        release=spec.name,
        attempt=attempt.attempt,
        status=attempt.status.value,
        time=attempt.ended_at,
        triggered_by=attempt.triggered_by,
        reason=attempt.reason,
    )
    try:
        await workflow.get_external_workflow_handle(pipeline_workflow_id(pipeline)).signal(
            "slots", message
        )
    except Exception as err:  # the pipeline workflow is gone: nothing queues on it
        workflow.logger.warning("could not tell pipeline %s of %s: %s", pipeline, stage, err)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
