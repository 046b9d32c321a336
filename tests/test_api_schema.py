"""The API against its own OpenAPI schema (issue 13): schemathesis generates requests for
every operation of /api/v1/openapi.json and sends them to the real app in-process, with
an admin's personal token, a record seeded with releases and the session's Temporal dev
server behind the actions; the record on SQLite and on PostgreSQL (tests/postgres.py,
skipped there only when the server binaries are missing). No answer may be a 5xx, and
every answer must match the schema: a documented status code, its content type, a body
that validates.

Cases per operation are bounded and derandomized, so a run is the same run each time:
valid requests with random values, valid requests naming things the record has (the
seeded pipeline, its releases and stages; pipeline files on the server), invalid
requests (negative mode), and requests with whatever credentials the generator makes up.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from temporalio.client import Client

from activities.record import default_database_url, open_database, record_request, upgrade
from activities.record.identity import add_user, create_token
from bench.record import seed_releases
from starter.api.app import API, create_app
from worker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
VALID_PIPELINE = ROOT / "examples" / "webapp" / "pipeline.yml"
SEEDED = 12  # releases 1-12: qa failed on 1, waiting for approval on 10, prod on 5
# A request id the trail has from another person: an action sent with it is refused.
TAKEN_REQUEST_ID = "sent-by-bob-0001"
CASES_PER_OPERATION = 30

# "No 5xx, every response matches the schema": these, and not schemathesis' stateful or
# data-acceptance checks (which judge the API's choices, not its contract).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _operations() -> list[tuple[str, str]]:
    # The schema does not need the lifespan: read at collection, one test per operation.
    spec = create_app(Settings()).openapi()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


OPERATIONS = _operations()


@dataclass
class World:
    """What the generated requests run against."""

    schema: Any  # schemathesis' OpenApiSchema, loaded from the running app
    database: str  # "sqlite" or "postgresql"
    token: str
    pipeline: str
    files: list[str]  # absolute paths on the server: a valid pipeline and not-pipelines


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def world(
    request: pytest.FixtureRequest,
    client: Client,
    dev_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("api-schema")
    suffix = uuid.uuid4().hex[:6]
    if request.param == "sqlite":
        url = default_database_url(root / "data")
    else:
        url = await request.getfixturevalue("postgres").new_database()
    settings = Settings(
        address=dev_server,
        data_dir=root / "data",
        task_queue=f"stageflow-{suffix}",
        database_url=url,
    )
    # A pipeline name of this run only: the dev server is shared with the session's tests.
    pipeline = f"schema-{suffix}"
    await upgrade(settings.record_url)
    db = open_database(settings.record_url)
    try:
        await seed_releases(db, SEEDED, pipelines=(pipeline,))
        # alice: an approver of the seeded pipeline's qa, so decisions get past who-may and
        # reach Temporal; an admin, so every other route does too.
        admin = await add_user(db, "alice", admin=True)
        token = (await create_token(db, admin, name="schemathesis")).token.get_secret_value()
        await record_request(
            db,
            pipeline=pipeline,
            number=10,
            stage="qa",
            actor="bob",
            via="token 0123456789abcdef",
            action="approve",
            request_id=TAKEN_REQUEST_ID,
            outcome="accepted",
        )
    finally:
        await db.close()

    (root / "not-a-pipeline.yml").write_text("- just\n- a list\n")
    (root / "binary.yml").write_bytes(bytes(range(256)))
    files = [str(VALID_PIPELINE), str(root / "not-a-pipeline.yml"), str(root / "binary.yml")]
    files.append(str(root))  # a directory

    app = create_app(settings, client=client)
    # Loading the schema from the app starts its lifespan (schemathesis runs it in its own
    # event-loop thread, where every call of the run is then served): the record's engine
    # is opened there, by the app itself.
    signed_in = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_asgi(f"{API}/openapi.json", app, headers=signed_in)
    assert app.state.service.db is not None
    try:
        yield World(
            schema=schema, database=request.param, token=token, pipeline=pipeline, files=files
        )
    finally:
        shutdown_lifespans()


def cases(world: World, method: str, path: str) -> st.SearchStrategy[Any]:
    """The cases for one operation: valid, valid with known names (and another person's
    request id), invalid, unauthenticated."""
    operation = world.schema[path][method]
    signed_in = {"authorization": f"Bearer {world.token}"}
    variants = [
        operation.as_strategy(headers=signed_in),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE, headers=signed_in),
        operation.as_strategy(),
    ]
    known = {
        "pipeline": st.sampled_from([world.pipeline]),
        "number": st.sampled_from([1, 5, 10, SEEDED + 1, 2**31, 2**63]),
        "stage": st.sampled_from(["dev", "qa", "prod"]),
    }
    named = {name: values for name, values in known.items() if f"{{{name}}}" in path}
    if named:
        known_case = st.fixed_dictionaries(named).flatmap(
            lambda params: operation.as_strategy(headers=signed_in, path_parameters=params)
        )
        variants.append(known_case)
        if method == "POST":  # an action
            variants.append(known_case.map(with_taken_request_id))
    if (method, path) == ("GET", f"{API}/releases"):
        variants.append(
            operation.as_strategy(headers=signed_in, query={"pipeline": world.pipeline})
        )
    if (method, path) in (("POST", f"{API}/pipelines/validate"), ("POST", f"{API}/releases")):
        # A release of a valid pipeline would wait on a control worker this test does not
        # run: creating releases is the end-to-end tests' business.
        files = world.files if path.endswith("/validate") else world.files[1:]
        variants.append(
            st.sampled_from(files).flatmap(
                lambda file: operation.as_strategy(headers=signed_in, body={"file": file})
            )
        )
    return st.one_of(variants)


def with_taken_request_id(case: Any) -> Any:
    if isinstance(case.body, dict):
        case.body = {**case.body, "request_id": TAKEN_REQUEST_ID}
    return case


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_every_answer_is_documented_and_none_is_a_server_error(
    world: World, method: str, path: str
) -> None:
    @settings(
        max_examples=CASES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=cases(world, method, path))
    def answer_matches_schema(case: Any) -> None:
        case.validate_response(case.call(), checks=CHECKS)

    answer_matches_schema()
