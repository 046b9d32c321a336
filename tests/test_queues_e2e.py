"""Deployment queues end to end: 50 releases at once on a stage with one slot, under
`sequence` and `latest_only`, with and without kill -9 of the control worker; a
superseded release that waited for approval leaves the approvals list."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import datetime

import pytest

from starter.deployment_control import deployed_where, stage_queues
from starter.releases import ReleaseRef
from tests.conftest import Stack, wait_for
from tests.test_engine_e2e import replay_release
from workflows.audit import SYSTEM
from workflows.release import StageAttempt, StageStatus

RELEASES = 50

QUEUED = """
    name: queued-{suffix}
    stages:
      - name: prod
        pool: POOL
        queue: {{max_parallel: 1, policy: {policy}}}
        tasks:
          - name: deploy
            script: echo "deploying $STAGEFLOW_RELEASE"
"""


async def queued_at_once(stack: Stack, policy: str) -> tuple[str, list[ReleaseRef], str]:
    """50 releases created at once, with no agent yet: one holds the slot, 49 wait.
    Returns the pipeline, the releases by number and the release holding the slot."""
    pipeline = f"queued-{stack.suffix}"
    path = stack.write_pipeline(QUEUED.format(suffix=stack.suffix, policy=policy))
    created = await asyncio.gather(*(stack.create(path) for _ in range(RELEASES)))
    refs = sorted((ref for ref, _ in created), key=lambda ref: ref.number)
    assert [ref.number for ref in refs] == list(range(1, RELEASES + 1))

    async def all_asked() -> list[str] | None:
        queue = (await stage_queues(stack.client, pipeline)).get("prod")
        if queue is None or len(queue.holders) + len(queue.waiting) < RELEASES:
            return None
        return [slot.release for slot in queue.holders]

    holders = await wait_for(all_asked, timeout=120, what="50 deployments in the queue")
    assert len(holders) == 1, f"one slot, held by {holders}"
    return pipeline, refs, holders[0]


async def outcomes(stack: Stack, refs: list[ReleaseRef]) -> list[StageAttempt]:
    """Each release's deployment of prod once it has ended, by release number."""

    async def ended(ref: ReleaseRef) -> StageAttempt:
        async def done() -> StageAttempt | None:
            latest = (await stack.status(ref)).stage("prod").latest
            return latest if latest is not None and latest.status.is_final else None

        return await wait_for(done, timeout=240, what=f"{ref} prod to end")

    return [await ended(ref) for ref in refs]


def one_at_a_time(deployed: list[StageAttempt]) -> None:
    """No two deployments held the slot (or ran a task) at the same moment."""
    spans = []
    for attempt in deployed:
        assert attempt.slot_granted_at is not None and attempt.ended_at is not None
        task = attempt.tasks[0]
        assert task.started_at is not None and task.duration is not None
        assert attempt.slot_granted_at <= task.started_at
        assert task.started_at + task.duration <= attempt.ended_at
        spans.append((attempt.slot_granted_at, attempt.ended_at, attempt.workflow_id))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{first} was still deploying when {second} began"


def release_of(attempt: StageAttempt) -> int:
    return int(attempt.workflow_id.split("/")[2])


def granted(attempt: StageAttempt) -> datetime:
    assert attempt.slot_granted_at is not None
    return attempt.slot_granted_at


async def kill_control_worker_mid_way(stack: Stack, worker, pipeline: str) -> None:  # type: ignore[no-untyped-def]
    """kill -9 the control worker once a few deployments have ended; start another."""

    async def some_deployed() -> bool:
        return len((await deployed_where(stack.client, pipeline)).get("prod", [])) >= 1

    await wait_for(some_deployed, timeout=120, what="a first deployment")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    await stack.start_worker()


