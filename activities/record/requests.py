"""The API's own trail of people's requests on releases (issue 13).

The workflows' audit trail says who decided what, as the API told them; it does
not know how that person signed in, nor anything of a request the API refused
before it reached a workflow (a 403). The API writes both here, one row per
request on a release: who, how they signed in (`token <id>` or `oidc
<issuer>`), what they asked, and its outcome — `sent` before the request goes
to the workflow, then `accepted` or `refused` with the workflow's answer, or
`forbidden` with the API's reason. `history` shows each workflow event with how
its person signed in (matched by request id) and each forbidden request as a
refused event of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column

from activities.record.database import Database
from activities.record.tables import Base, Id, Name, PipelineRow, ReleaseRow, Word, _id
from workflows.audit import AuditEvent


class ApiRequestRow(Base):
    """One person's request on a release, as the API took it."""

    __tablename__ = "api_requests"
    __table_args__ = (Index(None, "release_id", "time"), Index(None, "request_id"))

    id: Mapped[int] = _id()
    release_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("releases.id", ondelete="CASCADE"), doc="None: no such release"
    )
    pipeline: Mapped[str] = mapped_column(Name)
    number: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str | None] = mapped_column(Name)
    time: Mapped[datetime]
    actor: Mapped[str] = mapped_column(Name)
    via: Mapped[str] = mapped_column(String(300), doc="token <id>, or oidc <issuer>")
    action: Mapped[str] = mapped_column(Name)
    request_id: Mapped[str | None] = mapped_column(Name)
    outcome: Mapped[str] = mapped_column(Word, doc="sent, accepted, refused or forbidden")
    detail: Mapped[str] = mapped_column(Text, default="")


async def record_request(
    db: Database,
    *,
    pipeline: str,
    number: int,
    stage: str | None,
    actor: str,
    via: str,
    action: str,
    request_id: str | None,
    outcome: str,
    detail: str = "",
    now: datetime | None = None,
) -> int:
    """Keep one request; its row's id (to give it its outcome later)."""
    async with db.writing.begin() as session:
        release_id = (
            await session.execute(
                select(ReleaseRow.id)
                .join(PipelineRow, PipelineRow.id == ReleaseRow.pipeline_id)
                .where(PipelineRow.name == pipeline, ReleaseRow.number == number)
            )
        ).scalar_one_or_none()
        row = ApiRequestRow(
            release_id=release_id,
            pipeline=pipeline,
            number=number,
            stage=stage,
            time=now or datetime.now(UTC),
            actor=actor,
            via=via,
            action=action,
            request_id=request_id,
            outcome=outcome,
            detail=detail,
        )
        session.add(row)
        await session.flush()
        return row.id


async def request_answered(db: Database, row_id: int, outcome: str, detail: str = "") -> None:
    """The outcome of a request kept as `sent`."""
    async with db.writing.begin() as session:
        await session.execute(
            update(ApiRequestRow)
            .where(ApiRequestRow.id == row_id)
            .values(outcome=outcome, detail=detail)
        )


async def sender_of(db: Database, request_id: str) -> str | None:
    """Who sent the request of this id (through the API), if anyone did."""
    async with db.reading() as session:
        return (
            await session.execute(
                select(ApiRequestRow.actor)
                .where(ApiRequestRow.request_id == request_id, ApiRequestRow.outcome != "forbidden")
                .order_by(ApiRequestRow.id)
                .limit(1)
            )
        ).scalar_one_or_none()


async def request_of(db: Database, request_id: str, actor: str) -> ApiRequestRow | None:
    """`actor`'s request of this id, as it stands (its outcome, the answer's detail)."""
    async with db.reading() as session:
        return (
            await session.execute(
                select(ApiRequestRow)
                .where(ApiRequestRow.request_id == request_id, ApiRequestRow.actor == actor)
                .order_by(ApiRequestRow.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()


async def requests_of(db: Database, release_id: int) -> list[ApiRequestRow]:
    async with db.reading() as session:
        found = await session.execute(
            select(ApiRequestRow)
            .where(ApiRequestRow.release_id == release_id)
            .order_by(ApiRequestRow.time, ApiRequestRow.id)
        )
        return list(found.scalars())


def forbidden_event(row: ApiRequestRow) -> AuditEvent:
    """A request the API refused, as a line of the release's trail."""
    return AuditEvent(
        time=row.time,
        actor=row.actor,
        action=row.action,
        stage=row.stage,
        outcome="refused",
        detail=f"{row.detail} (refused by the API)",
        request_id=row.request_id,
    )
