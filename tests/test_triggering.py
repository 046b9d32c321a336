"""Which candidates of a trigger's firing become releases (workflows/triggering.py), and a
scheduled trigger with only_if_changed on the time-skipping server: a release on its
first firing, none on the next, one more once the drop folder has a new version."""

from __future__ import annotations

import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.pipelines import apply_file
from activities.record import default_database_url, open_database, upgrade
from activities.record.recorder import Recorder
from activities.triggers import Triggers
from worker.control import SANDBOX
from workflows.names import pipeline_workflow_id
from workflows.pipeline import Pipeline
from workflows.pipeline_workflow import PipelineWorkflow
from workflows.release_requests import CreatedRelease, NewRelease
from workflows.release_workflow import ReleaseWorkflow
from workflows.stage_workflow import StageWorkflow
from workflows.trigger_workflow import TriggerWorkflow
from workflows.triggering import (
    REMEMBERED_KEYS,
    TriggerCandidate,
    TriggerFiring,
    TriggerInput,
    TriggerOutcome,
    decide,
    remember_key,
)

PIPELINE = Pipeline.model_validate(
    {
        "name": "rules",
        "stages": [
            {
                "name": "dev",
                "trigger": "manual",
                "pool": "none",
                "tasks": [{"name": "t", "script": "true"}],
            }
        ],
    }
)


def candidate(key: str, label: str = "") -> TriggerCandidate:
    return TriggerCandidate(
        label=label,
        key=key,
        release=NewRelease(
            pipeline=PIPELINE, revision="0" * 64, created_by="trigger:t", request_id=key
        ),
    )


def firing(
    observed: dict[str, str], *candidates: TriggerCandidate, baseline: bool = False
) -> TriggerFiring:
    return TriggerFiring(
        trigger="t", observed=observed, candidates=list(candidates), baseline=baseline
    )


# --- the rules ------------------------------------------------------------------------


def test_a_first_look_only_notes_what_is_there() -> None:
    chosen, skipped, seen = decide(None, {}, firing({"": "1.0"}, baseline=True))
    assert (chosen, skipped, seen) == ([], [], {"": "1.0"})


def test_a_label_whose_value_was_seen_brings_nothing_new() -> None:
    chosen, skipped, seen = decide(
        {"main": "abc", "dev": "111"},
        {},
        firing({"main": "abc"}, candidate("k1", "main")),
    )
    assert chosen == [] and skipped == ["nothing new (main)"]
    assert seen == {"main": "abc", "dev": "111"}


def test_a_key_another_trigger_made_a_release_of_is_that_release() -> None:
    chosen, skipped, seen = decide({"": "1.0"}, {"k2": 7}, firing({"": "2.0"}, candidate("k2")))
    assert chosen == [] and skipped == ["release 7 has these versions"]
    assert seen == {"": "2.0"}


def test_a_key_whose_release_is_being_made_is_not_made_twice() -> None:
    _, skipped, _ = decide({}, {"k2": 0}, firing({"main": "def"}, candidate("k2", "main")))
    assert skipped == ["a release being made has these versions (main)"]


def test_a_changed_label_with_a_new_key_is_chosen() -> None:
    new = candidate("k3", "main")
    chosen, skipped, seen = decide(
        {"main": "abc", "release/1": "fff"},
        {"k1": 1},
        firing({"main": "def", "release/1": "fff"}, new),
    )
    assert chosen == [new] and skipped == []
    assert seen == {"main": "def", "release/1": "fff"}


def test_a_release_asked_for_is_not_nothing_new_though_the_trigger_saw_no_such_label() -> None:
    asked = candidate("k4")
    chosen, skipped, seen = decide({"main": "abc"}, {}, firing({}, asked))
    assert chosen == [asked] and skipped == []
    assert seen == {"main": "abc"}
    # Nor is it on a trigger that never fired.
    assert decide(None, {}, firing({}, asked))[0] == [asked]


def test_remembered_keys_drop_the_oldest_beyond_the_limit() -> None:
    keys: dict[str, int] = {}
    for number in range(1, REMEMBERED_KEYS + 3):
        remember_key(keys, f"k{number}", number)
    assert len(keys) == REMEMBERED_KEYS
    assert "k1" not in keys and "k2" not in keys
    assert next(iter(keys)) == "k3" and keys[f"k{REMEMBERED_KEYS + 2}"] == REMEMBERED_KEYS + 2
    # A key taken (0) and then made keeps its place and gets its number.
    remember_key(keys, "k3", 3)
    assert next(iter(keys)) == "k3" and len(keys) == REMEMBERED_KEYS


