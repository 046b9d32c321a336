"""Alembic's environment for the record: run through `activities.record.upgrade(url)`,
which hands in a connection of the async engine already in a transaction.

Standing alone (`alembic -x url=... upgrade head` with script_location pointed
here) it opens its own async engine from `-x url=` or `sqlalchemy.url`.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from activities.record.tables import Base

# Any constant: the lock every migrator of one PostgreSQL database takes first.
MIGRATION_LOCK = 0x5354_4147

config = context.config
target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copy
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two processes starting at once: the second waits, then finds the schema current.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def run_standalone(url: str) -> None:
    from activities.record.database import create_engine

    engine = create_engine(url).execution_options(stageflow_writer=True)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the record's migrations run online only: use activities.record.upgrade(url)")

given = config.attributes.get("connection")
if given is not None:
    run_migrations(given)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit(
            "give the record's URL: alembic -x url=sqlite+aiosqlite:///... upgrade head"
        )
    asyncio.run(run_standalone(url))
