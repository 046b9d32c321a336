"""The record's own retention: what each pipeline's `retention` no longer keeps is
deleted, its rows and its logs (issue 12), as Azure Pipelines' classic release
retention does.

The rule, for each release, with the retention of its own snapshot's pipeline
(`retention: {days, keep_last}`, a stage's own `retention` for that stage):

- Its last activity is the newest of its creation and its deployments' starts
  and ends (what the ReleaseWorkflow's idle timer counts too).
- It is past its age when its last activity is more than `days` ago: the most
  `days` of the stages it was deployed to (a stage's own, else the pipeline's),
  the pipeline's when it was deployed nowhere. So a stage with a longer `days`
  keeps the releases that reached it longer, and one with shorter `days` lets
  releases that went no further go sooner.
- Past its age, it is still kept when
  - it is deployed on a stage now: it holds the last succeeded or partially
    succeeded deployment, by end time, of a stage of its pipeline (what
    `queries.deployed_on` shows; a tie keeps all);
  - it has one of the last `keep_last` deployments of a stage of its pipeline,
    by start time, whatever their outcome (`keep_last` of the release's own
    snapshot for that stage);
  - it is active and its workflow may still write to it: a deployment is under
    way, or its idle close (`close_idle_after` after its last activity, plus a
    day for the close to reach the record) has not passed. A release deleted
    under a running workflow would have that workflow's writes refused forever;
  - its snapshot's retention cannot be read (kept, never guessed).
- Otherwise it is deleted with every row of it (deployments, agent sessions,
  tasks and their tries, approvals and decisions, gates, audit events, its
  stages: the tables' ON DELETE CASCADE) and its log files (each try's log and
  the last try's, with the `.idx` beside each; directories left empty go too).
  The pipeline and its revisions (the definition's change history) stay.

The decision reads one snapshot of the database with a few set-based queries
(one per question, never one per release); deletions go in batches, each its
own short transaction, the batch's log files first, so a run cut short leaves
nothing that a later run would not find and finish. A second run deletes
nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import Result, case, delete, func, select, union
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity

from activities.log_store import DirectoryLogStore, index_path
from activities.record.database import Database
from activities.record.queries import DEPLOYED_STATUSES
from activities.record.tables import DeploymentRow, ReleaseRow, TaskRunRow, TaskTryRow
from workflows.activity_refs import APPLY_RETENTION
from workflows.pipeline import Retention as PipelineRetention
from workflows.pipeline import StageRetention
from workflows.record_api import RetentionRequest, RetentionResult
from workflows.release import FINAL_STATUSES

log = logging.getLogger(__name__)

# How many releases one query names, and one deletion transaction removes.
BATCH = 500
# After a release's idle close is due, how long its close may take to reach the record.
CLOSE_GRACE = timedelta(days=1)
FINAL = sorted(status.value for status in FINAL_STATUSES)

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """The retention of one pipeline definition: the pipeline's and its stages' own."""

    pipeline: PipelineRetention
    stages: Mapping[str, StageRetention] = field(default_factory=dict)

    @classmethod
    def of(cls, pipeline: Mapping[str, Any]) -> Policy:
        """From a release snapshot's `pipeline`; its `retention` may be the older form (a
        duration: the idle close alone). Raises ValidationError when it cannot be read."""
        stages = {
            stage["name"]: StageRetention.model_validate(stage["retention"])
            for stage in pipeline.get("stages") or []
            if isinstance(stage, dict) and stage.get("retention") is not None
        }
        retention = pipeline.get("retention")
        return cls(
            pipeline=PipelineRetention()
            if retention is None
            else PipelineRetention.model_validate(retention),
            stages=stages,
        )

    def days(self, stage: str) -> int:
        own = self.stages.get(stage)
        return own.days if own is not None and own.days is not None else self.pipeline.days

    def keep_last(self, stage: str) -> int:
        own = self.stages.get(stage)
        if own is not None and own.keep_last is not None:
            return own.keep_last
        return self.pipeline.keep_last

    def age_limit(self, deployed_to: Iterable[str]) -> timedelta:
        """How long a release deployed to these stages is kept after its last activity."""
        days = [self.days(stage) for stage in deployed_to]
        return timedelta(days=max(days) if days else self.pipeline.days)

    @property
    def shortest(self) -> timedelta:
        """The shortest age limit any release of this definition can have."""
        return timedelta(
            days=min([self.pipeline.days, *(self.days(stage) for stage in self.stages)])
        )

    @property
    def longest_keep_last(self) -> int:
        return max([self.pipeline.keep_last, *(self.keep_last(stage) for stage in self.stages)])


@dataclass
class Candidate:
    """A release whose last activity is older than the shortest age limit of any policy."""

    id: int
    pipeline_id: int
    revision: str
    state: str
    last_activity: datetime
    under_way: bool
    deployed_to: set[str] = field(default_factory=set)


def verdict(
    release: Candidate,
    policy: Policy | None,
    now: datetime,
    deployed_now: bool,
    among_last: bool,
) -> str | None:
    """Why a release stays ("young", "unreadable", "active", "deployed", "last"), or None
    when its policy no longer keeps it."""
    if policy is None:
        return "unreadable"
    if release.last_activity > now - policy.age_limit(release.deployed_to):
        return "young"
    if release.state == "active" and (
        release.under_way
        or release.last_activity + policy.pipeline.close_idle_after + CLOSE_GRACE > now
    ):
        return "active"
    if deployed_now:
        return "deployed"
    if among_last:
        return "last"
    return None


async def apply_retention(
    db: Database, now: datetime, log_dir: Path | None, dry_run: bool = False
) -> RetentionResult:
    """Delete from the record (and from the log store in `log_dir`, if given) every
    release its pipeline's retention no longer keeps at `now`; see the module's
    docstring for the rule. With `dry_run`, delete nothing and count the same."""
    if now.tzinfo is None:
        raise ValueError(f"retention is measured from a time with its zone: {now!r}")
    async with db.reading() as session:
        doomed, kept = await _decide(session, now)
    result = RetentionResult(
        kept=sum(kept.values()),
        kept_deployed=kept["deployed"],
        kept_last=kept["last"],
        kept_active=kept["active"],
        kept_unreadable=kept["unreadable"],
        dry_run=dry_run,
    )
    store = DirectoryLogStore(log_dir) if log_dir is not None else None
    for batch in _batches(doomed):
        keys = await _log_keys(db, batch)
        if store is not None:
            result.logs += await asyncio.to_thread(_remove_logs, store, keys, dry_run)
        releases, deployments = await _delete(db, batch, dry_run)
        result.releases += releases
        result.deployments += deployments
    log.info(
        "retention%s: %d releases (%d deployments, %d log files) deleted, %d past their age kept",
        " (dry run)" if dry_run else "",
        result.releases,
        result.deployments,
        result.logs,
        result.kept,
    )
    return result


class Retention:
    """The `apply_retention` activity: the record's retention, run by RetentionWorkflow."""

    def __init__(self, db: Database, log_dir: Path | None) -> None:
        self.db = db
        self.log_dir = log_dir

    @activity.defn(name=APPLY_RETENTION.name)
    async def apply_retention(self, request: RetentionRequest) -> RetentionResult:
        """Delete what each pipeline's retention no longer keeps at `request.now`: the
        releases, every row of them and their logs. Idempotent: a retry, or a second
        run, finds what is left to delete and deletes only that."""
        return await apply_retention(self.db, request.now, self.log_dir, request.dry_run)