# Each run is steady until its first deployment has ended, then the control worker is
# killed -9 and another started: the invariants hold across both parts. (A run without
# the kill checks nothing more and costs a minute of the suite's 15.)
@pytest.mark.e2e
@pytest.mark.parametrize("kill", [True], ids=["control-worker-killed"])
async def test_sequence_deploys_one_at_a_time_in_release_number_order(
    stack: Stack, kill: bool
) -> None:
    worker = await stack.start_worker()
    pipeline, refs, holder = await queued_at_once(stack, "sequence")
    # Two agents of two job slots each: the queue, not the agents, keeps it to one.
    await asyncio.gather(stack.start_agent("a1", capacity=2), stack.start_agent("a2", capacity=2))
    if kill:
        await kill_control_worker_mid_way(stack, worker, pipeline)

    attempts = await outcomes(stack, refs)
    assert {a.status for a in attempts} == {StageStatus.SUCCEEDED}, [
        (release_of(a), a.status, a.message) for a in attempts if a.status != "succeeded"
    ]
    one_at_a_time(attempts)
    order = [release_of(a) for a in sorted(attempts, key=granted)]
    first = int(holder.removeprefix("Release-"))
    # The one that found the slot free went first; the 49 waiting went by number.
    assert order == [first] + [n for n in range(1, RELEASES + 1) if n != first]
    on_prod = (await deployed_where(stack.client, pipeline))["prod"]
    assert len(on_prod) == RELEASES and on_prod[-1].number == RELEASES


@pytest.mark.e2e
@pytest.mark.parametrize("kill", [True], ids=["control-worker-killed"])
async def test_latest_only_deploys_the_newest_waiting_and_skips_the_rest(
    stack: Stack, kill: bool
) -> None:
    worker = await stack.start_worker()
    pipeline, refs, holder = await queued_at_once(stack, "latest_only")
    first = int(holder.removeprefix("Release-"))
    newest = RELEASES if first != RELEASES else RELEASES - 1
    await asyncio.gather(stack.start_agent("a1", capacity=2), stack.start_agent("a2", capacity=2))
    if kill:
        await kill_control_worker_mid_way(stack, worker, pipeline)

    attempts = await outcomes(stack, refs)
    deployed = [a for a in attempts if a.status == StageStatus.SUCCEEDED]
    # The holder deployed; when its slot freed all 49 were waiting: only the newest went.
    assert sorted(release_of(a) for a in deployed) == sorted({first, newest})
    one_at_a_time(deployed)
    skipped = [a for a in attempts if release_of(a) not in (first, newest)]
    assert len(skipped) == RELEASES - 2
    for attempt in skipped:
        assert attempt.status == StageStatus.SKIPPED
        assert attempt.message == f"superseded by Release-{newest}"
        assert not any(t.started_at for t in attempt.tasks), "a superseded release ran a task"
        (event,) = [e for e in attempt.events if e.action == "superseded"]
        assert event.actor == SYSTEM and f"Release-{newest}" in event.detail


APPROVED = """
    name: approved-{suffix}
    stages:
      - name: prod
        pool: POOL
        queue: {{max_parallel: 2, policy: latest_only}}
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks:
          - name: deploy
            script: echo deployed
"""


def waiting_on(stack: Stack, user: str) -> list[str]:
    shown = stack.cli("approvals", "--mine", "--json", user=user)
    assert shown.returncode == 0, shown.stderr
    return sorted(w["release"] for w in json.loads(shown.stdout))


