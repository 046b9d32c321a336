"""Where the record lives and how to reach it: the URL, the async engine, migrations.

A SQLite file in the data dir by default (WAL, so readers never wait for the
writer), PostgreSQL for a team (`STAGEFLOW_DATABASE_URL=postgresql://…`, through
asyncpg). Every process that writes calls `upgrade(url)` at start; readers only
open the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import DateTime, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:  # Alembic loads only in a process that migrates (a reader never does)
    from alembic.config import Config

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# How long a SQLite writer waits for another one before it gives up (seconds): less
# than the `record` activity's start-to-close, so a write blocked by another writer
# fails and is retried instead of outliving its activity.
SQLITE_BUSY_TIMEOUT = 5


def default_database_url(data_dir: Path) -> str:
    """The record's SQLite file in the data dir."""
    return f"sqlite+aiosqlite:///{Path(data_dir).expanduser().resolve() / 'stageflow.db'}"


def async_url(url: str) -> str:
    """The URL with the async driver Stageflow uses: `postgresql://` → asyncpg,
    `sqlite://` → aiosqlite; a URL that names its driver is kept."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """The URL for messages: the password hidden."""
    return make_url(url).render_as_string(hide_password=True)


class UtcDateTime(TypeDecorator[datetime]):
    """A moment in UTC, aware on the way out on every database (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"a recorded time must carry its zone: {value!r}")
        moment = value.astimezone(UTC)
        return moment.replace(tzinfo=None) if dialect.name == "sqlite" else moment

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Database:
    """The record's engine and its two kinds of session.

    `writing()` sessions serialize writers: SQLite takes its write lock at BEGIN
    (BEGIN IMMEDIATE, so a writer never fails on a stale snapshot), PostgreSQL
    rows are locked by the write functions themselves. `reading()` sessions see
    one snapshot for all their queries (a deferred BEGIN in WAL; REPEATABLE READ
    on PostgreSQL).
    """

    engine: AsyncEngine
    writing: async_sessionmaker[AsyncSession]
    reading: async_sessionmaker[AsyncSession]
    # The workflows' writes (writes.py: many, small, each one transaction of plain
    # SQLAlchemy Core) run through run_write. On SQLite they run in a thread with the
    # standard library's driver: aiosqlite hops to its thread and back for every
    # statement (about 0.6 ms a statement here, 30 times a synchronous one).
    writer: AsyncEngine
    sync_writer: Engine | None = None
    # SQLite has one writer at a time: this process's writers queue here, in order,
    # instead of in SQLite's busy handler (which sleeps up to 100 ms between tries).
    serial: asyncio.Lock | None = None

    async def run_write(self, write: Callable[..., T], *args: Any) -> T:
        """`write(connection, *args)` in one write transaction, committed when it returns."""
        if self.sync_writer is None:
            async with self.writer.begin() as connection:
                return await connection.run_sync(write, *args)
        assert self.serial is not None
        async with self.serial:
            writing = asyncio.ensure_future(asyncio.to_thread(self._write_in_thread, write, args))
            try:
                return await asyncio.shield(writing)
            except asyncio.CancelledError:
                # The thread cannot be stopped: the next writer waits until it has
                # committed or rolled back.
                await asyncio.wait({writing})
                raise

    def _write_in_thread(self, write: Callable[..., T], args: tuple[Any, ...]) -> T:
        assert self.sync_writer is not None
        with self.sync_writer.begin() as connection:
            return write(connection, *args)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def close(self) -> None:
        await self.engine.dispose()
        if self.sync_writer is not None:
            self.sync_writer.dispose()


def create_engine(url: str, **options: Any) -> AsyncEngine:
    """An async engine for the record; SQLite in WAL with foreign keys on and
    transactions that begin when the session does (see Database)."""
    url = async_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True, **options)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT}, **options)
    _sqlite_as_the_record(engine.sync_engine)
    return engine


def _sqlite_as_the_record(engine: Engine) -> None:
    """WAL, durable commits, foreign keys, and BEGIN IMMEDIATE for writers."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own implicit BEGIN (only before DML) is off: _on_begin says when.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # As the dev server's: a commit that was acknowledged survives a power loss.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get("stageflow_writer", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sync_sqlite_writer(url: str) -> Engine:
    """The record's SQLite file for run_write: the standard library's driver, used by
    one thread at a time (Database.serial), writers beginning IMMEDIATE."""
    parsed = make_url(async_url(url)).set(drivername="sqlite+pysqlite")
    engine = sa_create_engine(
        parsed,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False},
    )
    _sqlite_as_the_record(engine)
    return engine.execution_options(stageflow_writer=True)


def open_database(url: str, **options: Any) -> Database:
    """The record at `url`, ready for the write and read functions (no migration run)."""
    engine = create_engine(url, **options)
    if engine.dialect.name == "postgresql":
        reader = engine.execution_options(isolation_level="REPEATABLE READ")
        writer = engine
    else:
        reader = engine
        writer = engine.execution_options(stageflow_writer=True)
    database = make_url(url).database
    in_a_file = engine.dialect.name == "sqlite" and database not in (None, "", ":memory:")
    return Database(
        engine=engine,
        writing=async_sessionmaker(writer, expire_on_commit=False),
        reading=async_sessionmaker(reader, expire_on_commit=False),
        writer=writer,
        sync_writer=_sync_sqlite_writer(url) if in_a_file else None,
        serial=asyncio.Lock() if in_a_file else None,
    )


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the record's schema at `url` up to `revision` (the newest by default).

    Safe to run at every start and from several processes at once: PostgreSQL
    takes an advisory lock in the migration's transaction, SQLite its write lock
    (BEGIN IMMEDIATE); the second migrator then finds the schema current.
    """
    engine = create_engine(url).execution_options(stageflow_writer=True)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    """The schema revision the record at `url` is at; None before the first upgrade."""
    from alembic.runtime.migration import MigrationContext

    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()


def _upgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def upgrade_now(url: str) -> None:
    """`upgrade` for a caller without an event loop (`stageflow db upgrade`)."""
    asyncio.run(upgrade(url))
