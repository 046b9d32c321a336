"""Every activity a workflow calls, in one table: its name, input and result types,
the queue it runs on, its timeouts and its retry policy.

Workflows call activities through these references, never by a bare string;
the workers register each function under the reference's name
(`@activity.defn(name=RUN_TASK.name)`), and tests/test_activity_refs.py checks
that every reference is served by the worker that polls its queue. A timeout
that depends on the input (a task's own timeout) is a function of the input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Generic, Literal, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.agent_api import (
        CleanupRequest,
        DownloadRequest,
        DownloadResult,
        LeaseRequest,
        LeaseResult,
        RunTaskRequest,
        RunTaskResult,
        ShipLogsRequest,
        ShipLogsResult,
    )
    from workflows.control_api import (
        CheckRequest,
        CheckResult,
        EndedRequest,
        EndedResult,
        NotificationRequest,
        NotificationResult,
        StartPlan,
        StartPlanRequest,
    )
    from workflows.record_api import RecordWrite, RetentionRequest, RetentionResult
    from workflows.triggering import FireRequest, TriggerOutcome

I = TypeVar("I")  # noqa: E741 - the input type
R = TypeVar("R")

# The lease heartbeats while the agent lives; this is how fast a dead agent is noticed.
LEASE_HEARTBEAT_TIMEOUT = timedelta(seconds=5)
TASK_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
NO_RETRY = RetryPolicy(maximum_attempts=1)
# Bookkeeping (ship a log, clean up, plan a start) is idempotent: retry it a little.
FEW_RETRIES = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=200))
# A mail is retried for a while, in the background: it never holds up a deployment.
MAIL_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    maximum_interval=timedelta(minutes=2),
    maximum_attempts=10,
)

Queue = Literal["control", "pool", "agent"]
Timeout = timedelta | Callable[[I], timedelta] | None


@dataclass(frozen=True)
class ActivityRef(Generic[I, R]):
    """One activity: what it takes and gives, where it runs, how long it may take."""

    name: str
    input: type[I]
    result: type[R]
    queue: Queue = "control"
    start_to_close: Timeout[I] = None
    schedule_to_close: Timeout[I] = None
    heartbeat: timedelta | None = None
    retry: RetryPolicy = field(default_factory=lambda: NO_RETRY)
    # How long it may wait for a worker to pick it up (None: as long as it may take).
    schedule_to_start: timedelta | None = None
    # Wait for the worker to confirm a cancellation (the workflow must know the
    # task's processes are dead before it moves on), or cancel and go on.
    wait_for_cancel: bool = False

    @property
    def cancellation(self) -> workflow.ActivityCancellationType:
        return (
            workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
            if self.wait_for_cancel
            else workflow.ActivityCancellationType.TRY_CANCEL
        )

    def start(
        self,
        arg: I,
        *,
        task_queue: str,
        summary: str,
        start_to_close: timedelta | None = None,
    ) -> workflow.ActivityHandle[R]:
        """Start the activity on `task_queue`; `start_to_close` overrides the table's."""
        return workflow.start_activity(
            self.name,
            arg,
            result_type=self.result,
            task_queue=task_queue,
            start_to_close_timeout=start_to_close or _resolve(self.start_to_close, arg),
            schedule_to_close_timeout=_resolve(self.schedule_to_close, arg),
            schedule_to_start_timeout=self.schedule_to_start,
            heartbeat_timeout=self.heartbeat,
            retry_policy=self.retry,
            cancellation_type=self.cancellation,
            summary=summary,
        )

    async def execute(
        self,
        arg: I,
        *,
        task_queue: str,
        summary: str,
        start_to_close: timedelta | None = None,
    ) -> R:
        return await self.start(
            arg, task_queue=task_queue, summary=summary, start_to_close=start_to_close
        )

    async def execute_local(self, arg: I, *, summary: str, start_to_close: timedelta) -> R:
        """Run it as a local activity, once: in the worker that runs the workflow, with
        no activity task and no workflow task of its own (one marker in the history).
        The workflow task waits for it, so only what takes milliseconds goes here."""
        return await workflow.execute_local_activity(
            self.name,
            arg,
            result_type=self.result,
            start_to_close_timeout=start_to_close,
            retry_policy=NO_RETRY,
            summary=summary,
        )


def _resolve(timeout: Timeout[I], arg: I) -> timedelta | None:
    return timeout(arg) if callable(timeout) else timeout


def _check_timeout(request: CheckRequest) -> timedelta:
    check = request.check
    own = check.http.timeout if check.http is not None else check.script.timeout  # type: ignore[union-attr]
    return own + timedelta(seconds=30)


# --- the table ------------------------------------------------------------------------

