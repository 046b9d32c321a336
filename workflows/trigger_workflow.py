"""TriggerWorkflow: one firing of a pipeline's trigger.

A trigger is a Temporal Schedule (`trigger/<pipeline>/<name>`, starter/triggers.py),
visible and pausable in the Web UI: every `poll` for an artifact trigger, at its
cron times for a scheduled one. Each firing is this workflow, whose one activity,
`fire_trigger` (activities/triggers.py), looks at what the trigger watches and asks
the PipelineWorkflow to release what is new (workflows/triggering.py decides).
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import FIRE_TRIGGER
    from workflows.triggering import FireRequest, TriggerInput, TriggerOutcome

TRIGGER_WORKFLOW = "TriggerWorkflow"


@workflow.defn(name=TRIGGER_WORKFLOW)
class TriggerWorkflow:
    """Fire a pipeline's trigger once: a release of what is new to it, or none."""

    @workflow.run
    async def run(self, input: TriggerInput) -> TriggerOutcome:
        return await FIRE_TRIGGER.execute(
            FireRequest(
                pipeline=input.pipeline,
                trigger=input.trigger,
                firing_id=workflow.info().workflow_id,
            ),
            task_queue=workflow.info().task_queue,
            summary=f"{input.pipeline}: does trigger {input.trigger} find something new?",
        )
