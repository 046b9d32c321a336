"""Who a request comes from: a personal API token, or an OIDC bearer token.

`Authorization: Bearer sft_<id>_<secret>` is a personal token (checked against its
hash in the record); any other bearer token is an OIDC JWT, verified against the
configured issuer (starter/api/oidc.py) when there is one. Anything else, or
nothing, is a 401. What a person may then do is starter/api/access.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

from activities.record import Database
from activities.record.identity import TOKEN_PREFIX, authenticate, get_user
from starter.api.oidc import InvalidToken, OidcVerifier
from starter.api.problems import Problem, unauthorized


@dataclass(frozen=True)
class Principal:
    """An authenticated person."""

    user: str
    # Groups from the identity provider, each `oidc:<group>`; a token's person has none.
    groups: tuple[str, ...]
    # How they signed in, as the audit trail says it: `token <id>` or `oidc <issuer>`.
    via: str
    # `users.is_admin`: admin on every pipeline.
    is_admin: bool = False


class Authenticator:
    """Turns a request's Authorization header into a Principal, or a 401."""

    def __init__(self, db: Database, oidc: OidcVerifier | None) -> None:
        self.db = db
        self.oidc = oidc

    async def __call__(self, authorization: str | None) -> Principal:
        if not authorization:
            raise unauthorized("no credentials: send Authorization: Bearer <token>")
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise unauthorized("the Authorization header must be: Bearer <token>")
        if credentials.startswith(f"{TOKEN_PREFIX}_"):
            return await self._personal_token(credentials)
        if self.oidc is None:
            raise unauthorized("not a Stageflow token, and no OIDC issuer is configured")
        try:
            identity = await self.oidc.verify(credentials)
        except InvalidToken as err:
            raise unauthorized(f"OIDC token refused: {err.reason}") from None
        person = await get_user(self.db, identity.user)
        if person is not None and person.disabled_at is not None:
            raise unauthorized(f"{identity.user} is disabled")
        # Never admin through a local user's flag: the name comes from a claim the
        # identity provider may let people choose. Admins of OIDC people are granted
        # (`access grant user:NAME admin --pipeline '*'`, or to one of their groups).
        return Principal(user=identity.user, groups=identity.groups, via=f"oidc {identity.issuer}")

    async def _personal_token(self, presented: str) -> Principal:
        found = await authenticate(self.db, presented)
        if found is None:
            # One answer for malformed, unknown, wrong, revoked and expired: a caller
            # learns nothing about which tokens exist.
            raise unauthorized("the token is invalid, revoked or expired")
        return Principal(
            user=found.user.name,
            groups=(),
            via=f"token {found.token_id}",
            is_admin=found.user.is_admin,
        )


def require_person(principal: Principal | None) -> Principal:
    if principal is None:
        raise Problem(401, "Unauthorized", "no credentials")
    return principal
