"""Rollback and holds end to end, through the CLI and the API: `rollback P STAGE`
puts back the release that was there before (or `--to N`), refuses one that never
succeeded there, and `status P` shows it; `hold` keeps a release from a stage and the
stages after it until `unhold`, with who and why in its history."""

from __future__ import annotations

import json

import pytest

from starter.deployment_control import deployed_where
from starter.releases import ReleaseRef
from tests.conftest import Stack, wait_for
from tests.test_engine_e2e import replay_release
from workflows.release import StageStatus

ONE_STAGE = """
    name: roll-{suffix}
    variables:
      EXIT: {{value: "0", settable: true}}
    stages:
      - name: prod
        pool: POOL
        tasks:
          - name: deploy
            script: echo "release $STAGEFLOW_RELEASE_NUMBER attempt $STAGEFLOW_ATTEMPT"; exit $EXIT
"""


def on_prod(stack: Stack, pipeline: str) -> dict[str, object]:
    shown = stack.cli("status", pipeline, "--json")
    assert shown.returncode == 0, shown.stderr
    (prod,) = [s for s in json.loads(shown.stdout)["deployed"] if s["stage"] == "prod"]
    return prod


@pytest.mark.e2e
async def test_rollback_puts_back_the_release_before_and_refuses_one_never_there(
    stack: Stack,
) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    path = stack.write_pipeline(ONE_STAGE.format(suffix=stack.suffix))
    pipeline = f"roll-{stack.suffix}"
    for _ in range(3):
        ref, _created = await stack.create(path)
        assert (await stack.wait_settled(ref)).stage("prod").status == StageStatus.SUCCEEDED
    failed, _ = await stack.create(path, variables={"EXIT": "1"})
    assert (await stack.wait_settled(failed)).stage("prod").status == StageStatus.FAILED

    rolled = stack.cli("rollback", pipeline, "prod")
    assert rolled.returncode == 0, rolled.stderr
    assert "rollback of prod from Release-3 to Release-2" in rolled.stdout
    second = ReleaseRef(pipeline, 2)
    prod = (await stack.wait_settled(second)).stage("prod")
    assert prod.status == StageStatus.SUCCEEDED and len(prod.attempts) == 2
    assert prod.attempts[-1].reason == "rollback"

    async def shows(number: int) -> dict[str, object] | None:
        shown = on_prod(stack, pipeline)
        deployed = shown["deployed"]
        return shown if isinstance(deployed, dict) and deployed["number"] == number else None

    shown = await wait_for(lambda: shows(2), timeout=30, what="status to show Release-2")
    assert [d["number"] for d in shown["previous"]] == [3, 1]  # type: ignore[union-attr]
    history = stack.cli("history", str(second))
    assert history.returncode == 0, history.stderr
    assert "rollback" in history.stdout and "from Release-3 to Release-2" in history.stdout

    # Again: further back (Release-1), then --to a release that succeeded there.
    assert stack.cli("rollback", pipeline, "prod").returncode == 0
    await wait_for(lambda: shows(1), timeout=60, what="status to show Release-1")
    again = stack.cli("rollback", pipeline, "prod", "--to", "3")
    assert again.returncode == 0, again.stderr
    await wait_for(lambda: shows(3), timeout=60, what="status to show Release-3")
    assert (await deployed_where(stack.client, pipeline))["prod"][-1].reason == "rollback"
    await replay_release(stack.client, await stack.wait_settled(second), record_as="rollback")

    # Refused: one that failed there, one that never was, the one there now.
    for to, reason in (
        ("4", "release 4 never succeeded on stage 'prod'"),
        ("9", "release 9 never succeeded on stage 'prod'"),
        ("3", "release 3 is what stage 'prod' has now"),
    ):
        refused = stack.cli("rollback", pipeline, "prod", "--to", to)
        assert refused.returncode == 2, refused.stdout
        assert reason in refused.stderr
    unknown = stack.cli("rollback", pipeline, "nowhere")
    assert unknown.returncode == 2 and "nothing has been deployed on stage 'nowhere'" in (
        unknown.stderr
    )


