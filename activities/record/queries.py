"""Reading the record: one small function per question the CLI, the API and the pages ask.

Each opens one reading session, so everything it returns comes from one
snapshot of the database. Answers are the workflows' own models (ReleaseStatus,
StageAttempt, AuditEvent, ReleaseSpec) built from rows, or those in views.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from activities.record.database import Database
from activities.record.requests import ApiRequestRow, forbidden_event
from activities.record.tables import (
    AgentSessionRow,
    ApprovalRow,
    AuditEventRow,
    DecisionRow,
    DeploymentRow,
    GateRow,
    PipelineRow,
    ReleaseRow,
    ReleaseStageRow,
    RevisionRow,
    TaskRunRow,
    TaskTryRow,
)
from activities.record.views import (
    Deployed,
    RecordedRevision,
    StageDeployments,
    StatusMatrix,
    TrailEvent,
    Waiting,
)
from activities.record.waiting import waits_of
from workflows.approval_policy import ApprovalState, DecisionRecord
from workflows.audit import AuditEvent
from workflows.gates import GateEvaluation, GateState
from workflows.pipeline import Pipeline
from workflows.release import (
    FINAL_STATUSES,
    WAITING_ON_PEOPLE,
    AgentSession,
    Hold,
    ReleaseSpec,
    ReleaseStatus,
    ResolvedArtifact,
    StageAttempt,
    StageStatus,
    StageView,
    TaskRun,
    TaskStatus,
    held_stages,
    holds_in,
)

# What counts as "deployed" on a stage: its artifacts got there.
DEPLOYED_STATUSES = (StageStatus.SUCCEEDED.value, StageStatus.PARTIALLY_SUCCEEDED.value)
# A deployment that has begun and not ended.
UNDER_WAY = [
    status.value
    for status in StageStatus
    if status not in FINAL_STATUSES and status != StageStatus.NOT_DEPLOYED
]


async def releases(
    db: Database,
    pipeline: str | None = None,
    status: str | None = None,
    stage_status: str | None = None,
    created_by: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[ReleaseStatus]:
    """Releases newest first, filtered by pipeline, release status, the status of any
    of their stages (its latest attempt) and creator; each stage carries its latest
    attempt only, without tasks, approvals, gates or events."""
    async with db.reading() as session:
        return await _releases(session, pipeline, status, stage_status, created_by, limit, offset)


async def release(db: Database, pipeline: str, number: int) -> ReleaseStatus | None:
    """One release with every stage and every attempt in full (tasks and their tries,
    agents, approvals and decisions, gates, each deployment's events); None if unknown."""
    async with db.reading() as session:
        row = await _release_row(session, pipeline, number)
        if row is None:
            return None
        deployments = await _all(
            session,
            select(DeploymentRow)
            .where(DeploymentRow.release_id == row.id)
            .order_by(DeploymentRow.stage, DeploymentRow.attempt),
        )
        attempts = await _attempts(session, deployments)
        by_stage: dict[str, list[StageAttempt]] = defaultdict(list)
        for deployment in deployments:
            by_stage[deployment.stage].append(attempts[deployment.id])
        stages = await _all(
            session,
            select(ReleaseStageRow)
            .where(ReleaseStageRow.release_id == row.id)
            .order_by(ReleaseStageRow.position),
        )
        held = await _held(session, row)
        views = [
            StageView(
                name=stage.name,
                status=StageStatus(stage.status),
                trigger=stage.trigger,
                held=held[stage.name][1] if stage.name in held else "",
                attempts=by_stage.get(stage.name, []),
            )
            for stage in stages
        ]
        return _release_status(row, pipeline, views)


async def _held(session: AsyncSession, row: ReleaseRow) -> dict[str, tuple[Hold, str]]:
    """The release's holds in force, by its trail, and the stages they keep it from."""
    e = AuditEventRow
    found = await _all(
        session,
        select(e)
        .where(e.release_id == row.id, e.deployment_id.is_(None), e.action.in_(HOLD_ACTIONS))
        .order_by(e.time, e.id),
    )
    if not found:
        return {}
    events = [
        AuditEvent(
            time=r.time,
            actor=r.actor,
            action=r.action,
            stage=r.stage,
            outcome=r.outcome,
            detail=r.detail,
        )
        for r in found
    ]
    pipeline = ReleaseSpec.model_validate(row.snapshot).pipeline
    upstream = {stage.name: stage.upstream for stage in pipeline.stages}
    return held_stages(upstream, holds_in(events))


HOLD_ACTIONS = ("hold", "unhold")


async def release_spec(db: Database, pipeline: str, number: int) -> ReleaseSpec | None:
    """The release's snapshot: definition, artifact versions, variables; None if unknown."""
    async with db.reading() as session:
        row = await _release_row(session, pipeline, number)
        return None if row is None else ReleaseSpec.model_validate(row.snapshot)


async def history(db: Database, pipeline: str, number: int) -> list[AuditEvent] | None:
    """The release's audit trail and every deployment's, in time order (within one
    instant, in the order recorded); None if the release is unknown."""
    async with db.reading() as session:
        row = await _release_row(session, pipeline, number)
        if row is None:
            return None
        return [_event(event) for event in await _events(session, row.id)]


async def trail(db: Database, pipeline: str, number: int) -> list[TrailEvent] | None:
    """`history` as people read it: each event whose request came through the API says
    how its person signed in, and each request the API refused (403) is a refused
    event of its own (activities/record/requests.py)."""
    async with db.reading() as session:
        row = await _release_row(session, pipeline, number)
        if row is None:
            return None
        events = await _events(session, row.id)
        requests = await _all(
            session,
            select(ApiRequestRow)
            .where(ApiRequestRow.release_id == row.id)
            .order_by(ApiRequestRow.time, ApiRequestRow.id),
        )
    via = {r.request_id: r.via for r in requests if r.request_id and r.outcome != "forbidden"}
    found = [
        TrailEvent(**_event(event).model_dump(), via=via.get(event.request_id or ""))
        for event in events
    ]
    found += [
        TrailEvent(**forbidden_event(r).model_dump(), via=r.via)
        for r in requests
        if r.outcome == "forbidden"
    ]
    return sorted(found, key=lambda event: event.time)


async def _events(session: AsyncSession, release_id: int) -> Sequence[AuditEventRow]:
    return await _all(
        session,
        select(AuditEventRow)
        .where(AuditEventRow.release_id == release_id)
        .order_by(AuditEventRow.time, AuditEventRow.id),
    )


async def releases_waiting_on(
    db: Database, user: str | None = None, groups: Sequence[str] = ()
) -> list[Waiting]:
    """What waits on people across active releases (pending approvals, manual
    interventions, deferrals); with `user`, only what that user (signed in with
    identity-provider `groups`) may act on now."""
    async with db.reading() as session:
        stages, deployments, r = ReleaseStageRow, DeploymentRow, ReleaseRow
        found = (
            await session.execute(
                select(
                    deployments,
                    r.pipeline_id,
                    r.revision,
                    r.number,
                    r.name,
                    r.created_by,
                    r.created_at,
                )
                .join(
                    stages,
                    and_(
                        stages.release_id == deployments.release_id,
                        stages.name == deployments.stage,
                        stages.attempt == deployments.attempt,
                    ),
                )
                .join(r, r.id == deployments.release_id)
                .where(r.state == "active", stages.status.in_([s.value for s in WAITING_ON_PEOPLE]))
            )
        ).all()
        attempts = await _attempts(session, [row[0] for row in found])
        # One definition per revision (the sha256 of its text): parsed once, not per release.
        definitions: dict[tuple[int, str], Pipeline] = {}
        waits = []
        for deployment, pipeline_id, revision, number, name, created_by, created_at in found:
            key = (pipeline_id, revision)
            if key not in definitions:
                snapshot = (
                    await session.execute(
                        select(r.snapshot)
                        .where(r.pipeline_id == pipeline_id, r.revision == revision)
                        .limit(1)
                    )
                ).scalar_one()
                definitions[key] = Pipeline.model_validate(snapshot["pipeline"])
            spec = ReleaseSpec(
                pipeline=definitions[key],
                number=number,
                name=name,
                created_by=created_by,
                created_at=created_at,
                revision=revision,
            )
            for wait in waits_of(spec, deployment.stage, attempts[deployment.id]):
                if user is None or wait.waits_on(user, groups):
                    waits.append(wait)
        waits.sort(key=lambda w: (w.pipeline, w.number, w.stage, w.kind, w.phase))
        return waits


async def deployed_on(db: Database, pipeline: str) -> list[StageDeployments]:
    """Per stage of the pipeline: the release last deployed there (the last succeeded
    deployment by end time, a rollback included) and what is being deployed now."""
    async with db.reading() as session:
        return await _deployed_on(session, pipeline)


async def status_matrix(db: Database, pipeline: str, releases: int = 10) -> StatusMatrix:
    """`stageflow status PIPELINE`: the stages × the newest `releases` releases, and
    what is deployed on each stage now and what is in progress."""
    async with db.reading() as session:
        rows = await _releases(session, pipeline, None, None, None, releases, 0)
        deployed = await _deployed_on(session, pipeline)
        names = _in_order(
            [view.name for row in rows for view in row.stages] + [d.stage for d in deployed]
        )
        return StatusMatrix(pipeline=pipeline, stages=names, releases=rows, deployed=deployed)


async def pipeline_names(db: Database) -> list[str]:
    """Every pipeline the record knows, by name."""
    async with db.reading() as session:
        return list(await _all(session, select(PipelineRow.name).order_by(PipelineRow.name)))


async def revisions(db: Database, pipeline: str) -> list[RecordedRevision]:
    """The pipeline's change history: each definition revision, who brought it, when."""
    async with db.reading() as session:
        found = await _all(
            session,
            select(RevisionRow)
            .join(PipelineRow, PipelineRow.id == RevisionRow.pipeline_id)
            .where(PipelineRow.name == pipeline)
            .order_by(RevisionRow.time, RevisionRow.id),
        )
        return [
            RecordedRevision(
                sha256=r.sha256,
                author=r.author,
                time=r.time,
                first_release=r.first_release,
                definition=r.definition,
            )
            for r in found
        ]


# --- shared by the queries above ----------------------------------------------------


async def _releases(
    session: AsyncSession,
    pipeline: str | None,
    status: str | None,
    stage_status: str | None,
    created_by: str | None,
    limit: int,
    offset: int,
) -> list[ReleaseStatus]:
    r = ReleaseRow
    query = select(
        r.id,
        PipelineRow.name.label("pipeline"),
        r.number,
        r.name.label("release"),
        r.state,
        r.status,
        r.created_by,
        r.created_at,
        r.description,
        r.until,
        r.artifacts,
    ).join(PipelineRow, PipelineRow.id == r.pipeline_id)
    if pipeline is not None:
        pipeline_id = await _pipeline_id(session, pipeline)
        if pipeline_id is None:
            return []
        query = query.where(r.pipeline_id == pipeline_id)
    if status is not None:
        query = query.where(r.status == status)
    if created_by is not None:
        query = query.where(r.created_by == created_by)
    if stage_status is not None:
        query = query.where(
            select(ReleaseStageRow.id)
            .where(ReleaseStageRow.release_id == r.id, ReleaseStageRow.status == stage_status)
            .exists()
        )
    query = query.order_by(r.created_at.desc(), r.id.desc()).limit(limit).offset(offset)
    found = (await session.execute(query)).all()
    views = await _latest_views(session, [row.id for row in found])
    return [
        ReleaseStatus(
            pipeline=row.pipeline,
            number=row.number,
            name=row.release,
            state=row.state,
            status=row.status,
            created_by=row.created_by,
            created_at=row.created_at,
            description=row.description,
            until=row.until,
            artifacts=[ResolvedArtifact.model_validate(a) for a in row.artifacts],
            stages=views.get(row.id, []),
        )
        for row in found
    ]


async def _latest_views(
    session: AsyncSession, release_ids: list[int]
) -> dict[int, list[StageView]]:
    """Each release's stages, in order, with the latest attempt's summary."""
    if not release_ids:
        return {}
    stages, deployments = ReleaseStageRow, DeploymentRow
    found = (
        await session.execute(
            select(stages, deployments)
            .outerjoin(
                deployments,
                and_(
                    deployments.release_id == stages.release_id,
                    deployments.stage == stages.name,
                    deployments.attempt == stages.attempt,
                ),
            )
            .where(stages.release_id.in_(release_ids))
            .order_by(stages.release_id, stages.position)
        )
    ).all()
    views: dict[int, list[StageView]] = defaultdict(list)
    for stage, deployment in found:
        views[stage.release_id].append(
            StageView(
                name=stage.name,
                status=StageStatus(stage.status),
                trigger=stage.trigger,
                attempts=[] if deployment is None else [_attempt_of(deployment)],
            )
        )
    return views


async def _deployed_on(session: AsyncSession, pipeline: str) -> list[StageDeployments]:
    """The stages are the newest release's (and any other a deployment runs on now)."""
    pipeline_id = await _pipeline_id(session, pipeline)
    if pipeline_id is None:
        return []
    d, r, s = DeploymentRow, ReleaseRow, ReleaseStageRow
    columns = (
        d.stage,
        r.number,
        r.name.label("release"),
        d.attempt,
        d.status,
        d.triggered_by,
        d.reason,
        d.started_at,
        d.ended_at,
    )
    running: dict[str, list[Deployed]] = defaultdict(list)
    for row in (
        await session.execute(
            select(*columns)
            .join(r, r.id == d.release_id)
            .join(s, and_(s.release_id == d.release_id, s.name == d.stage, s.attempt == d.attempt))
            .where(d.pipeline_id == pipeline_id, d.status.in_(UNDER_WAY), r.state == "active")
            .order_by(r.created_at.desc(), r.id.desc())
        )
    ).all():
        running[row.stage].append(_deployed(row))
    newest = (
        await session.execute(
            select(s.name)
            .where(
                s.release_id
                == select(r.id)
                .where(r.pipeline_id == pipeline_id)
                .order_by(r.created_at.desc(), r.id.desc())
                .limit(1)
                .scalar_subquery()
            )
            .order_by(s.position)
        )
    ).scalars()
    found = []
    for name in _in_order([*newest, *running]):
        # Newest end first along (pipeline_id, stage, ended_at): a few rows, however many.
        last = (
            await session.execute(
                select(*columns)
                .join(r, r.id == d.release_id)
                .where(
                    d.pipeline_id == pipeline_id,
                    d.stage == name,
                    d.ended_at.is_not(None),
                    d.status.in_(DEPLOYED_STATUSES),
                )
                .order_by(d.ended_at.desc())
                .limit(PREVIOUS_SHOWN * 4)
            )
        ).all()
        deployed = [_deployed(row) for row in last]
        found.append(
            StageDeployments(
                stage=name,
                deployed=deployed[0] if deployed else None,
                previous=_previous(deployed),
                in_progress=running.get(name, []),
            )
        )
    return found


# `status PIPELINE` shows this many releases that were on a stage before the current one.
PREVIOUS_SHOWN = 3


def _previous(deployed: list[Deployed]) -> list[Deployed]:
    """The releases on the stage before the current one, newest first, each once."""
    seen = {deployed[0].number} if deployed else set()
    previous: list[Deployed] = []
    for deployment in deployed[1:]:
        if deployment.number not in seen and len(previous) < PREVIOUS_SHOWN:
            seen.add(deployment.number)
            previous.append(deployment)
    return previous


async def _attempts(
    session: AsyncSession, deployments: Iterable[DeploymentRow]
) -> dict[int, StageAttempt]:
    """Whole attempts for these deployment rows: one query per kind of part."""
    rows = {deployment.id: deployment for deployment in deployments}
    if not rows:
        return {}
    ids = list(rows)

    async def load(row: Any, key: Any, *order: Any) -> dict[int, list[Any]]:
        grouped: dict[int, list[Any]] = defaultdict(list)
        found = await session.execute(select(row).where(key.in_(ids)).order_by(key, *order))
        for item in found.scalars():
            grouped[getattr(item, key.key)].append(item)
        return grouped

    tasks = await load(TaskRunRow, TaskRunRow.deployment_id, TaskRunRow.position)
    sessions = await load(AgentSessionRow, AgentSessionRow.deployment_id, AgentSessionRow.position)
    approvals = await load(ApprovalRow, ApprovalRow.deployment_id, ApprovalRow.phase.desc())
    gates = await load(GateRow, GateRow.deployment_id, GateRow.phase.desc())
    events = await load(
        AuditEventRow, AuditEventRow.deployment_id, AuditEventRow.time, AuditEventRow.id
    )
    tries: dict[int, list[str]] = defaultdict(list)
    for task_run_id, log in await session.execute(
        select(TaskTryRow.task_run_id, TaskTryRow.log)
        .join(TaskRunRow, TaskRunRow.id == TaskTryRow.task_run_id)
        .where(TaskRunRow.deployment_id.in_(ids))
        .order_by(TaskTryRow.task_run_id, TaskTryRow.number)
    ):
        tries[task_run_id].append(log)
    decisions: dict[int, list[DecisionRecord]] = defaultdict(list)
    approval_ids = [a.id for group in approvals.values() for a in group]
    if approval_ids:
        for decision in (
            await session.execute(
                select(DecisionRow)
                .where(DecisionRow.approval_id.in_(approval_ids))
                .order_by(DecisionRow.approval_id, DecisionRow.position)
            )
        ).scalars():
            decisions[decision.approval_id].append(_decision(decision))
    return {
        deployment_id: _attempt_of(
            row,
            tasks=[_task(t, tries.get(t.id, [])) for t in tasks.get(deployment_id, [])],
            agents=[_session(a) for a in sessions.get(deployment_id, [])],
            approvals=[
                _approval(a, decisions.get(a.id, [])) for a in approvals.get(deployment_id, [])
            ],
            gates=[_gate(g) for g in gates.get(deployment_id, [])],
            events=[_event(e) for e in events.get(deployment_id, [])],
        )
        for deployment_id, row in rows.items()
    }


async def _pipeline_id(session: AsyncSession, pipeline: str) -> int | None:
    return (
        await session.execute(select(PipelineRow.id).where(PipelineRow.name == pipeline))
    ).scalar_one_or_none()


async def _release_row(session: AsyncSession, pipeline: str, number: int) -> ReleaseRow | None:
    return (
        await session.execute(
            select(ReleaseRow)
            .join(PipelineRow, PipelineRow.id == ReleaseRow.pipeline_id)
            .where(PipelineRow.name == pipeline, ReleaseRow.number == number)
        )
    ).scalar_one_or_none()


def _in_order(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


# --- rows to models -------------------------------------------------------------------


def _release_status(row: ReleaseRow, pipeline: str, stages: list[StageView]) -> ReleaseStatus:
    return ReleaseStatus(
        pipeline=pipeline,
        number=row.number,
        name=row.name,
        state=row.state,
        status=row.status,
        created_by=row.created_by,
        created_at=row.created_at,
        description=row.description,
        until=row.until,
        artifacts=[ResolvedArtifact.model_validate(a) for a in row.artifacts],
        stages=stages,
    )


def _attempt_of(row: DeploymentRow, **parts: Any) -> StageAttempt:
    return StageAttempt(
        attempt=row.attempt,
        status=StageStatus(row.status),
        workflow_id=row.workflow_id,
        triggered_by=row.triggered_by,
        reason=row.reason,
        started_at=row.started_at,
        ended_at=row.ended_at,
        message=row.message,
        waiting_until=row.waiting_until,
        waiting_reason=row.waiting_reason,
        **parts,
    )


def _deployed(row: Any) -> Deployed:
    return Deployed(
        number=row.number,
        release=row.release,
        attempt=row.attempt,
        status=StageStatus(row.status),
        triggered_by=row.triggered_by,
        reason=row.reason,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def _task(row: TaskRunRow, logs: list[str]) -> TaskRun:
    return TaskRun(
        job=row.job,
        task=row.task,
        status=TaskStatus(row.status),
        exit_code=row.exit_code,
        tries=row.tries,
        started_at=row.started_at,
        duration=row.duration,
        agent=row.agent,
        log=row.log,
        logs=logs,
        message=row.message,
        continue_on_error=row.continue_on_error,
    )


def _session(row: AgentSessionRow) -> AgentSession:
    return AgentSession(
        job=row.job,
        try_number=row.try_number,
        agent=row.agent,
        leased_at=row.leased_at,
        ended_at=row.ended_at,
        lost=row.lost,
        handed_back=row.handed_back,
    )


def _approval(row: ApprovalRow, decisions: list[DecisionRecord]) -> ApprovalState:
    return ApprovalState.model_validate(
        {
            "phase": row.phase,
            "policy": row.policy,
            "approvers": row.approvers,
            "status": row.status,
            "deadline": row.deadline,
            "done_entries": row.done_entries,
            "decisions": decisions,
            "defer_until": row.defer_until,
        }
    )


def _decision(row: DecisionRow) -> DecisionRecord:
    return DecisionRecord.model_validate(
        {
            "time": row.time,
            "by": row.by,
            "action": row.action,
            "comment": row.comment,
            "defer_until": row.defer_until,
            "outcome": row.outcome,
            "reason": row.reason,
            "request_id": row.request_id,
        }
    )


def _gate(row: GateRow) -> GateState:
    return GateState.model_validate(
        {
            "phase": row.phase,
            "status": row.status,
            "started_at": row.started_at,
            "deadline": row.deadline,
            "healthy_since": row.healthy_since,
            "ignored": row.ignored,
            "evaluations": [GateEvaluation.model_validate(e) for e in row.evaluations],
            "evaluation_count": row.evaluation_count,
        }
    )


def _event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        time=row.time,
        actor=row.actor,
        action=row.action,
        stage=row.stage,
        outcome=row.outcome,
        detail=row.detail,
        request_id=row.request_id,
    )


async def _all(session: AsyncSession, statement: Select[Any]) -> Sequence[Any]:
    """Every row a select of one entity returns."""
    return (await session.execute(statement)).scalars().all()
