"""Who a request comes from and what they may do (issue 13): people, their personal
API tokens, and the roles granted on pipelines and stages, kept in the record.

A person is a row of `users`. A personal token reads `sft_<token_id>_<secret>`:
the token id is public (it names the token in lists, revocations and the audit
trail), the secret is 256 random bits shown once, when the token is made, and
kept only as its SHA-256. A fast hash is right for a secret this random (no
guess list to slow down, unlike a password), so there is no argon2 or bcrypt
here; the stored hash is compared in constant time.

A role grant gives a subject (`user:alice`, `group:release-managers`,
`group:oidc:release-managers`) one role on a pipeline (`*`: every pipeline),
either on the whole pipeline (stage None) or on one of its stages. Roles nest:
admin implies releaser, releaser implies viewer; `users.is_admin` is admin on
everything. Approvers are not roles: the pipeline names them (workflows/).

Nothing here logs, and no result's repr shows a token: the plaintext of a new
token is a `SecretStr`.

The models are part of the record's metadata (tables.Base), so migrations and the
schema check see them; their tables are created by revision 0004.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ColumnElement,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from activities.record.database import Database
from activities.record.tables import Base, Id, Name, Word

Role = Literal["viewer", "releaser", "admin"]
# Weakest first: each role implies those before it.
ROLES: tuple[Role, ...] = ("viewer", "releaser", "admin")
EVERY_PIPELINE = "*"

TOKEN_PREFIX = "sft"
# 8 random bytes as hex: short enough to read out, no `_` (the token's separator).
TOKEN_ID_BYTES = 8
# secrets.token_urlsafe(32): 32 random bytes, 43 URL-safe base64 characters.
SECRET_BYTES = 32
TOKEN_PATTERN = re.compile(
    rf"{TOKEN_PREFIX}_(?P<token_id>[0-9a-f]{{{2 * TOKEN_ID_BYTES}}})_(?P<secret>[A-Za-z0-9_-]{{43}})"
)
# A token's last use is written at most this often: a busy client does not take
# the record's write lock on every request.
LAST_USED_EVERY = timedelta(minutes=1)
SUBJECT_PATTERN = re.compile(r"(user|group):\S+")


# --- tables -------------------------------------------------------------------------


class UserRow(Base):
    """A person who may sign in with a personal token."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(Name, unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, doc="admin on every pipeline")
    created_at: Mapped[datetime]
    disabled_at: Mapped[datetime | None] = mapped_column(doc="None: may sign in")


class ApiTokenRow(Base):
    """One personal API token: its public id and the SHA-256 of its secret, never the secret."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index(None, "user_id"),)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True, doc="public: sft_<token_id>_…")
    user_id: Mapped[int] = mapped_column(
        Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    secret_hash: Mapped[str] = mapped_column(String(64), doc="sha256 hex of the secret")
    name: Mapped[str] = mapped_column(Name, default="", doc="the owner's label for it")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class RoleGrantRow(Base):
    """One role of one subject on a pipeline ('*': every one), or on one of its stages."""

    __tablename__ = "role_grants"
    __table_args__ = (
        UniqueConstraint("pipeline", "stage", "subject", "role"),
        # NULLs are distinct in a unique constraint on both databases: this one makes
        # a whole-pipeline grant (stage NULL) unique too.
        Index(
            None,
            "pipeline",
            "subject",
            "role",
            unique=True,
            sqlite_where=text("stage IS NULL"),
            postgresql_where=text("stage IS NULL"),
        ),
        CheckConstraint("role IN ('viewer', 'releaser', 'admin')", name="role"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    pipeline: Mapped[str] = mapped_column(Name, doc="a pipeline's name; '*': every pipeline")
    stage: Mapped[str | None] = mapped_column(Name, doc="None: the whole pipeline")
    subject: Mapped[str] = mapped_column(Name, doc="user:<name> or group:<name>")
    role: Mapped[str] = mapped_column(Word)
    granted_by: Mapped[str] = mapped_column(Name)
    granted_at: Mapped[datetime]


# --- results ------------------------------------------------------------------------


class User(BaseModel):
    """A person of the record."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int
    name: str
    email: str | None = None
    is_admin: bool = False
    created_at: datetime
    disabled_at: datetime | None = None


