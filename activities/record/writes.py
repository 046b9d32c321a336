"""Writing the record: what the record activity calls, one function per kind of write.

Every write is idempotent and ordered by a version the caller gives:

- a row built from a workflow's state (a release, a deployment and its tasks,
  agent sessions, approvals, decisions and gates) is replaced only by a write
  with a higher `version` (upsert-if-newer): the same write again changes
  nothing, an older write arriving late changes nothing. A version must grow
  with every change of what is written, across the workflow's whole life
  (continue-as-new included), and be comparable between the workflows that
  write the same row: the ReleaseWorkflow writes an attempt when it starts it
  and when its child ends, the StageWorkflow while it runs (e.g. microseconds of
  `workflow.now()`, which both share and which never goes back);
- an audit event never changes: its `event_id` (below) makes a second write of
  it a no-op, so a trail can be written whole each time or in parts;
- a revision keeps what was first known of it (author, time); a definition
  text or first release missing then is filled in later.

Rows of a deployment are written in one transaction with the deployment, under
its version: if the deployment's write is not newer, none of them is touched
(its audit events are still taken in, being immutable).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from activities.record.database import Database
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
    ReleaseWorkItemRow,
    RevisionRow,
    TaskRunRow,
    TaskTryRow,
)
from workflows.audit import AuditEvent
from workflows.pipeline import SecretRef
from workflows.record_api import RecordWrite
from workflows.release import (
    ReleaseSpec,
    ReleaseStatus,
    StageAttempt,
    StageStatus,
    StageView,
    release_status_of,
)

RELEASE_TRAIL = "release"


class ReleaseNotRecorded(LookupError):
    """A deployment or event of a release whose release row is not written yet:
    write the release first (the activity retries until it is)."""


def event_id(event: AuditEvent, scope: str) -> str:
    """The stable identity of an audit event within its release.

    `scope` is the trail it belongs to: `release` for the release's own, or
    `<stage>/<attempt>` for a deployment's. An event answering a request is
    identified by the request (one request has one answer in a trail, and a
    retried request is answered with the same event); any other by everything it
    says: its time (the workflow's, to the microsecond), actor, action, stage,
    outcome and detail. Two events saying all the same at the same instant in
    the same trail are one event in the record.
    """
    if event.request_id:
        parts = [scope, "request", event.request_id]
    else:
        parts = [
            scope,
            event.time.astimezone(UTC).isoformat(),
            event.actor,
            event.action,
            event.stage or "",
            event.outcome,
            event.detail,
        ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def attempt_scope(stage: str, attempt: int) -> str:
    return f"{stage}/{attempt}"


async def record_revision(
    db: Database,
    pipeline: str,
    sha256: str,
    author: str,
    time: datetime,
    definition: str | None = None,
    first_release: int | None = None,
) -> None:
    """Record one version of a pipeline's definition (the pipeline's change history)."""
    await db.run_write(write_revision, pipeline, sha256, author, time, definition, first_release)


def write_revision(
    session: Connection,
    pipeline: str,
    sha256: str,
    author: str,
    time: datetime,
    definition: str | None,
    first_release: int | None,
) -> None:
    pipeline_id = _pipeline_id(session, pipeline)
    table = _table(RevisionRow)
    stmt = _insert(session, table).values(
        pipeline_id=pipeline_id,
        sha256=sha256,
        author=author,
        time=time,
        definition=definition,
        first_release=first_release,
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["pipeline_id", "sha256"],
            set_={
                "definition": func.coalesce(table.c.definition, stmt.excluded.definition),
                "first_release": func.coalesce(table.c.first_release, stmt.excluded.first_release),
            },
        )
    )


async def record_release(
    db: Database, spec: ReleaseSpec, version: int, state: str = "active"
) -> bool:
    """Record a release: its snapshot (written once), its stages and its state.

    True when this write changed the release (it was new, or newer than the one
    recorded); the snapshot never changes once written. The revision it was made
    from is recorded too (without the definition's text; see record_revision).
    """
    return await db.run_write(_record_release, spec, version, state)


def _record_release(session: Connection, spec: ReleaseSpec, version: int, state: str) -> bool:
    release_id, _, changed = _write_release(session, spec, version, state)
    if changed:
        _refresh_release_status(session, release_id)
    return changed


def _write_release(
    session: Connection, spec: ReleaseSpec, version: int, state: str
) -> tuple[int, int, bool]:
    """record_release in `session`: the release's and its pipeline's ids, and whether
    it changed (its status is not refreshed)."""
    pipeline_id = _pipeline_id(session, spec.pipeline.name)
    revisions = _table(RevisionRow)
    session.execute(
        _insert(session, revisions)
        .values(
            pipeline_id=pipeline_id,
            sha256=spec.revision,
            author=spec.created_by,
            time=spec.created_at,
            first_release=spec.number,
        )
        .on_conflict_do_nothing(index_elements=["pipeline_id", "sha256"])
    )
    table = _table(ReleaseRow)
    stmt = _insert(session, table).values(
        pipeline_id=pipeline_id,
        number=spec.number,
        name=spec.name,
        revision=spec.revision,
        state=state,
        status=state if state != "active" else "not_deployed",
        created_by=spec.created_by,
        created_at=spec.created_at,
        description=spec.description,
        until=spec.until,
        artifacts=[a.model_dump(mode="json") for a in spec.artifacts],
        variables=recorded_variables(spec),
        snapshot=spec.model_dump(mode="json"),
        version=version,
    )
    changed = (
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["pipeline_id", "number"],
                set_={"state": stmt.excluded.state, "version": stmt.excluded.version},
                where=table.c.version < stmt.excluded.version,
            ).returning(table.c.id)
        )
    ).scalar_one_or_none()
    release_id = changed if changed is not None else _release_id(session, pipeline_id, spec.number)
    if spec.work_items:
        session.execute(
            _insert(session, _table(ReleaseWorkItemRow)).on_conflict_do_nothing(
                index_elements=["release_id", "item"]
            ),
            [{"release_id": release_id, "item": item[:200]} for item in spec.work_items],
        )
    stages = [
        {
            "release_id": release_id,
            "position": position,
            "name": stage.name,
            "trigger": stage.trigger_text,
            "status": StageStatus.NOT_DEPLOYED.value,
            "attempt": 0,
            "version": 0,
        }
        for position, stage in enumerate(spec.pipeline.stages)
    ]
    session.execute(
        _insert(session, _table(ReleaseStageRow)).on_conflict_do_nothing(
            index_elements=["release_id", "name"]
        ),
        stages,
    )
    return release_id, pipeline_id, changed is not None


async def record_state(db: Database, pipeline: str, number: int, state: str, version: int) -> bool:
    """Record the release's state (active, abandoned, closed) if `version` is newer than
    the one recorded. True when applied. Raises ReleaseNotRecorded for an unknown release."""
    return await db.run_write(_record_state, pipeline, number, state, version)


def _record_state(
    session: Connection, pipeline: str, number: int, state: str, version: int
) -> bool:
    release_id, _ = _lock_release(session, pipeline, number)
    applied = _write_state(session, release_id, state, version)
    if applied:
        _refresh_release_status(session, release_id)
    return applied


def _write_state(session: Connection, release_id: int, state: str, version: int) -> bool:
    releases = _table(ReleaseRow)
    applied = (
        session.execute(
            update(releases)
            .where(releases.c.id == release_id, releases.c.version < version)
            .values(state=state, version=version)
            .returning(releases.c.id)
        )
    ).scalar_one_or_none()
    return applied is not None


async def record_attempt(
    db: Database, pipeline: str, number: int, stage: str, attempt: StageAttempt, version: int
) -> bool:
    """Record one deployment as `attempt` shows it: its row, tasks and their tries,
    agent sessions, approvals with their decisions, gates, and its audit events.

    True when this write was newer than the one recorded (and so applied).
    Raises ReleaseNotRecorded when the release has not been recorded yet.
    """
    return await db.run_write(_record_attempt, pipeline, number, stage, attempt, version)


def _record_attempt(
    session: Connection, pipeline: str, number: int, stage: str, attempt: StageAttempt, version: int
) -> bool:
    release_id, pipeline_id = _lock_release(session, pipeline, number)
    applied = _write_attempt(session, release_id, pipeline_id, stage, attempt, version)
    if applied:
        _refresh_release_status(session, release_id)
    return applied


def _write_attempt(
    session: Connection,
    release_id: int,
    pipeline_id: int,
    stage: str,
    attempt: StageAttempt,
    version: int,
) -> bool:
    """record_attempt in `session` (the release's status is not refreshed)."""
    table = _table(DeploymentRow)
    stmt = _insert(session, table).values(
        release_id=release_id,
        pipeline_id=pipeline_id,
        stage=stage,
        attempt=attempt.attempt,
        workflow_id=attempt.workflow_id,
        status=attempt.status.value,
        reason=attempt.reason,
        triggered_by=attempt.triggered_by,
        started_at=attempt.started_at,
        ended_at=attempt.ended_at,
        agent=attempt.agents[-1].agent if attempt.agents else None,
        message=attempt.message,
        waiting_until=attempt.waiting_until,
        waiting_reason=attempt.waiting_reason,
        version=version,
    )
    applied = (
        session.execute(
            _newer(stmt, table, ["release_id", "stage", "attempt"]).returning(table.c.id)
        )
    ).scalar_one_or_none()
    if applied is not None:
        deployment_id = applied
        _record_parts(session, deployment_id, attempt, version)
        stages = _table(ReleaseStageRow)
        session.execute(
            update(stages)
            .where(
                stages.c.release_id == release_id,
                stages.c.name == stage,
                or_(
                    stages.c.attempt < attempt.attempt,
                    and_(stages.c.attempt == attempt.attempt, stages.c.version < version),
                ),
            )
            .values(status=attempt.status.value, attempt=attempt.attempt, version=version)
        )
    elif attempt.events:
        deployment_id = (
            session.execute(
                select(table.c.id).where(
                    table.c.release_id == release_id,
                    table.c.stage == stage,
                    table.c.attempt == attempt.attempt,
                )
            )
        ).scalar_one()
    if attempt.events:
        _insert_events(
            session,
            release_id,
            deployment_id,
            attempt_scope(stage, attempt.attempt),
            attempt.events,
        )
    return applied is not None


async def record_events(
    db: Database, pipeline: str, number: int, events: Sequence[AuditEvent]
) -> None:
    """Record events of the release's own trail (the whole trail or any part of it).

    Raises ReleaseNotRecorded when the release has not been recorded yet.
    """
    await db.run_write(_record_events, pipeline, number, events)


def _record_events(
    session: Connection, pipeline: str, number: int, events: Sequence[AuditEvent]
) -> None:
    release_id, _ = _lock_release(session, pipeline, number)
    _insert_events(session, release_id, None, RELEASE_TRAIL, events)


async def record_write(db: Database, write: RecordWrite) -> None:
    """Record one write of a workflow (the record activity's), in one transaction: the
    release (its snapshot the first time), its state, its deployments, its trail,
    each part newer-only as in the functions above; the release's status once.

    Raises ReleaseNotRecorded when the write has no snapshot and the release has not
    been recorded yet (nothing of the write is then applied)."""
    await db.run_write(_record_write, write)


def _record_write(session: Connection, write: RecordWrite) -> None:
    if write.spec is not None:
        release_id, pipeline_id, changed = _write_release(
            session, write.spec, write.version, write.state or "active"
        )
    else:
        release_id, pipeline_id = _lock_release(session, write.pipeline, write.number)
        changed = write.state is not None and _write_state(
            session, release_id, write.state, write.version
        )
    for part in write.attempts:
        applied = _write_attempt(
            session, release_id, pipeline_id, part.stage, part.attempt, part.version
        )
        changed = changed or applied
    _insert_events(session, release_id, None, RELEASE_TRAIL, write.events)
    if changed:
        _refresh_release_status(session, release_id)


async def import_release(
    db: Database,
    spec: ReleaseSpec,
    status: ReleaseStatus,
    history: Sequence[AuditEvent],
    version: int,
) -> None:
    """Record a release as a ReleaseWorkflow's queries show it (the backfill of
    releases that exist only in Temporal): the release, every attempt, the trail.

    Give a `version` below any the workflows write (0): what a running release
    records itself then wins over what the backfill took from its queries."""
    await record_release(db, spec, version, state=status.state)
    for view in status.stages:
        for attempt in view.attempts:
            await record_attempt(db, spec.pipeline.name, spec.number, view.name, attempt, version)
    await record_events(db, spec.pipeline.name, spec.number, history)


def recorded_variables(spec: ReleaseSpec) -> dict[str, Any]:
    """The release's variables as recorded: pipeline values, then release-time ones;
    a secret is kept as where its value lives (`{"secret": "env:NAME"}`), never a value."""
    merged: dict[str, Any] = {
        name: value.model_dump() if isinstance(value, SecretRef) else value
        for name, value in spec.pipeline.variables.items()
    }
    merged.update(spec.variables)
    return merged


# --- the parts of a deployment ---------------------------------------------------


def _record_parts(
    session: Connection, deployment_id: int, attempt: StageAttempt, version: int
) -> None:
    """The deployment's rows as `attempt` shows them; each row newer-only, and rows the
    attempt no longer has (a shorter list, a phase gone) removed."""
    sessions = _table(AgentSessionRow)
    _upsert_many(
        session,
        sessions,
        ["deployment_id", "position"],
        [
            {
                "deployment_id": deployment_id,
                "position": position,
                "job": lease.job,
                "try_number": lease.try_number,
                "agent": lease.agent,
                "leased_at": lease.leased_at,
                "ended_at": lease.ended_at,
                "lost": lease.lost,
                "handed_back": lease.handed_back,
                "version": version,
            }
            for position, lease in enumerate(attempt.agents)
        ],
    )
    _remove_beyond(session, sessions, deployment_id, len(attempt.agents), version)

    tasks = _table(TaskRunRow)
    _upsert_many(
        session,
        tasks,
        ["deployment_id", "position"],
        [
            {
                "deployment_id": deployment_id,
                "position": position,
                "job": run.job,
                "task": run.task,
                "status": run.status.value,
                "exit_code": run.exit_code,
                "tries": run.tries,
                "started_at": run.started_at,
                "duration": run.duration,
                "agent": run.agent,
                "log": run.log,
                "message": run.message,
                "continue_on_error": run.continue_on_error,
                "version": version,
            }
            for position, run in enumerate(attempt.tasks)
        ],
    )
    _remove_beyond(session, tasks, deployment_id, len(attempt.tasks), version)
    if any(run.logs for run in attempt.tasks):
        found = session.execute(
            select(tasks.c.position, tasks.c.id).where(tasks.c.deployment_id == deployment_id)
        )
        ids = {position: task_run_id for position, task_run_id in found}
        _upsert_many(
            session,
            _table(TaskTryRow),
            ["task_run_id", "number"],
            [
                {"task_run_id": ids[position], "number": number, "log": log, "version": version}
                for position, run in enumerate(attempt.tasks)
                for number, log in enumerate(run.logs, start=1)
            ],
        )

    approvals = _table(ApprovalRow)
    decisions = _table(DecisionRow)
    for approval in attempt.approvals:
        stmt = _insert(session, approvals).values(
            deployment_id=deployment_id,
            phase=approval.phase,
            policy=approval.policy,
            approvers=approval.approvers,
            status=approval.status,
            deadline=approval.deadline,
            done_entries=approval.done_entries,
            defer_until=approval.defer_until,
            version=version,
        )
        approval_id = (
            session.execute(
                _newer(stmt, approvals, ["deployment_id", "phase"]).returning(approvals.c.id)
            )
        ).scalar_one_or_none()
        if approval_id is None:
            continue
        _upsert_many(
            session,
            decisions,
            ["approval_id", "position"],
            [
                {
                    "approval_id": approval_id,
                    "position": position,
                    "time": decision.time,
                    "decided_by": decision.by,
                    "action": decision.action,
                    "comment": decision.comment,
                    "defer_until": decision.defer_until,
                    "outcome": decision.outcome,
                    "reason": decision.reason,
                    "request_id": decision.request_id,
                    "version": version,
                }
                for position, decision in enumerate(approval.decisions)
            ],
        )
    session.execute(
        delete(approvals).where(
            approvals.c.deployment_id == deployment_id,
            approvals.c.phase.not_in([a.phase for a in attempt.approvals]),
            approvals.c.version < version,
        )
    )

    gates = _table(GateRow)
    _upsert_many(
        session,
        gates,
        ["deployment_id", "phase"],
        [
            {
                "deployment_id": deployment_id,
                "phase": gate.phase,
                "status": gate.status,
                "started_at": gate.started_at,
                "deadline": gate.deadline,
                "healthy_since": gate.healthy_since,
                "ignored": gate.ignored,
                "evaluation_count": gate.evaluation_count,
                "evaluations": [e.model_dump(mode="json") for e in gate.evaluations],
                "version": version,
            }
            for gate in attempt.gates
        ],
    )
    session.execute(
        delete(gates).where(
            gates.c.deployment_id == deployment_id,
            gates.c.phase.not_in([g.phase for g in attempt.gates]),
            gates.c.version < version,
        )
    )


def _insert_events(
    session: Connection,
    release_id: int,
    deployment_id: int | None,
    scope: str,
    events: Sequence[AuditEvent],
) -> None:
    if not events:
        return
    rows = [
        {
            "release_id": release_id,
            "deployment_id": deployment_id,
            "event_id": event_id(event, scope),
            "time": event.time,
            "actor": event.actor,
            "action": event.action,
            "stage": event.stage,
            "outcome": event.outcome,
            "detail": event.detail,
            "request_id": event.request_id,
        }
        for event in events
    ]
    session.execute(
        _insert(session, _table(AuditEventRow)).on_conflict_do_nothing(
            index_elements=["release_id", "event_id"]
        ),
        rows,
    )


# --- helpers ---------------------------------------------------------------------


def _table(row: type[Any]) -> Table:
    table = row.__table__
    assert isinstance(table, Table)
    return table


def _insert(session: Connection, table: Table) -> Any:
    """INSERT with the dialect's ON CONFLICT (PostgreSQL and SQLite spell it alike)."""
    if session.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _newer(stmt: Any, table: Table, key: list[str]) -> Any:
    """Insert, or replace every column but the key when the new row's version is higher."""
    return stmt.on_conflict_do_update(
        index_elements=key,
        set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in {"id", *key}},
        where=table.c.version < stmt.excluded.version,
    )


def _upsert_many(
    session: Connection, table: Table, key: list[str], rows: list[dict[str, Any]]
) -> None:
    if rows:
        session.execute(_newer(_insert(session, table), table, key), rows)


def _remove_beyond(
    session: Connection, table: Table, deployment_id: int, count: int, version: int
) -> None:
    session.execute(
        delete(table).where(
            table.c.deployment_id == deployment_id,
            table.c.position >= count,
            table.c.version < version,
        )
    )


def _pipeline_id(session: Connection, name: str) -> int:
    pipelines = _table(PipelineRow)
    session.execute(
        _insert(session, pipelines)
        .values(name=name)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return (session.execute(select(pipelines.c.id).where(pipelines.c.name == name))).scalar_one()


def _release_id(session: Connection, pipeline_id: int, number: int) -> int:
    releases = _table(ReleaseRow)
    return (
        session.execute(
            select(releases.c.id).where(
                releases.c.pipeline_id == pipeline_id, releases.c.number == number
            )
        )
    ).scalar_one()


def _lock_release(session: Connection, pipeline: str, number: int) -> tuple[int, int]:
    """The release's id and its pipeline's, the release's row locked until the transaction
    ends (PostgreSQL; SQLite's writer holds the database), so one release's writes
    apply one after another."""
    releases, pipelines = _table(ReleaseRow), _table(PipelineRow)
    found = (
        session.execute(
            select(releases.c.id, releases.c.pipeline_id)
            .join(pipelines, pipelines.c.id == releases.c.pipeline_id)
            .where(pipelines.c.name == pipeline, releases.c.number == number)
            .with_for_update(of=releases)
        )
    ).one_or_none()
    if found is None:
        raise ReleaseNotRecorded(f"release {pipeline}/{number} is not recorded yet")
    return found[0], found[1]


def _refresh_release_status(session: Connection, release_id: int) -> None:
    """The release's one-word status from its state and its stages' latest attempts."""
    releases, stages = _table(ReleaseRow), _table(ReleaseStageRow)
    state = (
        session.execute(select(releases.c.state).where(releases.c.id == release_id))
    ).scalar_one()
    views = [
        StageView(name=name, status=StageStatus(status))
        for name, status in (
            session.execute(
                select(stages.c.name, stages.c.status)
                .where(stages.c.release_id == release_id)
                .order_by(stages.c.position)
            )
        )
    ]
    session.execute(
        update(releases)
        .where(releases.c.id == release_id)
        .values(status=release_status_of(views, state))
    )
