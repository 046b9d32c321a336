"""The API server killed with -9 in the middle of decisions (issue 13).

Each decision carries a request id. Whatever the kill interrupted, a decision is
recorded once or not at all: a client that got no answer sends the same request
again to the restarted server and gets the first verdict (the workflow answers a
request it has answered with the same event), never a second decision.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid

import httpx

from activities.record import open_database, trail, upgrade
from activities.record.identity import add_user, create_token
from activities.record.views import TrailEvent
from tests.conftest import Stack, need_postgres, wait_for
from tests.postgres import start_cluster
from worker.devserver import free_port
from worker.settings import Settings

STAGES = [f"s{n}" for n in range(1, 9)]

PIPELINE = "\n".join(
    [
        "name: api-kill-SUFFIX",
        "stages:",
        *(
            f"  - {{name: {stage}, pool: POOL, pre_deployment: {{approvals: {{approvers: [bob]}}}},"
            f" tasks: [{{name: t, script: 'echo {stage} deployed'}}]}}"
            for stage in STAGES
        ),
    ]
)


async def start_api(stack: Stack, port: int, **env: str) -> subprocess.Popen[bytes]:
    process = stack.spawn(["serve", "--host", "127.0.0.1", "--port", str(port)], "api", **env)

    async def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the API exited with {process.returncode}")
        try:
            async with httpx.AsyncClient(timeout=1) as http:
                return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(healthy, timeout=30, what="the API to answer /healthz")
    return process


async def test_decisions_survive_a_kill_of_the_api_each_once_or_not_at_all(
    stack: Stack,
) -> None:
    settings = Settings.from_env(stack.env())
    await upgrade(settings.record_url)
    db = open_database(settings.record_url)
    bob = await add_user(db, "bob")
    token = (await create_token(db, bob)).token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"}

    await stack.start_worker()
    await stack.start_agent("a1")
    path = stack.write_pipeline(PIPELINE.replace("SUFFIX", stack.suffix))
    ref, _ = await stack.create(path)

    async def all_waiting() -> bool:
        status = await stack.status(ref)
        return all(status.stage(s).status.value == "waiting_for_approval" for s in STAGES)

    await wait_for(all_waiting, timeout=60, what="every stage waiting for bob")
    port = free_port()
    api = await start_api(stack, port)
    base = f"http://127.0.0.1:{port}/api/v1/releases/{ref.pipeline}/{ref.number}/stages"
    ids = {stage: uuid.uuid4().hex for stage in STAGES}

    async def approve(http: httpx.AsyncClient, stage: str) -> dict[str, object] | None:
        """The verdict, or None when the server did not answer (it may have decided)."""
        try:
            response = await http.post(
                f"{base}/{stage}/approve", headers=headers, json={"request_id": ids[stage]}
            )
        except httpx.HTTPError:
            return None
        assert response.status_code == 200, response.text
        return dict(response.json()["event"])

    async with httpx.AsyncClient(timeout=30) as http:
        sent = {stage: asyncio.create_task(approve(http, stage)) for stage in STAGES}
        # Kill the server as soon as the first verdict is back: the rest are in flight.
        await asyncio.wait(sent.values(), return_when=asyncio.FIRST_COMPLETED)
        os.kill(api.pid, signal.SIGKILL)
        api.wait()
        first = {stage: await task for stage, task in sent.items()}
    answered = [s for s, verdict in first.items() if verdict is not None]
    unanswered = [s for s, verdict in first.items() if verdict is None]
    print(f"\nbefore the kill: {len(answered)} answered, {len(unanswered)} not")
    assert answered, "no verdict came back before the kill"

    await start_api(stack, port)
    async with httpx.AsyncClient(timeout=30) as http:
        again = {stage: await approve(http, stage) for stage in STAGES}
    for stage in answered:
        # The same request again: the first verdict, not a second decision.
        assert again[stage] == first[stage], stage
    assert all(verdict is not None and verdict["actor"] == "bob" for verdict in again.values())

    async def deployed() -> bool:
        status = await stack.status(ref)
        return all(status.stage(s).status.value == "succeeded" for s in STAGES)

    await wait_for(deployed, timeout=120, what="every stage deployed")

    async def recorded() -> list[TrailEvent] | None:
        events = await trail(db, ref.pipeline, ref.number)
        approvals = [e for e in events or [] if e.action == "approve"]
        return approvals if len(approvals) >= len(STAGES) else None

    approvals = await wait_for(recorded, timeout=30, what="the approvals in the record")
    by_stage = {stage: [e for e in approvals if e.stage == stage] for stage in STAGES}
    assert {stage: len(events) for stage, events in by_stage.items()} == dict.fromkeys(STAGES, 1)
    for stage, (event,) in by_stage.items():
        assert event.actor == "bob" and event.outcome == "accepted", stage
        assert event.request_id == ids[stage]
        assert event.via is not None and event.via.startswith("token "), stage
    await db.close()


async def test_a_record_that_does_not_answer_is_a_503_and_the_api_answers_once_it_is_back(
    stack: Stack,
) -> None:
    """PostgreSQL killed with -9 under a running API: every request is answered 503 with
    a problem that says the record did not answer (not a 500, not a hang, no URL in
    it), and the same server answers again once the database is back."""
    need_postgres()
    cluster = start_cluster()  # its own: it is killed here
    try:
        url = await cluster.new_database()
        await upgrade(url)
        db = open_database(url)
        carol = await add_user(db, "carol", admin=True)
        token = (await create_token(db, carol)).token.get_secret_value()
        await db.close()
        port = free_port()
        api = await start_api(stack, port, STAGEFLOW_DATABASE_URL=url)
        headers = {"Authorization": f"Bearer {token}"}
        releases = f"http://127.0.0.1:{port}/api/v1/releases"
        approve = f"{releases}/webapp/1/stages/prod/approve"
        async with httpx.AsyncClient(timeout=30, headers=headers) as http:
            assert (await http.get(releases)).status_code == 200

            cluster.kill()
            for response in (await http.get(releases), await http.post(approve, json={})):
                assert response.status_code == 503, response.text
                assert response.headers["content-type"] == "application/problem+json"
                problem = response.json()
                assert problem["title"] == "Record unavailable"
                assert problem["detail"].startswith("the record store did not answer")
                assert str(cluster.port) not in problem["detail"]

            cluster.start()

            async def answering() -> bool:
                return (await http.get(releases)).status_code == 200

            await wait_for(answering, timeout=30, what="the API to answer from the record again")
        assert api.poll() is None, "the API exited when its database went away"
    finally:
        cluster.stop()