# --- deciding ----------------------------------------------------------------------------


async def _decide(session: AsyncSession, now: datetime) -> tuple[list[int], Counter[str]]:
    """The releases to delete, and how many past their age are kept, by why."""
    policies = await _policies(session)
    readable = [policy for policy in policies.values() if policy is not None]
    shortest = min((policy.shortest for policy in readable), default=timedelta(days=1))
    candidates = await _candidates(session, now - shortest)
    kept: Counter[str] = Counter()
    if not candidates:
        return [], kept
    deployed_now = await _deployed_now(session)
    most = max((policy.longest_keep_last for policy in readable), default=0)
    last = await _last_deployments(session, most, candidates, policies)
    doomed = []
    for release in candidates.values():
        why = verdict(
            release,
            policies.get((release.pipeline_id, release.revision)),
            now,
            deployed_now=release.id in deployed_now,
            among_last=release.id in last,
        )
        if why is None:
            doomed.append(release.id)
        elif why != "young":
            kept[why] += 1
    return sorted(doomed), kept


async def _policies(session: AsyncSession) -> dict[tuple[int, str], Policy | None]:
    """One policy per pipeline definition (its revision), read from one of its releases;
    None where that snapshot's retention cannot be read."""
    r = ReleaseRow
    firsts = (
        await session.execute(select(func.min(r.id)).group_by(r.pipeline_id, r.revision))
    ).scalars()
    policies: dict[tuple[int, str], Policy | None] = {}
    for batch in _batches(list(firsts)):
        rows = await session.execute(
            select(r.id, r.pipeline_id, r.revision, r.snapshot).where(r.id.in_(batch))
        )
        for release_id, pipeline_id, revision, snapshot in rows:
            try:
                policies[(pipeline_id, revision)] = Policy.of(snapshot["pipeline"])
            except (ValidationError, KeyError, TypeError) as err:
                log.warning(
                    "retention: release id %d (revision %s): its retention cannot be read,"
                    " releases of that revision are kept: %s",
                    release_id,
                    revision[:12],
                    err,
                )
                policies[(pipeline_id, revision)] = None
    return policies


