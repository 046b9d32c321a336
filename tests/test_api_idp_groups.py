"""Approvers named by identity-provider group (issue 13): `group:oidc:NAME` in a stage's
approvers, or inside one of the pipeline's `groups:`, is whoever signs in through OIDC
with that group in their token. The API passes the groups the token carried with the
decision; the workflow judges with them (workflows/who_may.py).

A real world: the dev server, a control worker and an agent as processes, the record
in the data dir, the API app in this process on the same record and Temporal, and a
test identity provider on loopback whose keys are made here (tests/test_api_auth.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey
from temporalio.client import Client

from activities import record
from activities.record import Database, open_database, upgrade
from starter.api.app import create_app
from starter.api.oidc import OidcSettings
from starter.releases import ReleaseRef
from tests.conftest import Stack, wait_for
from tests.test_api_auth import issuer  # noqa: F401  (the test identity provider)
from tests.test_oidc import AUDIENCE, Issuer, claims_at, sign
from worker.settings import Settings

pytestmark = pytest.mark.e2e

# staging: anyone of the provider's `release-managers`; prod: the pipeline's `leads`,
# which are alice (a person of the record) and the provider's `leads`.
PIPELINE = """
    name: {name}
    groups: {{leads: [alice, "group:oidc:leads"]}}
    stages:
      - name: staging
        pool: POOL
        pre_deployment:
          approvals: {{approvers: ["group:oidc:release-managers"]}}
        tasks: [{{name: ship, script: "echo staged"}}]
      - name: prod
        trigger: {{after_stages: [staging]}}
        pool: POOL
        pre_deployment:
          approvals: {{approvers: ["group:leads"]}}
        tasks: [{{name: ship, script: "echo shipped"}}]
"""


@dataclass
class World:
    stack: Stack
    db: Database
    http: httpx.AsyncClient
    issuer: Issuer
    key: RSAKey
    ref: ReleaseRef

    def signed_in(self, user: str, *groups: str) -> dict[str, str]:
        """The headers of `user`, signed in through the provider with `groups`."""
        claims = claims_at(self.issuer, datetime.now(UTC), preferred_username=user)
        token = sign({**claims, "groups": list(groups)}, self.key)
        return {"Authorization": f"Bearer {token}"}

    def stage_url(self, stage: str, action: str) -> str:
        return f"/api/v1/releases/{self.ref.pipeline}/{self.ref.number}/stages/{stage}/{action}"

    async def stage_status(self, stage: str) -> str:
        recorded = await record.release(self.db, self.ref.pipeline, self.ref.number)
        return "" if recorded is None else recorded.stage(stage).status.value

    async def waits(self, stage: str) -> bool:
        return await self.stage_status(stage) == "waiting_for_approval"


@pytest.fixture
async def world(
    client: Client,
    dev_server: str,
    tmp_path_factory: pytest.TempPathFactory,
    issuer: tuple[Issuer, RSAKey],  # noqa: F811
) -> AsyncIterator[World]:
    stack = Stack(client=client, address=dev_server, root=tmp_path_factory.mktemp("idp"))
    settings = Settings.from_env(stack.env())
    async with AsyncExitStack() as exits:
        exits.callback(stack.stop_all)
        await upgrade(settings.record_url)
        db = open_database(settings.record_url)
        exits.push_async_callback(db.close)
        await asyncio.gather(stack.start_worker(), stack.start_agent("a1"))
        path = stack.write_pipeline(PIPELINE.format(name=f"idp-{stack.suffix}"))
        ref, _ = await stack.create(path)
        oidc = OidcSettings(issuer=issuer[0].url, audience=AUDIENCE)
        app = create_app(settings, db=db, oidc=oidc, client=stack.client)
        await exits.enter_async_context(app.router.lifespan_context(app))
        http = await exits.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        )
        found = World(stack=stack, db=db, http=http, issuer=issuer[0], key=issuer[1], ref=ref)
        await wait_for(lambda: found.waits("staging"), timeout=60, what="staging to wait")
        yield found


async def inbox(world: World, headers: dict[str, str]) -> list[str]:
    response = await world.http.get("/api/v1/approvals", params={"mine": True}, headers=headers)
    assert response.status_code == 200, response.text
    return [f"{w['pipeline']}/{w['number']} {w['stage']}" for w in response.json()]


async def test_members_of_a_named_provider_group_approve_and_nobody_else(world: World) -> None:
    olivia = world.signed_in("olivia", "release-managers")
    oscar = world.signed_in("oscar", "ops")
    lena = world.signed_in("lena", "leads")
    staging = f"{world.ref} staging"

    # What waits on whom: staging on olivia's group, not on oscar's nor lena's.
    assert await inbox(world, olivia) == [staging]
    assert await inbox(world, oscar) == []
    assert await inbox(world, lena) == []

    # oscar's group is named nowhere: he may not even see the release, and the API
    # refuses him before the workflow is asked.
    refused = await world.http.post(world.stage_url("staging", "approve"), json={}, headers=oscar)
    assert refused.status_code == 403, refused.text
    assert "oscar may not view pipeline" in refused.json()["detail"]

    approved = await world.http.post(
        world.stage_url("staging", "approve"), json={"comment": "ok"}, headers=olivia
    )
    assert approved.status_code == 200, approved.text
    event = approved.json()["event"]
    assert (event["actor"], event["action"], event["outcome"]) == ("olivia", "approve", "accepted")

    # prod waits for `leads`: the provider's leads (lena), not release-managers.
    await wait_for(lambda: world.waits("prod"), timeout=60, what="prod to wait for the leads")
    assert await inbox(world, lena) == [f"{world.ref} prod"]
    assert await inbox(world, olivia) == []
    not_hers = await world.http.post(world.stage_url("prod", "approve"), json={}, headers=olivia)
    assert not_hers.status_code == 403, not_hers.text
    assert "olivia is not an approver of stage 'prod'" in not_hers.json()["detail"]
    by_lena = await world.http.post(world.stage_url("prod", "approve"), json={}, headers=lena)
    assert by_lena.status_code == 200, by_lena.text
    assert by_lena.json()["event"]["actor"] == "lena"

    async def prod_succeeded() -> bool:
        return await world.stage_status("prod") == "succeeded"

    await wait_for(prod_succeeded, timeout=60, what="prod deployed")

    async def decisions() -> list[tuple[Any, ...]] | None:
        trail = await record.trail(world.db, world.ref.pipeline, world.ref.number) or []
        found = [(e.actor, e.stage, e.outcome, e.via) for e in trail if e.action == "approve"]
        return found if len(found) >= 4 else None

    via = f"oidc {world.issuer.url}"
    assert await wait_for(decisions, timeout=30, what="the decisions in the trail") == [
        ("oscar", "staging", "refused", via),
        ("olivia", "staging", "accepted", via),
        ("olivia", "prod", "refused", via),
        ("lena", "prod", "accepted", via),
    ]