def test_the_outcome_summary_says_what_was_made_and_why_the_rest_was_not() -> None:
    def outcome(**fields: object) -> TriggerOutcome:
        return TriggerOutcome.model_validate({"pipeline": "p", "trigger": "t", **fields})

    made = [
        CreatedRelease(number=3, name="Release-3", workflow_id="release/p/3"),
        CreatedRelease(number=4, name="Release-4", workflow_id="release/p/4"),
    ]
    assert outcome(baseline=True).summary == "first look: noted what is there"
    assert outcome().summary == "nothing new"
    assert outcome(skipped=["nothing new"]).summary == "nothing new"
    assert outcome(created=made).summary == "made Release-3, Release-4"
    assert (
        outcome(created=made[:1], skipped=["release 2 has these versions (main)"]).summary
        == "made Release-3; release 2 has these versions (main)"
    )


# --- a scheduled trigger on the time-skipping server ------------------------------------

NIGHTLY = """\
name: {name}
artifacts:
  - {{alias: app, type: local, path: drop}}
triggers:
  - schedule: {{cron: "0 3 * * *", only_if_changed: true}}
stages:
  - name: dev
    trigger: manual
    pool: none
    tasks:
      - {{name: deploy, script: echo dev}}
"""


async def test_a_schedule_only_if_changed_releases_once_per_change(
    time_skipping: WorkflowEnvironment, tmp_path: Path
) -> None:
    client, suffix = time_skipping.client, uuid.uuid4().hex[:6]
    queue, name = f"triggering-{suffix}", f"nightly-{suffix}"
    url = default_database_url(tmp_path / "data")
    await upgrade(url)
    db = open_database(url)
    recorder = Recorder(url)
    (tmp_path / "drop" / "1.0").mkdir(parents=True)
    path = tmp_path / "pipeline.yml"
    path.write_text(NIGHTLY.format(name=name))
    await apply_file(db, path, "alice")
    triggers = Triggers(client, db, tmp_path / "data", queue)
    fired = 0

    async def fire() -> TriggerOutcome:
        """One firing, as the trigger's Schedule starts it: its own workflow id."""
        nonlocal fired
        fired += 1
        return await client.execute_workflow(
            TriggerWorkflow.run,
            TriggerInput(pipeline=name, trigger="schedule-1"),
            id=f"trigger/{name}/schedule-1-{fired}",
            task_queue=queue,
        )

    pipeline = client.get_workflow_handle(pipeline_workflow_id(name))
    try:
        async with Worker(
            client,
            task_queue=queue,
            workflows=[PipelineWorkflow, TriggerWorkflow, ReleaseWorkflow, StageWorkflow],
            activities=[triggers.fire_trigger, recorder.record],
            workflow_runner=SANDBOX,
        ):
            first = await fire()
            assert [c.number for c in first.created] == [1] and first.skipped == []
            assert first.summary == f"made {first.created[0].name}"
            release = client.get_workflow_handle(first.created[0].workflow_id)
            spec = await release.query(ReleaseWorkflow.spec)
            assert spec.created_by == "trigger:schedule-1"
            assert [(a.alias, a.version) for a in spec.artifacts] == [("app", "1.0")]
            seen = await pipeline.query(PipelineWorkflow.trigger_seen, "schedule-1")
            assert seen is not None and list(seen) == [""]

            second = await fire()
            assert second.created == [] and second.summary == "nothing new"
            assert await pipeline.query(PipelineWorkflow.trigger_seen, "schedule-1") == seen

            (tmp_path / "drop" / "1.1").mkdir()
            third = await fire()
            assert [c.number for c in third.created] == [2] and third.skipped == []
            spec = await client.get_workflow_handle(third.created[0].workflow_id).query(
                ReleaseWorkflow.spec
            )
            assert spec.created_by == "trigger:schedule-1"
            assert [(a.alias, a.version) for a in spec.artifacts] == [("app", "1.1")]
            after = await pipeline.query(PipelineWorkflow.trigger_seen, "schedule-1")
            assert after is not None and after[""] != seen[""]
            assert await pipeline.query(PipelineWorkflow.last_number) == 2
    finally:
        await db.close()
        await recorder.close()