LEASE_AGENT = ActivityRef(
    "lease_agent",
    LeaseRequest,
    LeaseResult,
    queue="pool",
    start_to_close=timedelta(hours=2),  # the job's timeout + 10m, given at the call
    heartbeat=LEASE_HEARTBEAT_TIMEOUT,
)
DOWNLOAD_ARTIFACTS = ActivityRef(
    "download_artifacts",
    DownloadRequest,
    DownloadResult,
    queue="agent",
    start_to_close=timedelta(hours=2),
    # It heartbeats while it copies, and is idempotent (the content cache): after a
    # server outage Temporal retries it on the same agent instead of waiting 2 h.
    heartbeat=TASK_HEARTBEAT_TIMEOUT,
    retry=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=5,
    ),
)
RENEW_LEASE = ActivityRef(
    "renew_lease",
    LeaseRequest,
    LeaseResult,
    queue="agent",
    start_to_close=timedelta(hours=2),  # the job's timeout + 10m, given at the call
    heartbeat=LEASE_HEARTBEAT_TIMEOUT,
    # An agent that still holds the lease picks this up as soon as it polls again;
    # one that is gone never does.
    schedule_to_start=timedelta(seconds=15),
)
RUN_TASK = ActivityRef(
    "run_task",
    RunTaskRequest,
    RunTaskResult,
    queue="agent",
    start_to_close=lambda request: request.task.timeout + timedelta(minutes=1),
    heartbeat=TASK_HEARTBEAT_TIMEOUT,
    # Retried only after Temporal lost sight of it (a heartbeat timeout while the
    # server was down): the retry lands on the same agent, which attaches to the
    # run still going or returns its result, by the try's key. Never a second run.
    retry=RetryPolicy(
        initial_interval=timedelta(seconds=1),
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=10,
    ),
    wait_for_cancel=True,
)
SHIP_LOGS = ActivityRef(
    "ship_logs",
    ShipLogsRequest,
    ShipLogsResult,
    queue="agent",
    start_to_close=timedelta(minutes=10),
    retry=FEW_RETRIES,
)
CLEANUP = ActivityRef(
    "cleanup",
    CleanupRequest,
    type(None),
    queue="agent",
    start_to_close=timedelta(minutes=5),
    retry=FEW_RETRIES,
)
PLAN_START = ActivityRef(
    "plan_start",
    StartPlanRequest,
    StartPlan,
    start_to_close=timedelta(seconds=30),
    retry=FEW_RETRIES,
)
CHECK_HTTP = ActivityRef("check_http", CheckRequest, CheckResult, schedule_to_close=_check_timeout)
RUN_CHECK = ActivityRef(
    "run_check", CheckRequest, CheckResult, queue="pool", schedule_to_close=_check_timeout
)
SEND_NOTIFICATION = ActivityRef(
    "send_notification",
    NotificationRequest,
    NotificationResult,
    start_to_close=timedelta(minutes=1),
    schedule_to_close=timedelta(minutes=30),
    retry=MAIL_RETRIES,
)

# The record is written in the background and retried while the database is away:
# it never fails a deployment, and a write's versions make every retry harmless.
RECORD_RETRIES = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=["RecordRefused"],
)
# A workflow first tries a write as a local activity (workflows/recording.py), which
# holds its workflow task: the activity gives up after this, and the try's timeout
# is a backstop behind it.
RECORD_LOCAL_BUDGET = timedelta(seconds=1)
RECORD_LOCAL_TIMEOUT = RECORD_LOCAL_BUDGET + timedelta(seconds=4)
RECORD = ActivityRef(
    "record",
    RecordWrite,
    type(None),
    # A write takes milliseconds; one on a worker that died is retried after this.
    start_to_close=timedelta(seconds=10),
    retry=RECORD_RETRIES,
)
APPLY_RETENTION = ActivityRef(
    "apply_retention",
    RetentionRequest,
    RetentionResult,
    start_to_close=timedelta(hours=1),
    retry=FEW_RETRIES,
)

# The PipelineWorkflow asks which slot holders' workflows have ended without saying so
# (terminated in Temporal, or their release was), to free their slots.
ENDED_WORKFLOWS = ActivityRef(
    "ended_workflows",
    EndedRequest,
    EndedResult,
    start_to_close=timedelta(seconds=30),
    retry=FEW_RETRIES,
)

# A trigger's firing: look at what it watches, pin, and ask the PipelineWorkflow to
# release what is new (idempotent: what the trigger saw and the release keys say).
FIRE_TRIGGER = ActivityRef(
    "fire_trigger",
    FireRequest,
    TriggerOutcome,
    # Longer than a first mirror clone (10 min) and the logs after it: a retry must not
    # run beside a first try still reading git.
    start_to_close=timedelta(minutes=20),
    retry=FEW_RETRIES,
)

ALL: list[ActivityRef] = [  # type: ignore[type-arg]
    LEASE_AGENT,
    RENEW_LEASE,
    DOWNLOAD_ARTIFACTS,
    RUN_TASK,
    SHIP_LOGS,
    CLEANUP,
    PLAN_START,
    CHECK_HTTP,
    RUN_CHECK,
    SEND_NOTIFICATION,
    RECORD,
    APPLY_RETENTION,
    ENDED_WORKFLOWS,
    FIRE_TRIGGER,
]


def send_in_background(request: NotificationRequest, task_queue: str, summary: str) -> None:
    """Start a mail and do not wait: it is retried for a while (MAIL_RETRIES) and never
    fails or blocks a deployment."""
    handle = SEND_NOTIFICATION.start(request, task_queue=task_queue, summary=summary)
    # Nobody awaits the mail; look at its outcome so a failure is not an unhandled error.
    handle.add_done_callback(lambda done: done.cancelled() or done.exception())
