"""People of the record from the machine that holds it: `stageflow user add`, and the
first admin `stageflow up` makes on a new data dir.

Both write the record directly (activities/record/identity.py), not through the
API: they are how a new install gets its first person and token, before anyone
could sign in to the API. Run them where the data dir (or
STAGEFLOW_DATABASE_URL) is. The record is migrated first, so a fresh data dir works.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from activities.record import Database, open_database, safe_url
from activities.record.identity import (
    IdentityError,
    NewToken,
    User,
    UserExists,
    add_user,
    create_token,
    list_users,
)
from starter.credentials import save_credentials
from starter.reading import RecordUnavailable
from starter.serve import migrate_record
from worker.settings import Settings

# The label of the tokens made here, as `token list` shows them.
FIRST_TOKEN = "first token (stageflow user add)"
UP_TOKEN = "stageflow up"


class PersonRefused(ValueError):
    """A person who cannot be added (the name is taken or malformed): one line, exit 2."""


async def add_person(
    settings: Settings, name: str, email: str | None = None, admin: bool = False
) -> NewToken:
    """Add `name` to the record and make a first token for them (no expiry: revoke it
    when done). A name already there is refused, and then nothing is created."""
    async with _record(settings) as db:
        try:
            user = await add_user(db, name, email=email, admin=admin)
        except IdentityError as err:
            raise PersonRefused(str(err)) from err
        return await create_token(db, user, name=FIRST_TOKEN)


async def bootstrap_admin(
    settings: Settings, name: str, url: str, credentials: Path | None = None
) -> tuple[User, Path] | None:
    """On a record with nobody in it yet: `name` as an admin, with a token saved as the
    credentials for the API at `url` (the file `credentials`, else the default one).
    None, and nothing written, when the record has people already."""
    async with _record(settings) as db:
        if await list_users(db):
            return None
        try:
            user = await add_user(db, name, admin=True)
        except UserExists:  # another `up` on the same record was first
            return None
        token = await create_token(db, user, name=UP_TOKEN)
    return user, save_credentials(url, token.token.get_secret_value(), credentials)


@asynccontextmanager
async def _record(settings: Settings) -> AsyncIterator[Database]:
    await migrate_record(settings)
    url = settings.record_url
    db = open_database(url)
    try:
        yield db
    except (SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise RecordUnavailable(f"cannot write the record at {safe_url(url)} ({reason})") from err
    finally:
        await db.close()
