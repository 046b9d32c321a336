"""Sessions of people signed in to Stageflow's web pages (issue 14), kept in the record.

A browser holds one cookie, `sfs_<session_id>_<secret>`, made like a personal token
(activities/record/identity.py): the id is public, the secret is 256 random bits
kept only as its SHA-256. A session remembers who signed in and how: with a
personal token (`token_id`: revoking that token, or disabling its person, ends the
session too) or through an identity provider (`via` names the issuer; its groups
are kept, as the ID token gave them). Signing out ends it; so does its expiry.

Each session has a CSRF token for its forms: an HMAC of the fixed word "csrf" under
the session's secret, so it is known only to whoever holds the cookie, needs no
storage, and differs for every session.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, SecretStr
from sqlalchemy import Boolean, Index, String, select, update
from sqlalchemy.orm import Mapped, mapped_column

from activities.record.database import Database
from activities.record.identity import ApiTokenRow, UserRow
from activities.record.tables import Base, Id, Json, Name

SESSION_PREFIX = "sfs"
SESSION_ID_BYTES = 8
SECRET_BYTES = 32
SESSION_PATTERN = re.compile(
    rf"{SESSION_PREFIX}_(?P<session_id>[0-9a-f]{{{2 * SESSION_ID_BYTES}}})_(?P<secret>[A-Za-z0-9_-]{{43}})"
)
# A working day: a person who leaves a tab open signs in again the next morning.
SESSION_LIFETIME = timedelta(hours=12)


class WebSessionRow(Base):
    """One browser's sign-in: who, how, until when; never the cookie itself."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index(None, "token_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(String(32), unique=True, doc="public: sfs_<id>_…")
    secret_hash: Mapped[str] = mapped_column(String(64), doc="sha256 hex of the secret")
    user: Mapped[str] = mapped_column(Name)
    groups: Mapped[list[str]] = mapped_column(Json, doc="identity-provider groups (oidc:NAME)")
    via: Mapped[str] = mapped_column(String(300), doc="token <id> or oidc <issuer>")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, doc="as signed in")
    token_id: Mapped[str | None] = mapped_column(
        String(32), doc="the personal token signed in with; its revocation ends this"
    )
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    ended_at: Mapped[datetime | None] = mapped_column(doc="signed out")


class NewSession(BaseModel):
    """A session just opened: the cookie's value, shown to the browser only."""

    model_config = ConfigDict(frozen=True)

    cookie: SecretStr
    expires_at: datetime


class SessionIdentity(BaseModel):
    """Who a session's cookie signs in, and the CSRF token its forms must carry."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    user: str
    groups: tuple[str, ...] = ()
    via: str
    is_admin: bool = False
    csrf: SecretStr


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _csrf(secret: str) -> str:
    return hmac.new(secret.encode("ascii"), b"csrf", hashlib.sha256).hexdigest()


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


async def open_session(
    db: Database,
    *,
    user: str,
    via: str,
    groups: tuple[str, ...] = (),
    is_admin: bool = False,
    token_id: str | None = None,
    lifetime: timedelta = SESSION_LIFETIME,
    now: datetime | None = None,
) -> NewSession:
    """A new session for a person the caller has just authenticated."""
    opened = _now(now)
    session_id = secrets.token_hex(SESSION_ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    async with db.writing.begin() as session:
        row = WebSessionRow(
            session_id=session_id,
            secret_hash=_hash(secret),
            user=user,
            groups=list(groups),
            via=via,
            is_admin=is_admin,
            token_id=token_id,
            created_at=opened,
            expires_at=opened + lifetime,
        )
        session.add(row)
    return NewSession(
        cookie=SecretStr(f"{SESSION_PREFIX}_{session_id}_{secret}"), expires_at=row.expires_at
    )


async def session_identity(
    db: Database, cookie: str, now: datetime | None = None
) -> SessionIdentity | None:
    """Who the cookie signs in, or None: malformed, unknown, wrong secret, signed out,
    expired, or its token revoked or expired, or its person disabled."""
    match = SESSION_PATTERN.fullmatch(cookie)
    if match is None:
        return None
    moment = _now(now)
    async with db.reading() as session:
        row = (
            await session.execute(
                select(WebSessionRow).where(WebSessionRow.session_id == match["session_id"])
            )
        ).scalar_one_or_none()
        if row is None or not hmac.compare_digest(_hash(match["secret"]), row.secret_hash):
            return None
        if row.ended_at is not None or row.expires_at <= moment:
            return None
        is_admin = row.is_admin
        if row.token_id is not None:
            found = (
                await session.execute(
                    select(ApiTokenRow, UserRow)
                    .join(UserRow, UserRow.id == ApiTokenRow.user_id)
                    .where(ApiTokenRow.token_id == row.token_id)
                )
            ).one_or_none()
            if found is None:
                return None
            token, person = found
            expired = token.expires_at is not None and token.expires_at <= moment
            if token.revoked_at is not None or person.disabled_at is not None or expired:
                return None
            is_admin = person.is_admin  # as the record says now
        else:
            local = (
                await session.execute(select(UserRow).where(UserRow.name == row.user))
            ).scalar_one_or_none()
            if local is not None and local.disabled_at is not None:
                return None
    return SessionIdentity(
        session_id=row.session_id,
        user=row.user,
        groups=tuple(row.groups),
        via=row.via,
        is_admin=is_admin,
        csrf=SecretStr(_csrf(match["secret"])),
    )


async def end_session(db: Database, session_id: str, now: datetime | None = None) -> None:
    """Sign out: the session's cookie signs nobody in from now on."""
    async with db.writing.begin() as session:
        await session.execute(
            update(WebSessionRow)
            .where(WebSessionRow.session_id == session_id, WebSessionRow.ended_at.is_(None))
            .values(ended_at=_now(now))
        )
