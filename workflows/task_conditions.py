"""Which task runs next, and what a job's tasks add up to. Pure, no Temporal."""

from __future__ import annotations

from collections.abc import Sequence

from workflows.release import StageStatus, TaskRun, TaskStatus


def should_run(condition: str, enabled: bool, job_failed: bool, canceled: bool) -> bool:
    """Azure's task conditions: succeeded() by default, always(), failed().

    A failure of a task with `continue_on_error` does not count as a failure
    here. After a cancel nothing more runs: the person asked to stop.
    """
    if not enabled or canceled:
        return False
    if condition == "always":
        return True
    if condition == "failed":
        return job_failed
    return not job_failed


def task_counts_as_failure(run: TaskRun) -> bool:
    return run.status == TaskStatus.FAILED and not run.continue_on_error


def stage_outcome(runs: Sequence[TaskRun], canceled: bool, job_failed: bool = False) -> StageStatus:
    """The stage's status from its task runs.

    Any hard failure (or a job that could not run: agent lost for good, artifacts
    missing) fails the stage; failures of
    `continue_on_error` tasks make it partially succeeded.
    """
    if canceled:
        return StageStatus.CANCELED
    if job_failed or any(task_counts_as_failure(run) for run in runs):
        return StageStatus.FAILED
    if any(run.status == TaskStatus.FAILED for run in runs):
        return StageStatus.PARTIALLY_SUCCEEDED
    return StageStatus.SUCCEEDED
