"""Deployment queues and what is deployed where: the state the PipelineWorkflow keeps
for every stage of its pipeline, and the rules that change it. Pure: no Temporal.

A stage with `queue: {max_parallel, policy}` has that many slots. A deployment
asks for one before its pre-deployment approval (a `SlotMessage` "ask"), waits
in line, is told its place, and holds the slot it is granted until its end
("ended"). Under latest_only, before its jobs begin it says so ("deploying") and
waits for the pipeline's "go": from then on it is never superseded. Under `latest_only`, when
a slot frees only the newest waiting release goes on; the older waiting ones,
and holders that have not begun their jobs (waiting for approval, say), are
superseded and end skipped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from workflows.pipeline import Model, Queue

# The pipeline remembers this many deployments per stage (what is where, rollback).
REMEMBERED_DEPLOYMENTS = 50

# A deployment's outcomes that put its release on the stage.
DEPLOYED_STATUSES = frozenset({"succeeded", "partially_succeeded"})


class SlotMessage(Model):
    """Signal `slots` of the PipelineWorkflow, sent by a deployment (a StageWorkflow),
    or by its release for a deployment that was terminated."""

    kind: Literal["ask", "deploying", "ended"]
    stage: str
    workflow_id: str
    number: int
    release: str
    attempt: int = 1
    queue: Queue | None = Field(None, description="ask: the stage's queue in this release")
    # ended:
    status: str = ""
    time: datetime | None = None
    triggered_by: str = ""
    reason: str = ""


class QueueNews(Model):
    """Signal `queue` of a StageWorkflow, sent by the PipelineWorkflow."""

    kind: Literal["place", "granted", "go", "superseded"]
    place: int = Field(0, description="place: 1 is next in line")
    waiting: int = Field(0, description="place: how many wait in all")
    holders: list[str] = Field([], description="the releases holding the stage's slots")
    by: str = Field("", description="superseded: the newer release that goes on")


class Slot(Model):
    """A deployment in a stage's queue: waiting for a slot, or holding one."""

    workflow_id: str
    number: int
    release: str
    attempt: int
    since: datetime
    deploying: bool = Field(False, description="its jobs have begun: never superseded")


class StageQueue(Model):
    """One stage's slots: who holds them, who waits, and what each waiter was told."""

    max_parallel: int
    policy: Literal["sequence", "latest_only"]
    # The newest release that asked sets the stage's queue (a new revision may change it).
    set_by: int = 0
    holders: list[Slot] = []
    waiting: list[Slot] = []
    told: dict[str, tuple[int, int, tuple[str, ...]]] = {}


class StageDeployment(Model):
    """A deployment that put its release on a stage."""

    number: int
    release: str
    attempt: int
    status: str
    time: datetime
    by: str = ""
    reason: str = Field("", description="after release, after <stage>, deploy, redeploy, rollback")


Outbox = list[tuple[str, QueueNews]]

# The first this many in line are told each change of their place; those further back,
# only that they are (one signal each, not one per move of the line).
TOLD_PLACES = 5
FAR = TOLD_PLACES + 1


def ask(queues: dict[str, StageQueue], message: SlotMessage, now: datetime) -> Outbox:
    """A deployment asks for a slot: it waits in line, or is granted one at once."""
    assert message.queue is not None
    queue = queues.get(message.stage)
    if queue is None:
        queue = queues[message.stage] = StageQueue(
            max_parallel=message.queue.max_parallel, policy=message.queue.policy
        )
    if message.number >= queue.set_by:
        queue.max_parallel, queue.policy = message.queue.max_parallel, message.queue.policy
        queue.set_by = message.number
    known = _find(queue, message.workflow_id)
    if known is not None:  # asked again (a retried signal): answer as before
        return [(message.workflow_id, _granted(queue))] if known in queue.holders else []
    queue.waiting.append(
        Slot(
            workflow_id=message.workflow_id,
            number=message.number,
            release=message.release,
            attempt=message.attempt,
            since=now,
        )
    )
    return serve(queue)


def deploying(queues: dict[str, StageQueue], message: SlotMessage) -> Outbox:
    """A holder is about to begin its jobs: go, unless it was superseded meanwhile."""
    queue = queues.get(message.stage)
    holder = _find(queue, message.workflow_id) if queue else None
    if queue is None or holder is None or holder not in queue.holders:
        return []  # superseded (told already) or freed as ended
    holder.deploying = True
    return [(message.workflow_id, QueueNews(kind="go", holders=_holders(queue)))]