THREE_STAGES = """
    name: held-{suffix}
    users:
      alice: {{email: alice@example.com}}
    stages:
      - name: dev
        pool: POOL
        pre_deployment:
          approvals: {{approvers: [alice]}}
        tasks:
          - {{name: deploy, script: echo dev}}
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks:
          - {{name: deploy, script: echo qa}}
      - name: prod
        trigger: {{after_stages: [qa]}}
        pool: POOL
        tasks:
          - {{name: deploy, script: echo prod}}
"""


@pytest.mark.e2e
async def test_hold_keeps_a_release_from_a_stage_and_those_after_until_unhold(
    stack: Stack,
) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    path = stack.write_pipeline(THREE_STAGES.format(suffix=stack.suffix))
    ref, _ = await stack.create(path)

    async def dev_waits() -> bool:
        return (await stack.status(ref)).stage("dev").status == "waiting_for_approval"

    await wait_for(dev_waits, timeout=60, what="dev to wait for alice")
    held = stack.cli("hold", str(ref), "qa", "--reason", "bug 12 found in dev")
    assert held.returncode == 0, held.stderr
    twice = stack.cli("hold", str(ref), "qa", "--reason", "again")
    assert twice.returncode == 2 and "held already (by tester: bug 12 found in dev)" in twice.stderr
    assert stack.cli("approve", str(ref), "dev", user="alice").returncode == 0

    status = await stack.wait_settled(ref)
    assert [v.status for v in status.stages] == [
        StageStatus.SUCCEEDED,
        StageStatus.NOT_DEPLOYED,
        StageStatus.NOT_DEPLOYED,
    ]
    assert status.stage("qa").held == "held by tester: bug 12 found in dev"
    assert status.stage("prod").held == "held by tester on qa: bug 12 found in dev"

    async def shown_held() -> dict[str, str] | None:
        shown = stack.cli("release", "show", str(ref), "--json")
        assert shown.returncode == 0, shown.stderr
        held = {v["name"]: v["held"] for v in json.loads(shown.stdout)["stages"]}
        return held if held["prod"] else None

    # `release show` (the record) says it too, by the trail.
    assert await wait_for(shown_held, timeout=30, what="the hold in the record") == {
        "dev": "",
        "qa": "held by tester: bug 12 found in dev",
        "prod": "held by tester on qa: bug 12 found in dev",
    }
    shown = stack.cli("release", "show", str(ref))
    assert "qa: held by tester: bug 12 found in dev" in shown.stdout
    assert f"stageflow unhold {ref} qa" in shown.stdout
    deploy = stack.cli("deploy", str(ref), "prod")
    assert deploy.returncode == 2 and "held by tester on qa: bug 12 found in dev" in deploy.stderr

    lifted = stack.cli("unhold", str(ref), "qa")
    assert lifted.returncode == 0, lifted.stderr

    async def all_deployed() -> bool:
        shown = await stack.status(ref)
        return all(v.status == StageStatus.SUCCEEDED for v in shown.stages)

    await wait_for(all_deployed, timeout=60, what="qa and prod after the unhold")
    history = stack.cli("history", str(ref), "--json")
    assert history.returncode == 0, history.stderr
    events = [
        (e["actor"], e["action"], e.get("stage"), e["detail"]) for e in json.loads(history.stdout)
    ]
    assert ("tester", "hold", "qa", "bug 12 found in dev") in events
    assert ("stageflow", "held back", "qa", "held by tester: bug 12 found in dev") in events
    assert ("tester", "unhold", "qa", "") in events
    assert stack.cli("unhold", str(ref), "qa").returncode == 2  # not held any more
    await replay_release(stack.client, await stack.status(ref), record_as="hold")
