"""What the record keeps about itself: small named facts, such as "the backfill from
Temporal is done" (worker/backfill.py), one row per key in `record_meta`.

The model is part of the same metadata as the record's tables (tables.Base), so
migrations and the schema check see it; its table is created by revision 0002.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import String, Table, Text, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from activities.record.database import Database
from activities.record.tables import Base


class MetaRow(Base):
    """One fact about the record itself: its key, its value, when it was last set."""

    __tablename__ = "record_meta"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime | None]


async def get_meta(db: Database, key: str) -> str | None:
    """The value kept under `key`; None when it was never set."""
    async with db.reading() as session:
        return (
            await session.execute(select(MetaRow.value).where(MetaRow.key == key))
        ).scalar_one_or_none()


async def set_meta(db: Database, key: str, value: str) -> None:
    """Keep `value` under `key`, replacing what was there (the last write wins)."""
    table = MetaRow.__table__
    assert isinstance(table, Table)
    insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(key=key, value=value, updated_at=datetime.now(UTC))
    async with db.writing.begin() as session:
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["key"],
                set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            )
        )