def leave(queues: dict[str, StageQueue], stage: str, workflow_ids: set[str]) -> Outbox:
    """Deployments that ended (or whose workflows are gone) free their place."""
    queue = queues.get(stage)
    if queue is None:
        return []
    before = len(queue.holders) + len(queue.waiting)
    queue.holders = [s for s in queue.holders if s.workflow_id not in workflow_ids]
    queue.waiting = [s for s in queue.waiting if s.workflow_id not in workflow_ids]
    for workflow_id in workflow_ids:
        queue.told.pop(workflow_id, None)
    if len(queue.holders) + len(queue.waiting) == before:
        return []
    return serve(queue, freed=True)


def serve(queue: StageQueue, freed: bool = False) -> Outbox:
    """Grant free slots by the policy; tell every waiter whose place changed. `freed`: a
    slot has just freed, when latest_only supersedes holders that have not begun."""
    out: Outbox = []
    while queue.waiting and len(queue.holders) < queue.max_parallel:
        if queue.policy == "sequence":
            chosen = min(queue.waiting, key=lambda s: (s.number, s.since))
        else:
            chosen = max(queue.waiting, key=lambda s: (s.number, s.since))
            out += _supersede(queue, chosen, holders_too=freed)
        queue.waiting.remove(chosen)
        queue.holders.append(chosen)
        queue.told.pop(chosen.workflow_id, None)
        out.append((chosen.workflow_id, _granted(queue)))
    holders = tuple(_holders(queue))
    for place, slot in enumerate(in_line(queue), start=1):
        # Far back in line a deployment hears once that it is, not every move.
        news = (place, len(queue.waiting), holders) if place <= TOLD_PLACES else (FAR, 0, ())
        if queue.told.get(slot.workflow_id) != news:
            queue.told[slot.workflow_id] = news
            out.append(
                (
                    slot.workflow_id,
                    QueueNews(
                        kind="place", place=place, waiting=len(queue.waiting), holders=[*holders]
                    ),
                )
            )
    return out


def in_line(queue: StageQueue) -> list[Slot]:
    """The waiting deployments in the order they would go on."""
    newest_first = queue.policy == "latest_only"
    return sorted(queue.waiting, key=lambda s: (s.number, s.since), reverse=newest_first)


def _supersede(queue: StageQueue, newest: Slot, holders_too: bool) -> Outbox:
    """latest_only: the older waiting ones end; when a slot has freed, so do the older
    holders that have not begun their jobs (waiting for approval, say)."""
    gone = [s for s in queue.waiting if s is not newest and s.number < newest.number]
    if holders_too:
        gone += [s for s in queue.holders if not s.deploying and s.number < newest.number]
    for slot in gone:
        if slot in queue.waiting:
            queue.waiting.remove(slot)
        else:
            queue.holders.remove(slot)
        queue.told.pop(slot.workflow_id, None)
    return [(s.workflow_id, QueueNews(kind="superseded", by=newest.release)) for s in gone]


def record_deployment(
    deployed: dict[str, list[StageDeployment]], message: SlotMessage, now: datetime
) -> None:
    """A deployment ended: if it put its release on the stage, remember it there."""
    if message.status not in DEPLOYED_STATUSES:
        return
    entries = deployed.setdefault(message.stage, [])
    entries.append(
        StageDeployment(
            number=message.number,
            release=message.release,
            attempt=message.attempt,
            status=message.status,
            time=message.time or now,
            by=message.triggered_by,
            reason=message.reason,
        )
    )
    del entries[:-REMEMBERED_DEPLOYMENTS]


def rollback_target(
    entries: list[StageDeployment], stage: str, to: int | None
) -> StageDeployment | str:
    """The deployment a rollback of `stage` puts back, or why there is none.

    Without `to`: the release that was on the stage before the current one (the most
    recent one before it with a lower number, so rolling back again goes further back).
    With `to`: that release, which must have been deployed there before."""
    if not entries:
        return f"nothing has been deployed on stage {stage!r}: nothing to roll back to"
    current = entries[-1]
    if to is not None:
        if to == current.number:
            return f"release {to} is what stage {stage!r} has now ({current.release})"
        found = next((e for e in reversed(entries) if e.number == to), None)
        if found is None:
            known = sorted({e.number for e in entries if e.number != current.number})
            return f"release {to} never succeeded on stage {stage!r}" + (
                f" (it could roll back to: {', '.join(map(str, known))})" if known else ""
            )
        return found
    for entry in reversed(entries[:-1]):
        if entry.number < current.number:
            return entry
    return f"stage {stage!r} has had no release before {current.release}: nothing to roll back to"


def _find(queue: StageQueue | None, workflow_id: str) -> Slot | None:
    if queue is None:
        return None
    return next((s for s in queue.holders + queue.waiting if s.workflow_id == workflow_id), None)


def _holders(queue: StageQueue) -> list[str]:
    return [s.release for s in queue.holders]


def _granted(queue: StageQueue) -> QueueNews:
    return QueueNews(kind="granted", holders=_holders(queue))
