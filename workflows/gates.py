"""Gate evaluation window: sampled health checks that must stay healthy long enough.
Pure: no Temporal, no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import Field

from workflows.pipeline import Gates, Model

KEPT_EVALUATIONS = 100


class CheckOutcome(Model):
    check: str
    healthy: bool
    reason: str
    ignored: bool = False


class GateEvaluation(Model):
    time: datetime
    results: list[CheckOutcome]

    @property
    def healthy(self) -> bool:
        return all(result.healthy or result.ignored for result in self.results)


class GateState(Model):
    """The gates of one phase of one deployment: every evaluation kept and shown."""

    phase: Literal["pre", "post"]
    status: Literal["waiting", "evaluating", "passed", "timed_out"] = "waiting"
    started_at: datetime
    deadline: datetime
    healthy_since: datetime | None = None
    ignored: list[str] = []
    evaluations: list[GateEvaluation] = Field([], description=f"the last {KEPT_EVALUATIONS}")
    evaluation_count: int = 0


class GateWindow:
    """Passes when every sample since `healthy_since` was healthy for min_success_duration.

    All checks must pass in the same sample; one unhealthy sample restarts the
    window. With min_success_duration 0 the first healthy sample passes.
    """

    def __init__(self, gates: Gates, state: GateState) -> None:
        self.gates = gates
        self.state = state

    def record(self, evaluation: GateEvaluation) -> bool:
        """Add one sample; True when the gates have passed."""
        state = self.state
        state.evaluations = [*state.evaluations, evaluation][-KEPT_EVALUATIONS:]
        state.evaluation_count += 1
        if not evaluation.healthy:
            state.healthy_since = None
            return False
        if state.healthy_since is None:
            state.healthy_since = evaluation.time
        if evaluation.time - state.healthy_since >= self.gates.min_success_duration:
            state.status = "passed"
            return True
        return False

    def next_sample_at(self, now: datetime) -> datetime:
        return now + self.gates.interval

    def timed_out(self, now: datetime) -> bool:
        return now >= self.state.deadline

    @staticmethod
    def deadline(gates: Gates, started: datetime) -> datetime:
        return started + gates.delay + gates.timeout


def time_left(deadline: datetime, now: datetime) -> timedelta:
    return max(deadline - now, timedelta(0))
