"""The identity store (activities/record/identity.py): users, personal tokens kept only
as hashes, role grants and what they add up to — each on SQLite and on a real
PostgreSQL (tests/postgres.py), skipped there only when the server binaries are missing."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

import activities.record.identity  # noqa: F401  (its models join the record's metadata)
from activities.record import (
    Database,
    current_revision,
    open_database,
    upgrade,
)
from activities.record.identity import (
    InvalidGrant,
    UnknownToken,
    UserExists,
    add_user,
    authenticate,
    create_token,
    disable_user,
    get_user,
    grant,
    list_grants,
    list_tokens,
    list_users,
    revoke_grant,
    revoke_token,
    roles_of,
)
from activities.record.tables import Base

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
EVERYTHING = {"viewer", "releaser", "admin"}


# --- fixtures: the same tests on SQLite and PostgreSQL -------------------------------


@pytest.fixture
async def db(record_url: str) -> AsyncIterator[Database]:
    await upgrade(record_url)
    database = open_database(record_url)
    try:
        yield database
    finally:
        await database.close()


def plaintext(token: activities.record.identity.NewToken) -> str:
    return token.token.get_secret_value()


# --- users ---------------------------------------------------------------------------


async def test_a_user_reads_back_and_a_second_of_the_same_name_is_refused(db: Database) -> None:
    alice = await add_user(db, "alice", email="alice@example.com", now=T0)
    assert (alice.name, alice.email, alice.is_admin, alice.created_at) == (
        "alice",
        "alice@example.com",
        False,
        T0,
    )
    await add_user(db, "root", admin=True, now=T0)
    with pytest.raises(UserExists, match="'alice'"):
        await add_user(db, "alice")
    assert await get_user(db, "alice") == alice
    assert await get_user(db, "nobody") is None
    assert [(u.name, u.is_admin) for u in await list_users(db)] == [
        ("alice", False),
        ("root", True),
    ]


# --- tokens --------------------------------------------------------------------------


async def test_a_created_token_authenticates_as_its_user(db: Database) -> None:
    alice = await add_user(db, "alice", now=T0)
    made = await create_token(db, alice, name="laptop", now=T0)
    token = plaintext(made)
    prefix, token_id, secret = token.split("_", 2)
    assert (prefix, token_id) == ("sft", made.token_id)
    assert len(secret) == 43  # secrets.token_urlsafe(32)

    identity = await authenticate(db, token, now=T0 + timedelta(minutes=1))
    assert identity is not None
    assert (identity.user, identity.token_id, identity.how) == (alice, made.token_id, "token")


async def test_a_wrong_secret_an_unknown_id_or_a_malformed_token_sign_in_nobody(
    db: Database,
) -> None:
    alice = await add_user(db, "alice", now=T0)
    token = plaintext(await create_token(db, alice, now=T0))
    prefix, token_id, secret = token.split("_", 2)
    other_secret = ("A" if secret[0] != "A" else "B") + secret[1:]
    other_id = ("0" if token_id[0] != "0" else "1") + token_id[1:]
    for presented in (
        f"{prefix}_{token_id}_{other_secret}",
        f"{prefix}_{other_id}_{secret}",
        "",
        "sft_",
        token[:-1],
        token + "x",
        f"xyz_{token_id}_{secret}",
        f"sft_{token_id}_{secret[:-1]}é",
        f"Bearer {token}",
        token.upper(),
    ):
        assert await authenticate(db, presented, now=T0) is None, presented
    assert await authenticate(db, token, now=T0) is not None


async def test_a_revoked_token_signs_in_nobody_and_only_its_owner_or_an_admin_revokes(
    db: Database,
) -> None:
    alice = await add_user(db, "alice", now=T0)
    bob = await add_user(db, "bob", now=T0)
    root = await add_user(db, "root", admin=True, now=T0)
    first = await create_token(db, alice, now=T0)
    second = await create_token(db, alice, now=T0)

    with pytest.raises(UnknownToken):
        await revoke_token(db, bob, first.token_id, now=T0)
    with pytest.raises(UnknownToken):
        await revoke_token(db, alice, "0123456789abcdef", now=T0)
    assert await authenticate(db, plaintext(first), now=T0) is not None

    revoked = await revoke_token(db, alice, first.token_id, now=T0 + timedelta(hours=1))
    assert revoked.revoked_at == T0 + timedelta(hours=1)
    assert await authenticate(db, plaintext(first), now=T0 + timedelta(hours=2)) is None
    again = await revoke_token(db, alice, first.token_id, now=T0 + timedelta(hours=3))
    assert again.revoked_at == T0 + timedelta(hours=1)

    await revoke_token(db, root, second.token_id, now=T0 + timedelta(hours=1))
    assert await authenticate(db, plaintext(second), now=T0 + timedelta(hours=2)) is None


async def test_an_expired_token_signs_in_nobody(db: Database) -> None:
    alice = await add_user(db, "alice", now=T0)
    made = await create_token(db, alice, expires_in=timedelta(days=90), now=T0)
    assert made.expires_at == T0 + timedelta(days=90)
    token = plaintext(made)
    assert await authenticate(db, token, now=T0 + timedelta(days=89, hours=23)) is not None
    assert await authenticate(db, token, now=T0 + timedelta(days=90)) is None
    assert await authenticate(db, token, now=T0 + timedelta(days=400)) is None


async def test_a_disabled_users_tokens_sign_in_nobody(db: Database) -> None:
    alice = await add_user(db, "alice", now=T0)
    token = plaintext(await create_token(db, alice, now=T0))
    disabled = await disable_user(db, "alice", now=T0 + timedelta(hours=1))
    assert disabled.disabled_at == T0 + timedelta(hours=1)
    assert await authenticate(db, token, now=T0 + timedelta(hours=2)) is None
    with pytest.raises(activities.record.identity.UserDisabled):
        await create_token(db, alice, now=T0 + timedelta(hours=2))


async def test_the_record_holds_no_token_in_clear(db: Database) -> None:
    alice = await add_user(db, "alice", now=T0)
    made = [await create_token(db, alice, name=f"t{n}", now=T0) for n in range(3)]
    for token in made:
        await authenticate(db, plaintext(token), now=T0 + timedelta(minutes=5))
    secrets = [plaintext(token).split("_", 2)[2] for token in made]

    for table in ("api_tokens", "users"):
        async with db.reading() as session:
            rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()
        assert rows
        for row in rows:
            for value in row:
                for secret in secrets:
                    assert secret not in str(value), f"{table} keeps a token's secret"
    async with db.reading() as session:
        hashes = (
            await session.execute(text("SELECT secret_hash FROM api_tokens ORDER BY id"))
        ).scalars()
        assert list(hashes) == [hashlib.sha256(s.encode()).hexdigest() for s in secrets]


async def test_tokens_are_listed_and_shown_without_their_secret(db: Database) -> None:
    alice = await add_user(db, "alice", now=T0)
    bob = await add_user(db, "bob", now=T0)
    made = await create_token(db, alice, name="ci", expires_in=timedelta(days=1), now=T0)
    await create_token(db, bob, now=T0)
    token = plaintext(made)
    secret = token.split("_", 2)[2]

    for shown in (repr(made), str(made), made.model_dump_json(), str(made.model_dump())):
        assert secret not in shown
    [listed] = await list_tokens(db, alice)
    assert (listed.token_id, listed.name, listed.expires_at) == (
        made.token_id,
        "ci",
        T0 + timedelta(days=1),
    )
    assert set(listed.model_dump()) == {
        "token_id",
        "name",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    }
    assert secret not in listed.model_dump_json()
    identity = await authenticate(db, token, now=T0)
    assert identity is not None and secret not in repr(identity)


async def test_a_tokens_last_use_is_written_at_most_once_a_minute(db: Database) -> None:
    alice = await add_user(db, "alice", now=T0)
    token = plaintext(await create_token(db, alice, now=T0))

    async def last_used() -> datetime | None:
        [listed] = await list_tokens(db, alice)
        return listed.last_used_at

    assert await last_used() is None
    await authenticate(db, token, now=T0 + timedelta(seconds=10))
    assert await last_used() == T0 + timedelta(seconds=10)
    await authenticate(db, token, now=T0 + timedelta(seconds=40))
    assert await last_used() == T0 + timedelta(seconds=10)
    await authenticate(db, token, now=T0 + timedelta(seconds=71))
    assert await last_used() == T0 + timedelta(seconds=71)


# --- roles ---------------------------------------------------------------------------


async def test_admin_implies_releaser_implies_viewer(db: Database) -> None:
    for name, role in (("vera", "viewer"), ("rita", "releaser"), ("adam", "admin")):
        await grant(db, "webapp", None, f"user:{name}", role, by="root", now=T0)
    assert await roles_of(db, "vera", [], "webapp", None) == {"viewer"}
    assert await roles_of(db, "rita", [], "webapp", None) == {"viewer", "releaser"}
    assert await roles_of(db, "adam", [], "webapp", "prod") == EVERYTHING
    assert await roles_of(db, "nobody", [], "webapp", None) == set()


async def test_a_stage_grant_counts_on_its_stage_a_pipeline_grant_on_all_and_star_everywhere(
    db: Database,
) -> None:
    await grant(db, "webapp", "prod", "user:sam", "releaser", by="root", now=T0)
    await grant(db, "webapp", None, "user:pat", "releaser", by="root", now=T0)
    await grant(db, "*", None, "user:val", "viewer", by="root", now=T0)
    await grant(db, "*", "prod", "user:olga", "releaser", by="root", now=T0)

    assert await roles_of(db, "sam", [], "webapp", "prod") == {"viewer", "releaser"}
    assert await roles_of(db, "sam", [], "webapp", "dev") == set()
    assert await roles_of(db, "sam", [], "webapp", None) == set()
    assert await roles_of(db, "sam", [], "billing", "prod") == set()

    assert await roles_of(db, "pat", [], "webapp", "dev") == {"viewer", "releaser"}
    assert await roles_of(db, "pat", [], "webapp", None) == {"viewer", "releaser"}
    assert await roles_of(db, "pat", [], "billing", None) == set()

    for pipeline, stage in (("webapp", None), ("billing", "dev"), ("anything", "prod")):
        assert await roles_of(db, "val", [], pipeline, stage) == {"viewer"}
    assert await roles_of(db, "olga", [], "billing", "prod") == {"viewer", "releaser"}
    assert await roles_of(db, "olga", [], "billing", "dev") == set()


async def test_roles_add_up_from_the_user_and_their_groups(db: Database) -> None:
    await grant(db, "webapp", None, "group:developers", "viewer", by="root", now=T0)
    await grant(db, "webapp", "prod", "group:oidc:release-managers", "releaser", by="root", now=T0)
    await grant(db, "webapp", None, "user:kim", "viewer", by="root", now=T0)

    assert await roles_of(db, "lee", ["developers"], "webapp", "prod") == {"viewer"}
    assert await roles_of(db, "lee", ["group:developers"], "webapp", "dev") == {"viewer"}
    managers = ["developers", "oidc:release-managers"]
    assert await roles_of(db, "kim", managers, "webapp", "prod") == {"viewer", "releaser"}
    assert await roles_of(db, "kim", managers, "webapp", "dev") == {"viewer"}
    # A group name is not a user name: `user:developers` has no role.
    assert await roles_of(db, "developers", [], "webapp", None) == set()
    # An IdP group is not the pipeline group of the same name.
    assert await roles_of(db, "lee", ["release-managers"], "webapp", "prod") == set()


async def test_an_admin_user_is_admin_everywhere_and_a_disabled_one_nothing(db: Database) -> None:
    await add_user(db, "root", admin=True, now=T0)
    assert await roles_of(db, "root", [], "anything", None) == EVERYTHING
    assert await roles_of(db, "root", [], "anything", "prod") == EVERYTHING

    await add_user(db, "gone", now=T0)
    await grant(db, "*", None, "user:gone", "admin", by="root", now=T0)
    await grant(db, "*", None, "group:ops", "viewer", by="root", now=T0)
    assert await roles_of(db, "gone", ["ops"], "webapp", None) == EVERYTHING
    await disable_user(db, "gone", now=T0)
    assert await roles_of(db, "gone", ["ops"], "webapp", None) == set()


async def test_granting_twice_changes_nothing_and_revoking_takes_back_that_grant(
    db: Database,
) -> None:
    first = await grant(db, "webapp", None, "user:pat", "releaser", by="root", now=T0)
    again = await grant(
        db, "webapp", None, "user:pat", "releaser", by="eve", now=T0 + timedelta(days=1)
    )
    assert again == first
    staged = await grant(db, "webapp", "prod", "user:pat", "releaser", by="root", now=T0)
    assert await grant(db, "webapp", "prod", "user:pat", "releaser", by="eve", now=T0) == staged
    await grant(db, "*", None, "group:ops", "viewer", by="root", now=T0)
    assert len(await list_grants(db)) == 3
    assert [(g.pipeline, g.stage, g.subject) for g in await list_grants(db, "webapp")] == [
        ("*", None, "group:ops"),
        ("webapp", None, "user:pat"),
        ("webapp", "prod", "user:pat"),
    ]
    assert [(g.pipeline, g.subject) for g in await list_grants(db, "billing")] == [
        ("*", "group:ops")
    ]

    assert await revoke_grant(db, "webapp", None, "user:pat", "releaser")
    assert not await revoke_grant(db, "webapp", None, "user:pat", "releaser")
    # The stage's grant and the group's are still there.
    assert await roles_of(db, "pat", ["ops"], "webapp", "dev") == {"viewer"}
    assert await roles_of(db, "pat", ["ops"], "webapp", "prod") == {"viewer", "releaser"}
    assert await revoke_grant(db, "webapp", "prod", "user:pat", "releaser")
    assert await roles_of(db, "pat", [], "webapp", "prod") == set()


async def test_the_same_grant_made_at_once_by_two_writers_is_one_grant(record_url: str) -> None:
    await upgrade(record_url)
    writers = [open_database(record_url) for _ in range(4)]
    try:
        made = await asyncio.gather(
            *(
                grant(w, "webapp", None, "user:pat", "admin", by=f"w{n}", now=T0)
                for n, w in enumerate(writers)
            )
        )
        assert len(set(made)) == 1
        assert len(await list_grants(writers[0])) == 1
    finally:
        for writer in writers:
            await writer.close()


async def test_a_malformed_grant_is_refused(db: Database) -> None:
    for pipeline, stage, subject, role in (
        ("webapp", None, "alice", "viewer"),
        ("webapp", None, "team:ops", "viewer"),
        ("webapp", None, "user:", "viewer"),
        ("webapp", None, "user:alice", "owner"),
        ("", None, "user:alice", "viewer"),
        ("webapp", "", "user:alice", "viewer"),
    ):
        with pytest.raises(InvalidGrant):
            await grant(db, pipeline, stage, subject, role, by="root", now=T0)
    assert await list_grants(db) == []


# --- migration -----------------------------------------------------------------------


async def test_upgrade_from_0003_keeps_the_rows_and_makes_the_schema_the_models_declare(
    record_url: str,
) -> None:
    await upgrade(record_url, "0003")
    database = open_database(record_url)
    try:
        async with database.writing.begin() as session:
            await session.execute(text("INSERT INTO pipelines (name) VALUES ('webapp')"))
            await session.execute(
                text("INSERT INTO record_meta (key, value) VALUES ('backfill', 'done')")
            )
        await upgrade(record_url)
        assert await current_revision(record_url) == "0007"
        async with database.reading() as session:
            assert (await session.execute(text("SELECT name FROM pipelines"))).scalars().all() == [
                "webapp"
            ]
            assert (
                await session.execute(text("SELECT value FROM record_meta"))
            ).scalar_one() == "done"
        async with database.engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
        assert differences == []
        alice = await add_user(database, "alice", now=T0)
        token = plaintext(await create_token(database, alice, now=T0))
        assert await authenticate(database, token, now=T0) is not None
    finally:
        await database.close()