async def _candidates(session: AsyncSession, before: datetime) -> dict[int, Candidate]:
    """Releases whose last activity is before `before`, and the stages each was deployed to."""
    r, d = ReleaseRow, DeploymentRow
    last_started, last_ended = func.max(d.started_at), func.max(d.ended_at)
    under_way = func.sum(case((d.status.not_in(FINAL), 1), else_=0))
    rows = await session.execute(
        select(
            r.id,
            r.pipeline_id,
            r.revision,
            r.state,
            r.created_at,
            last_started,
            last_ended,
            under_way,
        )
        .outerjoin(d, d.release_id == r.id)
        .where(r.created_at < before)
        .group_by(r.id)
        .having(
            (last_started.is_(None) | (last_started < before))
            & (last_ended.is_(None) | (last_ended < before))
        )
    )
    found = {
        release_id: Candidate(
            id=release_id,
            pipeline_id=pipeline_id,
            revision=revision,
            state=state,
            last_activity=max(t for t in (created, started, ended) if t is not None),
            under_way=bool(running),
        )
        for release_id, pipeline_id, revision, state, created, started, ended, running in rows
    }
    for batch in _batches(list(found)):
        for release_id, stage in await session.execute(
            select(d.release_id, d.stage).where(d.release_id.in_(batch)).distinct()
        ):
            found[release_id].deployed_to.add(stage)
    return found


async def _deployed_now(session: AsyncSession) -> set[int]:
    """Releases holding the last succeeded (or partially succeeded) deployment, by end
    time, of a stage of their pipeline."""
    d = DeploymentRow
    rank = (
        func.rank()
        .over(partition_by=(d.pipeline_id, d.stage), order_by=d.ended_at.desc())
        .label("rank")
    )
    ranked = (
        select(d.release_id, rank)
        .where(d.status.in_(DEPLOYED_STATUSES), d.ended_at.is_not(None))
        .subquery()
    )
    found = await session.execute(select(ranked.c.release_id).where(ranked.c.rank == 1))
    return set(found.scalars())


