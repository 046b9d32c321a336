"""The queue rules (workflows/queues.py) and the PipelineWorkflow's look for slot
holders whose workflows ended without a word, on the time-skipping server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from temporalio import workflow
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.workflow_checks import Lookout
from tests.conftest import wait_for
from worker.control import SANDBOX
from workflows.pipeline import Queue
from workflows.pipeline_workflow import SLOT_CHECK_EVERY, PipelineState, PipelineWorkflow
from workflows.queues import (
    TOLD_PLACES,
    QueueNews,
    SlotMessage,
    StageDeployment,
    StageQueue,
    ask,
    deploying,
    leave,
    rollback_target,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def asking(number: int, max_parallel: int = 1, policy: str = "sequence") -> SlotMessage:
    return SlotMessage(
        kind="ask",
        stage="prod",
        workflow_id=f"release/p/{number}/prod/1",
        number=number,
        release=f"Release-{number}",
        queue=Queue(max_parallel=max_parallel, policy=policy),  # type: ignore[arg-type]
    )


def news(out: list[tuple[str, QueueNews]], kind: str) -> list[int]:
    return [int(i.split("/")[2]) for i, n in out if n.kind == kind]


def queue_of(queues: dict[str, StageQueue]) -> tuple[list[int], list[int]]:
    q = queues["prod"]
    return [s.number for s in q.holders], [s.number for s in q.waiting]


def test_sequence_grants_free_slots_at_once_then_in_release_number_order() -> None:
    queues: dict[str, StageQueue] = {}
    assert news(ask(queues, asking(5, max_parallel=2), NOW), "granted") == [5]
    assert news(ask(queues, asking(9, max_parallel=2), NOW), "granted") == [9]
    for number in (8, 6, 7):
        out = ask(queues, asking(number, max_parallel=2), NOW)
        assert not news(out, "granted")
    assert queue_of(queues) == ([5, 9], [8, 6, 7])
    out = leave(queues, "prod", {"release/p/9/prod/1"})
    assert news(out, "granted") == [6]
    assert news(out, "place") == [7, 8]  # their places moved
    assert queue_of(queues) == ([5, 6], [8, 7])


def test_latest_only_supersedes_older_waiting_and_undeployed_holders_when_a_slot_frees() -> None:
    queues: dict[str, StageQueue] = {}
    for number in (1, 2):
        ask(queues, asking(number, max_parallel=2, policy="latest_only"), NOW)
    deploying(queues, asking(1).model_copy(update={"kind": "deploying"}))
    for number in (3, 4, 5):
        out = ask(queues, asking(number, max_parallel=2, policy="latest_only"), NOW)
        assert not news(out, "superseded"), "nothing is superseded while no slot frees"
    # 1 (deploying) ends: 5 goes on; 3 and 4 waited, 2 held a slot but had not begun.
    out = leave(queues, "prod", {"release/p/1/prod/1"})
    assert news(out, "granted") == [5]
    assert sorted(news(out, "superseded")) == [2, 3, 4]
    assert {n.by for _, n in out if n.kind == "superseded"} == {"Release-5"}
    assert queue_of(queues) == ([5], [])


def test_a_deploying_holder_is_never_superseded_and_a_superseded_one_gets_no_go() -> None:
    queues: dict[str, StageQueue] = {}
    policy = "latest_only"
    ask(queues, asking(1, max_parallel=2, policy=policy), NOW)
    ask(queues, asking(2, max_parallel=2, policy=policy), NOW)
    assert news(deploying(queues, asking(2).model_copy(update={"kind": "deploying"})), "go") == [2]
    ask(queues, asking(3, max_parallel=2, policy=policy), NOW)
    out = leave(queues, "prod", {"release/p/1/prod/1"})
    assert news(out, "granted") == [3] and not news(out, "superseded")
    assert queue_of(queues) == ([2, 3], [])
    # A holder superseded meanwhile that says it begins hears nothing (it was told).
    assert deploying(queues, asking(1).model_copy(update={"kind": "deploying"})) == []


def test_an_ask_sent_again_is_answered_as_before() -> None:
    queues: dict[str, StageQueue] = {}
    ask(queues, asking(1), NOW)
    assert news(ask(queues, asking(1), NOW), "granted") == [1]
    ask(queues, asking(2), NOW)
    assert ask(queues, asking(2), NOW) == []
    assert queue_of(queues) == ([1], [2])


def test_far_back_in_line_hears_once_not_at_every_move() -> None:
    queues: dict[str, StageQueue] = {}
    for number in range(1, TOLD_PLACES + 5):
        ask(queues, asking(number), NOW)
    out = leave(queues, "prod", {"release/p/1/prod/1"})
    told = news(out, "place")
    # Places 1..10 moved; those further back were told they are far back already.
    assert told == list(range(3, TOLD_PLACES + 3))


def deployment(number: int, reason: str = "after release") -> StageDeployment:
    return StageDeployment(
        number=number,
        release=f"Release-{number}",
        attempt=1,
        status="succeeded",
        time=NOW,
        reason=reason,
    )


def test_rollback_goes_back_one_release_each_time_and_to_a_named_one() -> None:
    entries = [deployment(1), deployment(2), deployment(3)]
    assert rollback_target(entries, "prod", None) == entries[1]
    entries.append(deployment(2, "rollback"))
    target = rollback_target(entries, "prod", None)
    assert isinstance(target, StageDeployment) and target.number == 1
    assert rollback_target(entries, "prod", 3) == entries[2]
    assert (
        rollback_target(entries, "prod", 2) == "release 2 is what stage 'prod' has now (Release-2)"
    )
    assert rollback_target(entries, "prod", 7) == (
        "release 7 never succeeded on stage 'prod' (it could roll back to: 1, 3)"
    )
    assert rollback_target([deployment(1)], "prod", None) == (
        "stage 'prod' has had no release before Release-1: nothing to roll back to"
    )
    assert "nothing has been deployed" in str(rollback_target([], "prod", None))


# --- the pipeline's look for ended holders ---------------------------------------------


@workflow.defn(name="Holder", sandboxed=False)
class Holder:
    """Stands in for a deployment: takes the queue's news, runs until terminated."""

    def __init__(self) -> None:
        self.news: list[str] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name="queue")
    def queue(self, news: QueueNews) -> None:
        self.news.append(news.kind)

    @workflow.query
    def heard(self) -> list[str]:
        return self.news


