"""ReleaseWorkflow: one release taken through its stages, one StageWorkflow child each.

The release stays open ("active") after its automatic stages have run, so a
person can deploy or redeploy a stage later, until it is abandoned or its
retention passes with no activity.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ChildWorkflowError, TerminatedError

with workflow.unsafe.imports_passed_through():
    from workflows.activity_refs import send_in_background
    from workflows.audit import SYSTEM, AuditEvent, AuditTrail
    from workflows.deployment import StageInput
    from workflows.mail import mail, mail_summary
    from workflows.names import (
        SA_ARTIFACTS,
        SA_CREATED_BY,
        SA_PIPELINE,
        SA_RELEASE,
        SA_STATUS,
        SA_WORK_ITEMS,
        stage_workflow_id,
    )
    from workflows.pipeline import AfterStages, Model
    from workflows.record_api import AttemptWrite, RecordWrite
    from workflows.recording import RECORD_PATCH, RecordWriter
    from workflows.release import (
        AbandonRequest,
        CancelRequest,
        DeployRequest,
        Hold,
        HoldRequest,
        LateDecision,
        ReleaseSpec,
        ReleaseStatus,
        StageAttempt,
        StageStatus,
        StageView,
        held_stages,
        release_status_of,
    )
    from workflows.stage_dag import stages_to_trigger
    from workflows.stage_queue import REPORT_PATCH, report_end
    from workflows.stage_workflow import StageWorkflow, stage_search_attributes


class ReleaseState(Model):
    """What a release has done so far; carried across continue-as-new."""

    state: str = "active"
    stages: list[StageView]
    history: list[AuditEvent] = []
    last_activity: datetime
    # The run that continued as new had written all of the above to the record.
    recorded: bool = False
    holds: list[Hold] = []
    # Stages that would have started on their own but for a hold: (stage, by, reason).
    held_back: list[tuple[str, str, str]] = []


class ReleaseInput(Model):
    """Input of a ReleaseWorkflow: the snapshot, and the state when continued as new."""

    spec: ReleaseSpec
    state: ReleaseState | None = None


# Temporal refuses a search attribute value over 2 KB (by default): the start of the
# release would fail again and again. The record keeps every work item.
SEARCHABLE_BYTES = 1500
SEARCHABLE_ITEM = 100


def searchable(items: list[str]) -> list[str]:
    """The work items StageflowWorkItems holds: the first ones that fit its size."""
    kept, size = [], 0
    for item in items:
        if len(item) > SEARCHABLE_ITEM or size + len(item.encode()) + 4 > SEARCHABLE_BYTES:
            continue
        kept.append(item)
        size += len(item.encode()) + 4
    return kept


def release_search_attributes(spec: ReleaseSpec, status: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(SA_PIPELINE, spec.pipeline.name),
            SearchAttributePair(SA_RELEASE, spec.name),
            SearchAttributePair(SA_STATUS, status),
            SearchAttributePair(SA_CREATED_BY, spec.created_by),
            SearchAttributePair(SA_ARTIFACTS, [f"{a.alias}@{a.version}" for a in spec.artifacts]),
            # Only releases that bring work items carry the attribute (older ones never did).
            *(
                [SearchAttributePair(SA_WORK_ITEMS, searchable(spec.work_items))]
                if spec.work_items
                else []
            ),
        ]
    )


@workflow.defn(name="ReleaseWorkflow")
class ReleaseWorkflow:
    """A release: triggers stages, takes deploy/redeploy/abandon, keeps the audit trail."""

    @workflow.init
    def __init__(self, input: ReleaseInput) -> None:
        self._spec = input.spec
        self._state = input.state or ReleaseState(
            stages=[
                StageView(name=stage.name, trigger=stage.trigger_text)
                for stage in input.spec.pipeline.stages
            ],
            last_activity=workflow.now(),
        )
        self._trail = AuditTrail(self._state.history, workflow.now)
        self._requests: list[tuple[str, DeployRequest | HoldRequest]] = []
        self._abandon: AbandonRequest | None = None
        # What the main loop answered to each update's request, by the request object.
        self._answers: dict[int, AuditEvent] = {}
        # A stage is in here from the moment it is started; the handle once the child runs.
        self._running: dict[
            str, workflow.ChildWorkflowHandle[StageWorkflow, StageAttempt] | None
        ] = {}
        # The PipelineWorkflow starts a release with StageflowStatus=in_progress.
        self._status_attribute: str | None = "in_progress" if input.state is None else None
        self._tasks: set[asyncio.Task[None]] = set()
        # The record: what is written already, and the deployments still to write.
        self._recording = False
        self._recorded_release = self._state.recorded
        self._recorded_state = self._state.state if self._state.recorded else None
        self._recorded_events = len(self._state.history) if self._state.recorded else 0
        self._unrecorded: list[AttemptWrite] = []
        self._record = RecordWriter(self._record_pending, self._take_record)
        self._recorder: asyncio.Task[None] | None = None

    @workflow.run
    async def run(self, input: ReleaseInput) -> ReleaseStatus:
        if workflow.patched(RECORD_PATCH):
            self._start_recording()
        if input.state is None:
            self._trail.accept(self._spec.created_by, "create", self._creation_detail())
            for name in self._triggered(finished=None):
                self._start_or_hold(name, self._spec.created_by, "after release")
            self._update_status_attribute()
        while self._state.state == "active":
            try:
                await workflow.wait_condition(
                    lambda: (
                        bool(self._requests) or self._abandon is not None or self._can_continue()
                    ),
                    timeout=self._idle_timeout(),
                    timeout_summary="release retention: close when idle",
                )
            except TimeoutError:
                self._state.state = "closed"
                self._trail.accept(SYSTEM, "close", "retention passed with no activity")
                break
            self._answer_requests()
            if self._abandon is not None:
                await self._do_abandon(self._abandon)
            elif self._can_continue():
                # Updates that arrive meanwhile are answered before continuing as new.
                await workflow.wait_condition(
                    lambda: (
                        workflow.all_handlers_finished()
                        or bool(self._requests)
                        or self._abandon is not None
                    )
                )
                if not self._requests and self._abandon is None:
                    self._state.recorded = self._recording
                    workflow.continue_as_new(ReleaseInput(spec=self._spec, state=self._state))
        # Requests that came with the end are refused (the release is no longer active).
        self._answer_requests()
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._update_status_attribute()
        # The release's end is in the record before the workflow closes.
        await workflow.wait_condition(self._record.drained)
        return self.status()

    def _answer_requests(self) -> None:
        while self._requests:
            action, request = self._requests.pop(0)
            self._answers[id(request)] = self._handle_deploy(action, request)

    # --- signals and queries --------------------------------------------------------

    @workflow.update
    async def deploy(self, request: DeployRequest) -> AuditEvent:
        """Deploy a stage now (a manual stage, or one past the release's target)."""
        return await self._submit("deploy", request)

    @workflow.update
    async def redeploy(self, request: DeployRequest) -> AuditEvent:
        """Deploy a stage again: after a failure, or to put this release back (rollback)."""
        return await self._submit("redeploy", request)

    @workflow.update
    async def rollback(self, request: DeployRequest) -> AuditEvent:
        """Deploy this release again on a stage that has a newer one now: a rollback."""
        return await self._submit("rollback", request)

    @workflow.update
    async def hold(self, request: HoldRequest) -> AuditEvent:
        """Keep this release from being deployed to a stage and the stages after it."""
        return await self._submit("hold", request)

    @workflow.update
    async def unhold(self, request: HoldRequest) -> AuditEvent:
        """Lift a hold: stages it kept from starting on their own start now."""
        return await self._submit("unhold", request)

    @workflow.update
    async def abandon(self, request: AbandonRequest) -> AuditEvent:
        """Close the release: running deployments are canceled, nothing more deploys."""
        answered = self._trail.answered(request.request_id)
        if answered is not None:
            return answered
        if self._state.state != "active" or self._abandon is not None:
            state = "abandoned" if self._abandon is not None else self._state.state
            return self._trail.refuse(
                request.by, "abandon", f"the release is {state}", request_id=request.request_id
            )
        self._abandon = request
        await workflow.wait_condition(lambda: id(request) in self._answers)
        return self._answers.pop(id(request))

    @workflow.update
    async def late_decision(self, request: LateDecision) -> AuditEvent:
        """A person's decision on a stage whose deployment has ended (or never began):
        refused with the stage's state, and kept in the audit trail."""
        answered = self._trail.answered(request.request_id)
        if answered is not None:
            return answered
        names = self._spec.pipeline.stage_names
        if request.stage not in names:
            reason = f"unknown stage {request.stage!r} (stages: {', '.join(names)})"
        else:
            # A deployment that has just ended is taken in first, so its outcome is known.
            await workflow.wait_condition(lambda: request.stage not in self._running)
            view = self._view(request.stage)
            latest = view.latest
            reason = (
                f"stage {request.stage!r} has not been deployed: nothing to {request.action}"
                if latest is None
                else f"stage {request.stage!r} is {latest.status.value} "
                f"(attempt {latest.attempt}): nothing to {request.action}"
            )
        return self._trail.refuse(
            request.by, request.action, reason, stage=request.stage, request_id=request.request_id
        )

    # The signals releases started before this change were sent; same effect, no answer.

    @workflow.signal(name="deploy")
    def deploy_signal(self, request: DeployRequest) -> None:
        self._requests.append(("deploy", request))

    @workflow.signal(name="redeploy")
    def redeploy_signal(self, request: DeployRequest) -> None:
        self._requests.append(("redeploy", request))

    @workflow.signal(name="abandon")
    def abandon_signal(self, request: AbandonRequest) -> None:
        if self._abandon is None:
            self._abandon = request

    async def _submit(self, action: str, request: DeployRequest | HoldRequest) -> AuditEvent:
        """Hand a request to the main loop (the one place stages start) and wait for its answer."""
        answered = self._trail.answered(request.request_id)
        if answered is not None:
            return answered
        if self._state.state != "active":
            return self._trail.refuse(
                request.by,
                action,
                f"the release is {self._state.state}",
                stage=request.stage,
                request_id=request.request_id,
            )
        self._requests.append((action, request))
        await workflow.wait_condition(lambda: id(request) in self._answers)
        return self._answers.pop(id(request))

    @workflow.query
    def status(self) -> ReleaseStatus:
        """Every stage with its attempts; live task detail comes from each stage's `progress`."""
        spec = self._spec
        return ReleaseStatus(
            pipeline=spec.pipeline.name,
            number=spec.number,
            name=spec.name,
            state=self._state.state,
            status=release_status_of(self._state.stages, self._state.state),
            created_by=spec.created_by,
            created_at=spec.created_at,
            description=spec.description,
            until=spec.until,
            artifacts=spec.artifacts,
            stages=self._state.stages,
        )

    @workflow.query
    def history(self) -> list[AuditEvent]:
        """The audit trail: who did what, when, with what outcome."""
        return self._state.history

    @workflow.query
    def spec(self) -> ReleaseSpec:
        """The release snapshot: definition, artifact versions, variables."""
        return self._spec

    # --- deployments --------------------------------------------------------------

    def _handle_deploy(self, action: str, request: DeployRequest | HoldRequest) -> AuditEvent:
        names = self._spec.pipeline.stage_names
        refusal = None
        if self._state.state != "active" or self._abandon is not None:
            refusal = (
                f"the release is {self._state.state if self._abandon is None else 'abandoned'}"
            )
        elif request.stage not in names:
            refusal = f"unknown stage {request.stage!r} (stages: {', '.join(names)})"
        elif isinstance(request, HoldRequest):
            return self._handle_hold(action, request)
        elif request.stage in self._running:
            refusal = f"stage {request.stage!r} is being deployed (attempt {self._view(request.stage).attempts[-1].attempt})"
        elif self._hold_on(request.stage) is not None:
            refusal = self._view(request.stage).held
        if refusal:
            return self._trail.refuse(
                request.by, action, refusal, stage=request.stage, request_id=request.request_id
            )
        assert isinstance(request, DeployRequest)  # a hold was handled above
        event = self._trail.accept(
            request.by,
            action,
            request.detail,
            stage=request.stage,
            request_id=request.request_id,
        )
        self._start_stage(request.stage, request.by, action)
        return event

    # --- holds ----------------------------------------------------------------------

    def _handle_hold(self, action: str, request: HoldRequest) -> AuditEvent:
        held = next((h for h in self._state.holds if h.stage == request.stage), None)
        refusal = None
        if action == "hold" and held is not None:
            refusal = f"stage {request.stage!r} is held already (by {held.by}: {held.reason})"
        elif action == "unhold" and held is None:
            refusal = f"stage {request.stage!r} is not held"
        if refusal:
            return self._trail.refuse(
                request.by, action, refusal, stage=request.stage, request_id=request.request_id
            )
        event = self._trail.accept(
            request.by, action, request.reason, stage=request.stage, request_id=request.request_id
        )
        self._state.last_activity = workflow.now()
        if action == "hold":
            self._state.holds.append(
                Hold(stage=request.stage, by=request.by, reason=request.reason, time=workflow.now())
            )
        else:
            self._state.holds.remove(held)  # type: ignore[arg-type]
        self._show_holds()
        if action == "unhold":
            waiting, self._state.held_back = self._state.held_back, []
            for stage, by, reason in waiting:
                if stage not in self._running:
                    self._start_or_hold(stage, by, reason)
        return event

    def _hold_on(self, stage: str) -> Hold | None:
        """The hold that keeps this release off `stage`: on it, or on a stage before it."""
        if not self._state.holds:
            return None
        found = self._held().get(stage)
        return found[0] if found else None

    def _held(self) -> dict[str, tuple[Hold, str]]:
        upstream = {s.name: s.upstream for s in self._spec.pipeline.stages}
        return held_stages(upstream, self._state.holds)

    def _show_holds(self) -> None:
        held = self._held()
        for view in self._state.stages:
            view.held = held[view.name][1] if view.name in held else ""

    def _start_or_hold(self, stage: str, by: str, reason: str) -> None:
        """Start a stage that triggered on its own, unless a hold keeps it back."""
        if self._hold_on(stage) is None:
            self._start_stage(stage, by, reason)
            return
        if all(held != stage for held, _, _ in self._state.held_back):
            self._state.held_back.append((stage, by, reason))
            self._trail.accept(SYSTEM, "held back", self._view(stage).held, stage=stage)

    def _start_stage(self, stage: str, by: str, reason: str) -> None:
        view = self._view(stage)
        attempt = len(view.attempts) + 1
        view.attempts.append(
            StageAttempt(
                attempt=attempt,
                status=StageStatus.QUEUED,
                workflow_id=stage_workflow_id(
                    self._spec.pipeline.name, self._spec.number, stage, attempt
                ),
                triggered_by=by,
                reason=reason,
                started_at=workflow.now(),
            )
        )
        view.status = StageStatus.QUEUED
        self._state.last_activity = workflow.now()
        self._update_status_attribute()
        self._record_attempt(stage, view.attempts[-1])
        # Reserve the slot now so a second deploy of the same stage is refused at once.
        self._running[stage] = None
        task = asyncio.create_task(self._deploy_stage(stage, attempt, by, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deploy_stage(self, stage: str, attempt: int, by: str, reason: str) -> None:
        view = self._view(stage)
        workflow_id = view.attempts[-1].workflow_id
        try:
            handle = await workflow.start_child_workflow(
                StageWorkflow.run,
                StageInput(
                    spec=self._spec,
                    stage=stage,
                    attempt=attempt,
                    triggered_by=by,
                    reason=reason,
                    approved_upstream=self._approvers_upstream_of(stage),
                ),
                id=workflow_id,
                task_queue=workflow.info().task_queue,
                static_summary=(
                    f"{self._spec.pipeline.name} {self._spec.name} → {stage}, attempt {attempt}"
                ),
                search_attributes=stage_search_attributes(self._spec, stage, StageStatus.QUEUED),
                cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
            )
            self._running[stage] = handle
            view.status = StageStatus.IN_PROGRESS
            view.attempts[-1].status = StageStatus.IN_PROGRESS
            self._update_status_attribute()
            result = await handle
        except ChildWorkflowError as err:
            terminated = isinstance(err.cause, TerminatedError)
            result = view.attempts[-1].model_copy(
                update={
                    "status": StageStatus.TERMINATED if terminated else StageStatus.FAILED,
                    "ended_at": workflow.now(),
                    "message": (
                        "the stage workflow was terminated in Temporal"
                        if terminated
                        else f"stage workflow failed: {err.cause or err}"
                    ),
                }
            )
            # It could not say so itself: its slot in the stage's queue frees now.
            if workflow.patched(REPORT_PATCH):
                await report_end(self._spec, stage, result)
        finally:
            self._running.pop(stage, None)
        view.attempts[-1] = result
        view.status = result.status
        self._state.last_activity = workflow.now()
        self._record_attempt(stage, result)
        self._trail.accept(
            SYSTEM,
            "stage " + result.status.value,
            f"attempt {attempt}" + (f": {result.message}" if result.message else ""),
            stage=stage,
        )
        for name in self._triggered(finished=stage):
            self._start_or_hold(name, by, f"after {stage}")
        self._update_status_attribute()
        self._notify_outcome(stage, result)

    async def _do_abandon(self, request: AbandonRequest) -> None:
        self._answers[id(request)] = self._trail.accept(
            request.by, "abandon", request.reason, request_id=request.request_id
        )
        self._state.state = "abandoned"
        self._update_status_attribute()
        for handle in list(self._running.values()):
            if handle is not None:
                await handle.signal(
                    StageWorkflow.cancel_signal,
                    CancelRequest(
                        by=request.by, reason=f"release abandoned {request.reason}".strip()
                    ),
                )
        await workflow.wait_condition(lambda: not self._tasks)

    # --- the record -----------------------------------------------------------------

    def _start_recording(self) -> None:
        self._recording = True
        if not self._recorded_release:
            # A run before recording began (or continued as new from one): all of it.
            for view in self._state.stages:
                for attempt in view.attempts:
                    self._record_attempt(view.name, attempt)
        self._recorder = asyncio.create_task(self._record.run())

    def _record_attempt(self, stage: str, attempt: StageAttempt) -> None:
        """Write a deployment as this workflow knows it: when it is started (before its
        StageWorkflow writes anything) and when it has ended. Between, the StageWorkflow
        writes it; the release's copy then is older than the stage's own."""
        if self._recording:
            snapshot = attempt.model_copy(deep=True)
            self._unrecorded.append(
                AttemptWrite(stage=stage, attempt=snapshot, version=self._record.version())
            )

    def _record_pending(self) -> bool:
        return self._recording and (
            not self._recorded_release
            or self._recorded_state != self._state.state
            or bool(self._unrecorded)
            or self._recorded_events < len(self._state.history)
        )

    def _take_record(self) -> RecordWrite:
        """Everything not written yet: the snapshot the first time, the state when it
        changed, the deployments started or ended, the trail's new events."""
        state_changed = not self._recorded_release or self._recorded_state != self._state.state
        write = RecordWrite(
            pipeline=self._spec.pipeline.name,
            number=self._spec.number,
            spec=None if self._recorded_release else self._spec,
            state=self._state.state if state_changed else None,
            version=self._record.version() if state_changed else 0,
            attempts=self._unrecorded,
            events=self._state.history[self._recorded_events :],
        )
        self._recorded_release = True
        self._recorded_state = self._state.state
        self._recorded_events = len(self._state.history)
        self._unrecorded = []
        return write

    # --- helpers --------------------------------------------------------------------

    def _approvers_upstream_of(self, stage: str) -> list[str]:
        """Who approved the pre-deployment of the stages this one triggers after."""
        users: list[str] = []
        for upstream in self._spec.pipeline.stage(stage).upstream:
            latest = self._view(upstream).latest
            approval = latest.approval("pre") if latest else None
            for decision in approval.decisions if approval else []:
                if decision.action == "approve" and decision.outcome == "accepted":
                    users.append(decision.by)
        return users

    def _notify_outcome(self, stage: str, result: StageAttempt) -> None:
        """Mail the stage's `notify` subscribers about the outcome, in the background."""
        notify = self._spec.pipeline.stage(stage).notify
        if notify is None or result.status.value not in notify.on:
            return
        users = self._spec.pipeline.people(notify.to)
        request = mail(
            self._spec,
            stage,
            result.attempt,
            "outcome",
            users,
            status=result.status.value,
            message=result.message,
        )
        if request is not None:
            send_in_background(request, workflow.info().task_queue, mail_summary(request))

    def _triggered(self, finished: str | None) -> list[str]:
        triggers: dict[str, str | list[str]] = {}
        for stage in self._spec.pipeline.stages:
            triggers[stage.name] = stage.upstream or str(stage.trigger)
        statuses = {view.name: view.status.value for view in self._state.stages}
        partial_ok = {
            stage.name
            for stage in self._spec.pipeline.stages
            if isinstance(stage.trigger, AfterStages) and stage.trigger.when_partially_succeeded
        }
        return stages_to_trigger(
            triggers, statuses, set(self._running), self._spec.until, finished, partial_ok
        )

    def _view(self, stage: str) -> StageView:
        return next(view for view in self._state.stages if view.name == stage)

    def _idle_timeout(self) -> timedelta | None:
        if self._running or self._tasks:
            return None
        idle = workflow.now() - self._state.last_activity
        return max(self._spec.pipeline.close_idle_after - idle, timedelta(seconds=1))

    def _can_continue(self) -> bool:
        return (
            not self._tasks
            and workflow.info().is_continue_as_new_suggested()
            and self._record.drained()
        )

    def _creation_detail(self) -> str:
        versions = (
            ", ".join(f"{a.alias} {a.version}" for a in self._spec.artifacts) or "no artifacts"
        )
        until = f"; until {self._spec.until}" if self._spec.until else ""
        return f"{self._spec.name} from revision {self._spec.revision[:12]} ({versions}){until}"

    def _update_status_attribute(self) -> None:
        status = release_status_of(self._state.stages, self._state.state)
        if status != self._status_attribute:
            self._status_attribute = status
            workflow.upsert_search_attributes([SA_STATUS.value_set(status)])