class ApiToken(BaseModel):
    """A personal token as lists show it: never its secret, nor the secret's hash."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    token_id: str
    name: str = ""
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class NewToken(BaseModel):
    """A token just made: the only time its plaintext exists outside its owner's hands.
    `token` hides itself in reprs, str() and dumps; `token.get_secret_value()` reads it."""

    model_config = ConfigDict(frozen=True)

    user: User
    token_id: str
    name: str = ""
    token: SecretStr
    created_at: datetime
    expires_at: datetime | None = None


class TokenIdentity(BaseModel):
    """Who a presented token signed in: the user, and how (for the audit trail)."""

    model_config = ConfigDict(frozen=True)

    user: User
    token_id: str
    how: str = "token"


class Grant(BaseModel):
    """A role given to a subject on a pipeline (or every one), or on one of its stages."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    pipeline: str
    stage: str | None = None
    subject: str
    role: Role
    granted_by: str
    granted_at: datetime


# --- failures -----------------------------------------------------------------------


class IdentityError(Exception):
    """A request about people, tokens or roles that cannot be done, and why."""


class UserExists(IdentityError, ValueError):
    """A user of that name is in the record already."""


class UnknownUser(IdentityError, LookupError):
    """No user of that name."""


class UserDisabled(IdentityError, PermissionError):
    """The user is disabled: no new token for them."""


class UnknownToken(IdentityError, LookupError):
    """No token of that id that the caller may act on."""


class InvalidGrant(IdentityError, ValueError):
    """A grant with a malformed subject, an unknown role, or no pipeline or stage name."""


# --- users --------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    return now if now is not None else datetime.now(UTC)


def _check_name(name: str) -> None:
    if not name or len(name) > 200 or any(c.isspace() or not c.isprintable() for c in name):
        raise IdentityError(
            f"a user's name is 1 to 200 printable characters without spaces: {name!r}"
        )


async def add_user(
    db: Database,
    name: str,
    email: str | None = None,
    admin: bool = False,
    now: datetime | None = None,
) -> User:
    """Add a person to the record; a name already there is refused (UserExists)."""
    _check_name(name)
    row = UserRow(name=name, email=email, is_admin=admin, created_at=_now(now))
    try:
        async with db.writing.begin() as session:
            if await _user_row(session, name) is not None:
                raise UserExists(f"a user named {name!r} exists already")
            session.add(row)
            await session.flush()
            return User.model_validate(row)
    except IntegrityError as error:  # added by another writer since the check
        raise UserExists(f"a user named {name!r} exists already") from error


async def get_user(db: Database, name: str) -> User | None:
    """The user of that name; None when there is none."""
    async with db.reading() as session:
        row = await _user_row(session, name)
        return None if row is None else User.model_validate(row)


async def list_users(db: Database) -> list[User]:
    """Every user, by name, disabled ones included."""
    async with db.reading() as session:
        rows = (await session.execute(select(UserRow).order_by(UserRow.name))).scalars()
        return [User.model_validate(row) for row in rows]


async def disable_user(db: Database, name: str, now: datetime | None = None) -> User:
    """Stop a person from signing in (their tokens authenticate no more; the rows
    stay for the audit trail). Disabling a disabled user keeps the first time."""
    async with db.writing.begin() as session:
        row = await _user_row(session, name)
        if row is None:
            raise UnknownUser(f"no user named {name!r}")
        if row.disabled_at is None:
            row.disabled_at = _now(now)
            await session.flush()
        return User.model_validate(row)


async def _user_row(session: AsyncSession, name: str) -> UserRow | None:
    return (await session.execute(select(UserRow).where(UserRow.name == name))).scalar_one_or_none()


# --- tokens -------------------------------------------------------------------------


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


async def create_token(
    db: Database,
    user: User,
    name: str = "",
    expires_in: timedelta | None = None,
    now: datetime | None = None,
) -> NewToken:
    """Make a personal token for `user`, valid for `expires_in` (None: until revoked).

    The result holds the plaintext, the only time it is known: the record keeps
    its public id and the SHA-256 of its secret.
    """
    if expires_in is not None and expires_in <= timedelta(0):
        raise IdentityError(f"a token's lifetime must be positive: {expires_in}")
    created = _now(now)
    token_id = secrets.token_hex(TOKEN_ID_BYTES)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    async with db.writing.begin() as session:
        owner = await _user_row(session, user.name)
        if owner is None:
            raise UnknownUser(f"no user named {user.name!r}")
        if owner.disabled_at is not None:
            raise UserDisabled(f"user {user.name!r} is disabled")
        row = ApiTokenRow(
            token_id=token_id,
            user_id=owner.id,
            secret_hash=_hash(secret),
            name=name,
            created_at=created,
            expires_at=None if expires_in is None else created + expires_in,
        )
        session.add(row)
        await session.flush()
        return NewToken(
            user=User.model_validate(owner),
            token_id=token_id,
            name=name,
            token=SecretStr(f"{TOKEN_PREFIX}_{token_id}_{secret}"),
            created_at=row.created_at,
            expires_at=row.expires_at,
        )