@pytest.mark.e2e
async def test_superseded_release_waiting_for_approval_leaves_the_approvals(
    stack: Stack,
) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    path = stack.write_pipeline(APPROVED.format(suffix=stack.suffix))
    pipeline = f"approved-{stack.suffix}"
    first, _ = await stack.create(path)
    second, _ = await stack.create(path)

    async def waiting(ref: ReleaseRef) -> bool:
        return (await stack.status(ref)).stage("prod").status == "waiting_for_approval"

    for ref in (first, second):
        await wait_for(lambda ref=ref: waiting(ref), timeout=60, what=f"{ref} to wait")
    third, _ = await stack.create(path)

    async def third_queued() -> bool:
        queue = (await stage_queues(stack.client, pipeline))["prod"]
        return [s.release for s in queue.waiting] == ["Release-3"]

    await wait_for(third_queued, timeout=60, what="Release-3 in line")

    async def told_its_place() -> StageAttempt | None:
        latest = (await stack.status(third)).stage("prod").latest
        return latest if latest is not None and "in line" in latest.waiting_reason else None

    # The pipeline's news reaches the deployment a moment after the pipeline's state.
    shown = await wait_for(told_its_place, timeout=30, what="Release-3 told its place")
    assert shown.status == StageStatus.QUEUED
    assert "1st of 1 in line" in shown.waiting_reason
    # Both hold a slot; which asked first is a race of their stage workflows.
    held = shown.waiting_reason.partition("the slot is held by ")[2]
    assert sorted(held.split(", ")) == ["Release-1", "Release-2"], shown.waiting_reason

    async def listed(expected: list[str]) -> bool:
        return waiting_on(stack, "alice") == expected

    await wait_for(
        lambda: listed([f"{pipeline}/1", f"{pipeline}/2"]), timeout=30, what="two approvals"
    )
    approved = stack.cli("approve", str(first), "prod", user="alice")
    assert approved.returncode == 0, approved.stderr

    # Release-1 deploys and frees its slot: the newest waiting (3) goes on, and 2, still
    # waiting for its approval, is superseded.
    settled = await stack.wait_settled(second)
    prod = settled.stage("prod").latest
    assert prod is not None and prod.status == StageStatus.SKIPPED
    assert prod.message == "superseded by Release-3"
    assert prod.approvals[0].status == "skipped"
    await wait_for(lambda: waiting(third), timeout=60, what="Release-3 to wait for approval")
    await wait_for(lambda: listed([f"{pipeline}/3"]), timeout=30, what="only 3 left")
    assert (await stack.status(first)).stage("prod").status == StageStatus.SUCCEEDED
    # The histories of a superseded release replay with today's code (and are kept as
    # recorded histories when STAGEFLOW_RECORD_HISTORIES is set).
    await replay_release(stack.client, settled, record_as="queue-superseded")


ONE_SLOT_APPROVED = """
    name: freed-{suffix}
    stages:
      - name: prod
        pool: POOL
        queue: {{max_parallel: 1}}
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks:
          - name: deploy
            script: echo deployed
"""


@pytest.mark.e2e
async def test_a_canceled_or_terminated_holder_frees_its_slot(stack: Stack) -> None:
    await stack.start_worker()
    path = stack.write_pipeline(ONE_SLOT_APPROVED.format(suffix=stack.suffix))
    pipeline = f"freed-{stack.suffix}"
    refs = [(await stack.create(path))[0] for _ in range(3)]

    async def holder() -> str | None:
        queue = (await stage_queues(stack.client, pipeline)).get("prod")
        if queue is None or len(queue.holders) + len(queue.waiting) < 3:
            return None
        return queue.holders[0].release if queue.holders else None

    first = await wait_for(holder, timeout=60, what="three in the queue")
    order = [first] + [f"Release-{n}" for n in (1, 2, 3) if f"Release-{n}" != first]
    by_name = {f"Release-{ref.number}": ref for ref in refs}

    async def holds(name: str) -> bool:
        latest = (await stack.status(by_name[name])).stage("prod").latest
        return latest is not None and latest.status == StageStatus.WAITING_FOR_APPROVAL

    await wait_for(lambda: holds(order[0]), timeout=60, what=f"{order[0]} to hold the slot")
    canceled = stack.cli("cancel", str(by_name[order[0]]), "prod")
    assert canceled.returncode == 0, canceled.stderr
    await wait_for(lambda: holds(order[1]), timeout=60, what=f"{order[1]} to get the slot")

    # Terminated in Temporal: its release says so for it.
    latest = (await stack.status(by_name[order[1]])).stage("prod").latest
    assert latest is not None
    await stack.client.get_workflow_handle(latest.workflow_id).terminate("by hand")
    await wait_for(lambda: holds(order[2]), timeout=60, what=f"{order[2]} to get the slot")
    ended = [(await stack.status(by_name[name])).stage("prod").status for name in order[:2]]
    assert ended == [StageStatus.CANCELED, StageStatus.TERMINATED]
    queue = (await stage_queues(stack.client, pipeline))["prod"]
    assert [s.release for s in queue.holders] == [order[2]] and not queue.waiting
