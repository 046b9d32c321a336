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
from temporalio.exceptions import ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from workflows.names import (
        SA_ARTIFACTS,
        SA_CREATED_BY,
        SA_PIPELINE,
        SA_RELEASE,
        SA_STATUS,
        stage_workflow_id,
    )
    from workflows.pipeline import AfterStages, Model
    from workflows.release import (
        AbandonRequest,
        AuditEvent,
        CancelRequest,
        DeployRequest,
        ReleaseSpec,
        ReleaseStatus,
        StageAttempt,
        StageStatus,
        StageView,
        release_status_of,
    )
    from workflows.stage_dag import stages_to_trigger
    from workflows.stage_workflow import (
        StageInput,
        StageWorkflow,
        notify_mail,
        stage_search_attributes,
    )


class ReleaseState(Model):
    """What a release has done so far; carried across continue-as-new."""

    state: str = "active"
    stages: list[StageView]
    history: list[AuditEvent] = []
    last_activity: datetime


class ReleaseInput(Model):
    """Input of a ReleaseWorkflow: the snapshot, and the state when continued as new."""

    spec: ReleaseSpec
    state: ReleaseState | None = None


def release_search_attributes(spec: ReleaseSpec, status: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(SA_PIPELINE, spec.pipeline.name),
            SearchAttributePair(SA_RELEASE, spec.name),
            SearchAttributePair(SA_STATUS, status),
            SearchAttributePair(SA_CREATED_BY, spec.created_by),
            SearchAttributePair(SA_ARTIFACTS, [f"{a.alias}@{a.version}" for a in spec.artifacts]),
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
        self._requests: list[tuple[str, DeployRequest]] = []
        self._abandon: AbandonRequest | None = None
        # A stage is in here from the moment it is started; the handle once the child runs.
        self._running: dict[
            str, workflow.ChildWorkflowHandle[StageWorkflow, StageAttempt] | None
        ] = {}
        # The PipelineWorkflow starts a release with StageflowStatus=in_progress.
        self._status_attribute: str | None = "in_progress" if input.state is None else None
        self._tasks: set[asyncio.Task[None]] = set()

    @workflow.run
    async def run(self, input: ReleaseInput) -> ReleaseStatus:
        if input.state is None:
            self._record(self._spec.created_by, "create", detail=self._creation_detail())
            for name in self._triggered(finished=None):
                self._start_stage(name, self._spec.created_by, "after release")
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
                self._record("stageflow", "close", detail="retention passed with no activity")
                break
            while self._requests:
                action, request = self._requests.pop(0)
                self._handle_deploy(action, request)
            if self._abandon is not None:
                await self._do_abandon(self._abandon)
            elif self._can_continue():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(ReleaseInput(spec=self._spec, state=self._state))
        self._update_status_attribute()
        return self.status()

    # --- signals and queries --------------------------------------------------------

    @workflow.signal
    def deploy(self, request: DeployRequest) -> None:
        """Deploy a stage now (a manual stage, or one past the release's target)."""
        self._requests.append(("deploy", request))

    @workflow.signal
    def redeploy(self, request: DeployRequest) -> None:
        """Deploy a stage again: after a failure, or to put this release back (rollback)."""
        self._requests.append(("redeploy", request))

    @workflow.signal
    def abandon(self, request: AbandonRequest) -> None:
        """Close the release: running deployments are canceled, nothing more deploys."""
        if self._abandon is None:
            self._abandon = request

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

    def _handle_deploy(self, action: str, request: DeployRequest) -> None:
        names = self._spec.pipeline.stage_names
        refusal = None
        if self._state.state != "active" or self._abandon is not None:
            refusal = (
                f"the release is {self._state.state if self._abandon is None else 'abandoned'}"
            )
        elif request.stage not in names:
            refusal = f"unknown stage {request.stage!r} (stages: {', '.join(names)})"
        elif request.stage in self._running:
            refusal = f"stage {request.stage!r} is being deployed (attempt {self._view(request.stage).attempts[-1].attempt})"
        if refusal:
            self._record(
                request.by,
                action,
                stage=request.stage,
                outcome="refused",
                detail=refusal,
                request_id=request.request_id,
            )
            return
        self._record(request.by, action, stage=request.stage, request_id=request.request_id)
        self._start_stage(request.stage, request.by, action)

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
            result = view.attempts[-1].model_copy(
                update={
                    "status": StageStatus.FAILED,
                    "ended_at": workflow.now(),
                    "message": f"stage workflow failed: {err.cause or err}",
                }
            )
        finally:
            self._running.pop(stage, None)
        view.attempts[-1] = result
        view.status = result.status
        self._state.last_activity = workflow.now()
        self._record(
            "stageflow",
            "stage " + result.status.value,
            stage=stage,
            detail=f"attempt {attempt}" + (f": {result.message}" if result.message else ""),
        )
        for name in self._triggered(finished=stage):
            self._start_stage(name, by, f"after {stage}")
        self._update_status_attribute()
        self._notify_outcome(stage, result)

    async def _do_abandon(self, request: AbandonRequest) -> None:
        self._record(request.by, "abandon", detail=request.reason, request_id=request.request_id)
        self._state.state = "abandoned"
        self._update_status_attribute()
        for handle in list(self._running.values()):
            if handle is not None:
                await handle.signal(
                    StageWorkflow.cancel,
                    CancelRequest(
                        by=request.by, reason=f"release abandoned {request.reason}".strip()
                    ),
                )
        await workflow.wait_condition(lambda: not self._tasks)

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
        users = []
        for entry in notify.to:
            users += [u for u in self._spec.pipeline.members(entry) if u not in users]
        notify_mail(
            self._spec,
            stage,
            result.attempt,
            "outcome",
            users,
            status=result.status.value,
            message=result.message,
        )

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
        return max(self._spec.pipeline.retention - idle, timedelta(seconds=1))

    def _can_continue(self) -> bool:
        return not self._tasks and workflow.info().is_continue_as_new_suggested()

    def _creation_detail(self) -> str:
        versions = (
            ", ".join(f"{a.alias} {a.version}" for a in self._spec.artifacts) or "no artifacts"
        )
        until = f"; until {self._spec.until}" if self._spec.until else ""
        return f"{self._spec.name} from revision {self._spec.revision[:12]} ({versions}){until}"

    def _record(
        self,
        actor: str,
        action: str,
        *,
        stage: str | None = None,
        outcome: str = "accepted",
        detail: str = "",
        request_id: str | None = None,
    ) -> None:
        self._state.history.append(
            AuditEvent(
                time=workflow.now(),
                actor=actor,
                action=action,
                stage=stage,
                outcome=outcome,
                detail=detail,
                request_id=request_id,
            )
        )

    def _update_status_attribute(self) -> None:
        status = release_status_of(self._state.stages, self._state.state)
        if status != self._status_attribute:
            self._status_attribute = status
            workflow.upsert_search_attributes([SA_STATUS.value_set(status)])