async def _last_deployments(
    session: AsyncSession,
    most: int,
    candidates: Mapping[int, Candidate],
    policies: Mapping[tuple[int, str], Policy | None],
) -> set[int]:
    """Candidates holding one of the last `keep_last` deployments (by start) of a stage of
    their pipeline, `keep_last` from the release's own policy for that stage."""
    if most <= 0:
        return set()
    d = DeploymentRow
    rank = (
        func.row_number()
        .over(partition_by=(d.pipeline_id, d.stage), order_by=(d.started_at.desc(), d.id.desc()))
        .label("rank")
    )
    ranked = select(d.release_id, d.stage, rank).subquery()
    rows = await session.execute(
        select(ranked.c.release_id, ranked.c.stage, ranked.c.rank).where(ranked.c.rank <= most)
    )
    kept = set()
    for release_id, stage, position in rows:
        release = candidates.get(release_id)
        if release is None:
            continue
        policy = policies.get((release.pipeline_id, release.revision))
        if policy is not None and position <= policy.keep_last(stage):
            kept.add(release_id)
    return kept


# --- deleting ----------------------------------------------------------------------------


async def _log_keys(db: Database, release_ids: Sequence[int]) -> list[str]:
    """The log store keys of these releases' tasks: every try's and the last try's."""
    d, t, tt = DeploymentRow, TaskRunRow, TaskTryRow
    of_releases = d.release_id.in_(release_ids)
    async with db.reading() as session:
        keys: Result[Any] = await session.execute(
            union(
                select(t.log.label("key"))
                .join(d, d.id == t.deployment_id)
                .where(of_releases, t.log.is_not(None)),
                select(tt.log.label("key"))
                .join(t, t.id == tt.task_run_id)
                .join(d, d.id == t.deployment_id)
                .where(of_releases),
            )
        )
        return sorted(key for key in keys.scalars() if key)


def _remove_logs(store: DirectoryLogStore, keys: Iterable[str], dry_run: bool) -> int:
    """Remove each log and its index (counting the logs removed), then the directories that
    leaves empty, up to the store's root. A key that is not a valid one, or a file that
    cannot be removed, is skipped with a warning."""
    removed = 0
    emptied: set[Path] = set()
    for key in keys:
        try:
            path = store.path(key)
        except ValueError as err:
            log.warning("retention: log key %r skipped: %s", key, err)
            continue
        if path is None:
            continue
        if not dry_run:
            try:
                index_path(path).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
            except OSError as err:  # its rows go all the same: say so, and go on
                log.warning("retention: log %s not removed: %s", key, err)
                continue
            emptied.add(path.parent)
        removed += 1
    root = store.root.resolve()
    for directory in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        _remove_empty(directory, root)
    return removed


def _remove_empty(directory: Path, root: Path) -> None:
    """Remove `directory` and its parents while they are empty, stopping at `root`."""
    while directory.resolve() != root and root in directory.resolve().parents:
        try:
            os.rmdir(directory)
        except OSError:  # not empty (or gone): a parent of it is not empty either
            return
        directory = directory.parent


async def _delete(db: Database, release_ids: Sequence[int], dry_run: bool) -> tuple[int, int]:
    """Delete these releases (their rows go with them: ON DELETE CASCADE); the numbers
    of releases and deployments that were (or, with dry_run, would be) deleted."""
    r, d = ReleaseRow, DeploymentRow
    deployments = select(func.count()).select_from(d).where(d.release_id.in_(release_ids))
    if dry_run:
        async with db.reading() as session:
            releases = select(func.count()).select_from(r).where(r.id.in_(release_ids))
            return (
                (await session.execute(releases)).scalar_one(),
                (await session.execute(deployments)).scalar_one(),
            )
    async with db.writing.begin() as session:
        count = (await session.execute(deployments)).scalar_one()
        gone = await session.execute(delete(r).where(r.id.in_(release_ids)).returning(r.id))
        return len(gone.scalars().all()), count


def _batches(items: Sequence[T], size: int = BATCH) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