async def test_a_slot_whose_holder_was_terminated_is_freed_by_the_pipelines_look(
    time_skipping: WorkflowEnvironment,
) -> None:
    client, queue = time_skipping.client, f"slots-{uuid.uuid4().hex[:6]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[PipelineWorkflow, Holder],
        activities=[Lookout(client).ended_workflows],
        workflow_runner=SANDBOX,
    ):
        pipeline = await client.start_workflow(
            PipelineWorkflow.run,
            PipelineState(name="p"),
            id=f"pipeline/p-{queue}",
            task_queue=queue,
        )
        holders: list[WorkflowHandle] = []  # type: ignore[type-arg]
        for number in (1, 2):
            handle = await client.start_workflow(
                Holder.run, id=f"release/p/{number}/prod/1-{queue}", task_queue=queue
            )
            holders.append(handle)
            message = asking(number).model_copy(update={"workflow_id": handle.id})
            await pipeline.signal(PipelineWorkflow.slots, message)

        async def heard(handle: WorkflowHandle) -> list[str]:  # type: ignore[type-arg]
            return await handle.query(Holder.heard)

        async def granted(handle: WorkflowHandle) -> bool:  # type: ignore[type-arg]
            return "granted" in await heard(handle)

        await wait_for(lambda: granted(holders[0]), what="the first holder's slot")
        await wait_for(lambda: heard(holders[1]), what="the second told its place")
        assert await heard(holders[1]) == ["place"]
        # Terminated in Temporal: it cannot say it ended. The pipeline's look finds it.
        await holders[0].terminate("gone")
        await time_skipping.sleep(SLOT_CHECK_EVERY + timedelta(seconds=5))
        await wait_for(lambda: granted(holders[1]), what="the slot to pass on")
        slots = (await pipeline.query(PipelineWorkflow.queues))["prod"]
        assert [s.workflow_id for s in slots.holders] == [holders[1].id] and not slots.waiting
        await holders[1].terminate("done")
        await pipeline.terminate("done")