async def authenticate(
    db: Database, presented: str, now: datetime | None = None
) -> TokenIdentity | None:
    """Who `presented` signs in, or None: malformed, unknown, wrong secret, revoked,
    expired, or its user disabled — the caller answers all of them the same (401)."""
    match = TOKEN_PATTERN.fullmatch(presented)
    if match is None:
        return None
    token_id, secret = match["token_id"], match["secret"]
    moment = _now(now)
    async with db.reading() as session:
        found = (
            await session.execute(
                select(ApiTokenRow, UserRow)
                .join(UserRow, UserRow.id == ApiTokenRow.user_id)
                .where(ApiTokenRow.token_id == token_id)
            )
        ).one_or_none()
    if found is None:
        return None
    token, owner = found
    if not hmac.compare_digest(_hash(secret), token.secret_hash):
        return None
    if token.revoked_at is not None or owner.disabled_at is not None:
        return None
    if token.expires_at is not None and token.expires_at <= moment:
        return None
    if token.last_used_at is None or token.last_used_at <= moment - LAST_USED_EVERY:
        async with db.writing.begin() as session:
            await session.execute(
                update(ApiTokenRow)
                .where(
                    ApiTokenRow.id == token.id,
                    or_(
                        ApiTokenRow.last_used_at.is_(None),
                        ApiTokenRow.last_used_at <= moment - LAST_USED_EVERY,
                    ),
                )
                .values(last_used_at=moment)
            )
    return TokenIdentity(user=User.model_validate(owner), token_id=token_id)


async def list_tokens(db: Database, user: User) -> list[ApiToken]:
    """`user`'s tokens, oldest first, revoked and expired ones included (they say so)."""
    async with db.reading() as session:
        rows = (
            await session.execute(
                select(ApiTokenRow)
                .join(UserRow, UserRow.id == ApiTokenRow.user_id)
                .where(UserRow.name == user.name)
                .order_by(ApiTokenRow.created_at, ApiTokenRow.id)
            )
        ).scalars()
        return [ApiToken.model_validate(row) for row in rows]


async def revoke_token(
    db: Database, by: User, token_id: str, now: datetime | None = None
) -> ApiToken:
    """Revoke a token: `by`'s own, or anyone's when `by` is an admin (as the record
    says now, not as `by` was read). A token `by` may not touch is as unknown as
    one that does not exist (UnknownToken). Revoking again keeps the first time."""
    async with db.writing.begin() as session:
        actor = await _user_row(session, by.name)
        row = (
            await session.execute(select(ApiTokenRow).where(ApiTokenRow.token_id == token_id))
        ).scalar_one_or_none()
        if (
            row is None
            or actor is None
            or actor.disabled_at is not None
            or not (actor.is_admin or row.user_id == actor.id)
        ):
            raise UnknownToken(f"no token {token_id!r} that {by.name} may revoke")
        if row.revoked_at is None:
            row.revoked_at = _now(now)
            await session.flush()
        return ApiToken.model_validate(row)


# --- roles --------------------------------------------------------------------------


def implied(role: str) -> set[str]:
    """A role and every role it implies (admin → releaser → viewer)."""
    return set(ROLES[: ROLES.index(role) + 1])


def group_subject(group: str) -> str:
    """The subject of a group: `release-managers` → `group:release-managers`,
    `oidc:release-managers` → `group:oidc:release-managers` (a subject is kept)."""
    return group if group.startswith("group:") else f"group:{group}"


def _check_grant(pipeline: str, stage: str | None, subject: str, role: str) -> None:
    if not pipeline:
        raise InvalidGrant("a grant names a pipeline, or '*' for every pipeline")
    if stage is not None and not stage:
        raise InvalidGrant("a stage grant names its stage (None: the whole pipeline)")
    if not SUBJECT_PATTERN.fullmatch(subject):
        raise InvalidGrant(f"a subject is user:<name> or group:<name>, not {subject!r}")
    if role not in ROLES:
        raise InvalidGrant(f"a role is one of {', '.join(ROLES)}, not {role!r}")


