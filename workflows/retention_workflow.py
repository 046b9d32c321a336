"""RetentionWorkflow: one run of the record's own retention.

The Schedule `stageflow-retention` (worker/retention_schedule.py) starts it once a
day; `stageflow retention run` does the same work directly. The work is one
activity, `apply_retention` (activities/record/retention.py), measured from the
workflow's own time, so a retried activity measures from the same moment.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import APPLY_RETENTION
    from workflows.record_api import RetentionInput, RetentionRequest, RetentionResult

RETENTION_WORKFLOW = "RetentionWorkflow"


@workflow.defn(name=RETENTION_WORKFLOW)
class RetentionWorkflow:
    """Delete from the record every release its pipeline's retention no longer keeps
    (with its rows and logs), once, now; returns what went and what was kept."""

    @workflow.run
    async def run(self, input: RetentionInput) -> RetentionResult:
        now = workflow.now()
        return await APPLY_RETENTION.execute(
            RetentionRequest(now=now, dry_run=input.dry_run),
            task_queue=workflow.info().task_queue,
            summary=f"apply retention as of {now:%Y-%m-%d %H:%M} UTC"
            + (" (dry run)" if input.dry_run else ""),
        )
