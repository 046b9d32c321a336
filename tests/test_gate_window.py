"""The gate window (workflows/gates.py): sampled checks must stay healthy long enough.

Pure unit tests: a GateWindow over a GateState, fed evaluations at chosen times.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from workflows.gates import (
    KEPT_EVALUATIONS,
    CheckOutcome,
    GateEvaluation,
    GateState,
    GateWindow,
    time_left,
)
from workflows.pipeline import Gates

START = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def gates(**settings: Any) -> Gates:
    return Gates.model_validate(
        {
            "checks": [
                {"name": "health", "http": {"url": "http://web/health"}},
                {"name": "errors", "http": {"url": "http://web/errors"}},
            ],
            **settings,
        }
    )


def window(**settings: Any) -> GateWindow:
    g = gates(**settings)
    state = GateState(
        phase="pre",
        status="evaluating",
        started_at=START,
        deadline=GateWindow.deadline(g, START),
    )
    return GateWindow(g, state)


def sample(minutes: float, health: bool = True, errors: bool = True) -> GateEvaluation:
    return GateEvaluation(
        time=START + timedelta(minutes=minutes),
        results=[
            CheckOutcome(check="health", healthy=health, reason="200" if health else "503"),
            CheckOutcome(check="errors", healthy=errors, reason="ok" if errors else "5% errors"),
        ],
    )


def test_with_no_min_success_duration_the_first_healthy_sample_passes() -> None:
    w = window()
    assert w.record(sample(0)) is True
    assert w.state.status == "passed"
    assert w.state.healthy_since == START


def test_an_unhealthy_sample_does_not_pass_and_leaves_the_gates_evaluating() -> None:
    w = window()
    assert w.record(sample(0, health=False)) is False
    assert w.state.status == "evaluating"
    assert w.state.healthy_since is None


def test_every_check_must_be_healthy_in_the_same_sample() -> None:
    w = window()
    assert w.record(sample(0, health=False)) is False
    assert w.record(sample(5, errors=False)) is False
    assert w.state.status == "evaluating"


def test_the_gates_pass_once_healthy_for_min_success_duration() -> None:
    w = window(interval="5m", min_success_duration="10m")
    assert w.record(sample(0)) is False
    assert w.record(sample(5)) is False
    assert w.state.status == "evaluating"
    assert w.record(sample(10)) is True
    assert w.state.status == "passed"


def test_one_unhealthy_sample_restarts_the_window() -> None:
    w = window(interval="5m", min_success_duration="10m")
    assert w.record(sample(0)) is False
    assert w.record(sample(5)) is False
    assert w.record(sample(10, errors=False)) is False
    assert w.state.healthy_since is None
    assert w.record(sample(15)) is False
    assert w.state.healthy_since == START + timedelta(minutes=15)
    assert w.record(sample(20)) is False
    assert w.record(sample(25)) is True


def test_an_ignored_unhealthy_check_counts_as_healthy() -> None:
    evaluation = GateEvaluation(
        time=START,
        results=[
            CheckOutcome(check="health", healthy=True, reason="200"),
            CheckOutcome(check="errors", healthy=False, reason="ignored", ignored=True),
        ],
    )
    assert evaluation.healthy
    assert window().record(evaluation) is True


def test_an_unignored_unhealthy_check_makes_the_sample_unhealthy() -> None:
    assert not sample(0, errors=False).healthy
    assert sample(0).healthy


def test_every_evaluation_is_counted_and_the_last_ones_kept() -> None:
    w = window(min_success_duration="1d")
    for minute in range(KEPT_EVALUATIONS + 5):
        w.record(sample(minute, health=minute % 2 == 0))
    assert w.state.evaluation_count == KEPT_EVALUATIONS + 5
    assert len(w.state.evaluations) == KEPT_EVALUATIONS
    assert w.state.evaluations[0].time == START + timedelta(minutes=5)
    assert w.state.evaluations[-1].time == START + timedelta(minutes=KEPT_EVALUATIONS + 4)


def test_the_deadline_is_the_delay_plus_the_timeout_after_the_start() -> None:
    g = gates(delay="10m", timeout="2h")
    assert GateWindow.deadline(g, START) == START + timedelta(hours=2, minutes=10)
    assert GateWindow.deadline(gates(), START) == START + timedelta(hours=2)


def test_the_gates_time_out_at_the_deadline_not_before() -> None:
    w = window(delay="10m", timeout="1h")
    deadline = START + timedelta(hours=1, minutes=10)
    assert not w.timed_out(deadline - timedelta(seconds=1))
    assert w.timed_out(deadline)
    assert w.timed_out(deadline + timedelta(minutes=1))


def test_the_next_sample_is_one_interval_later() -> None:
    assert window(interval="30s").next_sample_at(START) == START + timedelta(seconds=30)


def test_time_left_never_goes_below_zero() -> None:
    assert time_left(START + timedelta(minutes=3), START) == timedelta(minutes=3)
    assert time_left(START, START + timedelta(minutes=3)) == timedelta(0)
