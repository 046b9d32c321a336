"""Task conditions (succeeded/always/failed) and what a job's task runs add up to."""

from __future__ import annotations

import pytest

from workflows.release import StageStatus, TaskRun, TaskStatus
from workflows.task_conditions import should_run, stage_outcome

CONDITIONS = ("succeeded", "always", "failed")


def run(task: str, status: TaskStatus, continue_on_error: bool = False) -> TaskRun:
    return TaskRun(job="job", task=task, status=status, continue_on_error=continue_on_error)


# --- should_run ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "job_failed", "expected"),
    [
        ("succeeded", False, True),
        ("succeeded", True, False),
        ("always", False, True),
        ("always", True, True),
        ("failed", False, False),
        ("failed", True, True),
    ],
)
def test_enabled_task_runs_according_to_its_condition(
    condition: str, job_failed: bool, expected: bool
) -> None:
    assert should_run(condition, enabled=True, job_failed=job_failed, canceled=False) is expected


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("job_failed", [False, True])
@pytest.mark.parametrize("canceled", [False, True])
def test_disabled_task_never_runs(condition: str, job_failed: bool, canceled: bool) -> None:
    assert should_run(condition, enabled=False, job_failed=job_failed, canceled=canceled) is False


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("job_failed", [False, True])
def test_nothing_runs_after_a_cancel_not_even_always_tasks(
    condition: str, job_failed: bool
) -> None:
    assert should_run(condition, enabled=True, job_failed=job_failed, canceled=True) is False


# --- stage_outcome ------------------------------------------------------------------


def test_all_tasks_succeeded_means_the_stage_succeeded() -> None:
    runs = [run("a", TaskStatus.SUCCEEDED), run("b", TaskStatus.SUCCEEDED)]
    assert stage_outcome(runs, canceled=False) == StageStatus.SUCCEEDED


def test_skipped_tasks_do_not_spoil_a_succeeded_stage() -> None:
    runs = [run("a", TaskStatus.SUCCEEDED), run("cleanup on failure", TaskStatus.SKIPPED)]
    assert stage_outcome(runs, canceled=False) == StageStatus.SUCCEEDED


def test_stage_without_task_runs_succeeded() -> None:
    assert stage_outcome([], canceled=False) == StageStatus.SUCCEEDED


def test_failed_continue_on_error_task_makes_the_stage_partially_succeeded() -> None:
    runs = [
        run("a", TaskStatus.SUCCEEDED),
        run("optional", TaskStatus.FAILED, continue_on_error=True),
        run("b", TaskStatus.SUCCEEDED),
    ]
    assert stage_outcome(runs, canceled=False) == StageStatus.PARTIALLY_SUCCEEDED


def test_succeeded_continue_on_error_task_leaves_the_stage_succeeded() -> None:
    runs = [run("optional", TaskStatus.SUCCEEDED, continue_on_error=True)]
    assert stage_outcome(runs, canceled=False) == StageStatus.SUCCEEDED


def test_failed_task_fails_the_stage() -> None:
    runs = [run("a", TaskStatus.SUCCEEDED), run("b", TaskStatus.FAILED)]
    assert stage_outcome(runs, canceled=False) == StageStatus.FAILED


def test_hard_failure_wins_over_a_continue_on_error_failure() -> None:
    runs = [
        run("optional", TaskStatus.FAILED, continue_on_error=True),
        run("b", TaskStatus.FAILED),
    ]
    assert stage_outcome(runs, canceled=False) == StageStatus.FAILED


def test_job_that_could_not_run_fails_the_stage_even_with_succeeded_tasks() -> None:
    runs = [run("a", TaskStatus.SUCCEEDED)]
    assert stage_outcome(runs, canceled=False, job_failed=True) == StageStatus.FAILED


def test_job_failure_wins_over_partial_success() -> None:
    runs = [run("optional", TaskStatus.FAILED, continue_on_error=True)]
    assert stage_outcome(runs, canceled=False, job_failed=True) == StageStatus.FAILED


def test_canceled_stage_is_canceled_whatever_its_tasks_did() -> None:
    runs = [run("a", TaskStatus.FAILED), run("b", TaskStatus.CANCELED)]
    assert stage_outcome(runs, canceled=True) == StageStatus.CANCELED
    assert stage_outcome(runs, canceled=True, job_failed=True) == StageStatus.CANCELED
    assert stage_outcome([run("a", TaskStatus.SUCCEEDED)], canceled=True) == StageStatus.CANCELED