def _same_grant(
    pipeline: str, stage: str | None, subject: str, role: str
) -> list[ColumnElement[bool]]:
    return [
        RoleGrantRow.pipeline == pipeline,
        RoleGrantRow.stage.is_(None) if stage is None else RoleGrantRow.stage == stage,
        RoleGrantRow.subject == subject,
        RoleGrantRow.role == role,
    ]


async def _find_grant(
    session: AsyncSession, pipeline: str, stage: str | None, subject: str, role: str
) -> RoleGrantRow | None:
    return (
        await session.execute(
            select(RoleGrantRow).where(*_same_grant(pipeline, stage, subject, role))
        )
    ).scalar_one_or_none()


async def grant(
    db: Database,
    pipeline: str,
    stage: str | None,
    subject: str,
    role: str,
    by: str,
    now: datetime | None = None,
) -> Grant:
    """Give `subject` `role` on `pipeline` ('*': every pipeline), on its stage `stage`
    or on all of it (None). Granting what is granted already changes nothing and
    answers the grant as it was first made."""
    _check_grant(pipeline, stage, subject, role)
    try:
        async with db.writing.begin() as session:
            existing = await _find_grant(session, pipeline, stage, subject, role)
            if existing is not None:
                return Grant.model_validate(existing)
            row = RoleGrantRow(
                pipeline=pipeline,
                stage=stage,
                subject=subject,
                role=role,
                granted_by=by,
                granted_at=_now(now),
            )
            session.add(row)
            await session.flush()
            return Grant.model_validate(row)
    except IntegrityError:
        # Granted by another writer since the check (PostgreSQL): that grant is the answer.
        async with db.reading() as session:
            existing = await _find_grant(session, pipeline, stage, subject, role)
        if existing is None:
            raise
        return Grant.model_validate(existing)


async def revoke_grant(
    db: Database, pipeline: str, stage: str | None, subject: str, role: str
) -> bool:
    """Take back exactly that grant; False when there was none. Only that grant goes:
    a role that also comes from another grant (a group's, '*') stays."""
    async with db.writing.begin() as session:
        row = await _find_grant(session, pipeline, stage, subject, role)
        if row is None:
            return False
        await session.delete(row)
        return True


async def list_grants(db: Database, pipeline: str | None = None) -> list[Grant]:
    """Every grant; of one pipeline, those on it and those on every pipeline ('*')."""
    query = select(RoleGrantRow)
    if pipeline is not None:
        query = query.where(RoleGrantRow.pipeline.in_([pipeline, EVERY_PIPELINE]))
    query = query.order_by(
        RoleGrantRow.pipeline,
        RoleGrantRow.stage.is_not(None),
        RoleGrantRow.stage,
        RoleGrantRow.subject,
        RoleGrantRow.role,
    )
    async with db.reading() as session:
        return [Grant.model_validate(row) for row in (await session.execute(query)).scalars()]


async def roles_of(
    db: Database, user: str, groups: Iterable[str], pipeline: str, stage: str | None = None
) -> set[str]:
    """The roles `user`, a member of `groups`, has on `pipeline`'s stage `stage`
    (None: on the pipeline as a whole), implied ones included.

    A grant on the pipeline or on every pipeline ('*') counts on all its stages; a
    stage's grant on that stage only (not on the pipeline as a whole). An admin
    user (`users.is_admin`) is admin everywhere; a disabled user has no role. A
    user who is not in `users` (signed in through OIDC) has what their subjects
    were granted.
    """
    subjects = {f"user:{user}", *(group_subject(g) for g in groups)}
    stage_matches = (
        RoleGrantRow.stage.is_(None)
        if stage is None
        else or_(RoleGrantRow.stage.is_(None), RoleGrantRow.stage == stage)
    )
    async with db.reading() as session:
        person = await _user_row(session, user)
        if person is not None and person.disabled_at is not None:
            return set()
        if person is not None and person.is_admin:
            return set(ROLES)
        granted = (
            await session.execute(
                select(RoleGrantRow.role)
                .where(
                    RoleGrantRow.pipeline.in_([pipeline, EVERY_PIPELINE]),
                    RoleGrantRow.subject.in_(subjects),
                    stage_matches,
                )
                .distinct()
            )
        ).scalars()
        return {implied_role for role in granted for implied_role in implied(role)}
