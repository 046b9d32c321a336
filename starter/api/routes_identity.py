"""The identity routes of /api/v1: personal tokens, role grants and people.

The rules are the record's (activities/record/identity.py): a token belongs to a
person in `users` and is shown once, when it is made; a grant gives a subject
(`user:NAME`, `group:NAME`, `group:oidc:NAME`) a role on a pipeline, `*` or one
of its stages. This layer only says who may ask: a token's owner, an admin of
the pipeline, or an admin of Stageflow (`users.is_admin`).

Bodies reject unknown fields: a misspelt `expires_in` must not quietly make a
token that never expires. An answer that holds a token's plaintext is sent
with `Cache-Control: no-store`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from activities.record.identity import (
    EVERY_PIPELINE,
    SUBJECT_PATTERN,
    ApiToken,
    Grant,
    IdentityError,
    NewToken,
    Role,
    UnknownToken,
    UnknownUser,
    User,
    UserDisabled,
    UserExists,
    add_user,
    create_token,
    get_user,
    grant,
    list_grants,
    list_tokens,
    list_users,
    revoke_grant,
    revoke_token,
)
from starter.api.app import AccessDep, PrincipalDep, ServiceDep
from starter.api.auth import Principal
from starter.api.params import NAME_PATTERN, TEXT_PATTERN, NameQuery
from starter.api.problems import PROBLEM_JSON, Problem, ProblemDetails, forbidden, not_found
from workflows.pipeline import Duration

NOT_IN_RECORD = "personal tokens are for people in the record; sign in with your identity provider"
FIRST_TOKEN = "first token"
TokenId = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
NAME_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ProblemDetails,
        "content": {PROBLEM_JSON: {}},
        "description": "a person of that name is in the record already",
    }
}


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("", max_length=200, pattern=TEXT_PATTERN, description="your label for it")
    expires_in: Duration | None = Field(
        None, description="how long it is valid (90d, 12h); null: until revoked"
    )

    @field_validator("expires_in")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("a token's lifetime must be positive")
        return value


class CreatedToken(BaseModel):
    """A token just made, with its plaintext: the only answer that holds it."""

    user: str
    token_id: str
    name: str
    token: str = Field(
        repr=False, description="sft_<token_id>_<secret>: send it as Authorization: Bearer"
    )
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def of(cls, new: NewToken) -> CreatedToken:
        return cls(
            user=new.user.name,
            token_id=new.token_id,
            name=new.name,
            token=new.token.get_secret_value(),
            created_at=new.created_at,
            expires_at=new.expires_at,
        )


class GrantBody(BaseModel):
    """One role of one subject on a pipeline, or on one of its stages."""

    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(
        min_length=1,
        max_length=200,
        pattern=NAME_PATTERN,
        description="a pipeline's name; '*': every pipeline",
    )
    stage: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=NAME_PATTERN,
        description="null: the whole pipeline",
    )
    subject: str = Field(
        max_length=200,
        description="user:NAME, group:NAME (the pipeline's groups) or group:oidc:NAME",
        examples=["user:alice", "group:oidc:release-managers"],
    )
    role: Role

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        if not SUBJECT_PATTERN.fullmatch(value):
            raise ValueError("a subject is user:NAME, group:NAME or group:oidc:NAME")
        return value


class UserBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The record checks the rest of a name (printable, no spaces) and says so as 422.
    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    email: str | None = Field(None, max_length=320, pattern=NAME_PATTERN)
    admin: bool = Field(False, description="admin on every pipeline, and of people")


class NewUser(BaseModel):
    """A person just added, and their first token (until revoked), shown this once."""

    user: User
    token: CreatedToken


def add_identity_routes(api: APIRouter) -> None:
    """The routes of tokens, grants and people, on `api` (mounted at /api/v1)."""

    # --- tokens ------------------------------------------------------------------

    @api.get("/tokens", tags=["tokens"], summary="your personal tokens (never their secrets)")
    async def tokens(
        svc: ServiceDep,
        who: PrincipalDep,
        user: NameQuery = None,
    ) -> list[ApiToken]:
        """The caller's tokens, revoked and expired ones included; an admin of Stageflow
        may name another person's (`?user=`), to find the one to revoke. A person
        signed in through OIDC who is not in the record has none."""
        if user is not None and user != who.user:
            _require_admin(who, "list another person's tokens")
            person = await get_user(svc.db, user)
            if person is None:
                raise not_found(f"no user named {user!r}")
        else:
            person = await get_user(svc.db, who.user)
        return [] if person is None else await list_tokens(svc.db, person)

    @api.post(
        "/tokens",
        status_code=201,
        tags=["tokens"],
        summary="make a personal token: its plaintext is in this answer only",
    )
    async def make_token(
        body: TokenBody, response: Response, svc: ServiceDep, who: PrincipalDep
    ) -> CreatedToken:
        """A token for the caller, in the record only as the hash of its secret.

        Only a person in the record (`users`) may have one: a token belongs to their
        row there, and disabling them there stops it. A person who signs in through OIDC
        but is not in the record gets 403: a token would carry none of the groups
        their provider gives at each sign-in, and would outlive their account
        being closed at the provider. An admin adds them (POST /users) when they
        need a token for scripts.
        """
        person = await get_user(svc.db, who.user)
        if person is None:
            raise forbidden(NOT_IN_RECORD)
        try:
            new = await create_token(svc.db, person, name=body.name, expires_in=body.expires_in)
        except UserDisabled as err:
            raise forbidden(str(err)) from None
        except UnknownUser:  # removed since it was read
            raise forbidden(NOT_IN_RECORD) from None
        response.headers["Cache-Control"] = "no-store"
        return CreatedToken.of(new)

    @api.delete("/tokens/{token_id}", tags=["tokens"], summary="revoke a token")
    async def revoke(token_id: TokenId, svc: ServiceDep, who: PrincipalDep) -> ApiToken:
        """Revoke one of the caller's tokens, or anyone's for an admin of Stageflow;
        it authenticates no more. A token the caller may not revoke is answered 404,
        as one that does not exist. Revoking again answers the first revocation."""
        person = await get_user(svc.db, who.user)
        if person is None:  # signed in through OIDC, not in the record: owns no token
            raise not_found(f"no token {token_id!r} that {who.user} may revoke")
        try:
            return await revoke_token(svc.db, by=person, token_id=token_id)
        except UnknownToken as err:
            raise not_found(str(err)) from None

    # --- access ------------------------------------------------------------------

    @api.get("/access", tags=["access"], summary="who has which role")
    async def grants(
        svc: ServiceDep,
        can: AccessDep,
        pipeline: NameQuery = None,
    ) -> list[Grant]:
        """A pipeline's grants, those on every pipeline ('*') included, for its viewers.
        Without `?pipeline=`, every grant, for those who may view every pipeline."""
        if pipeline is None:
            if not await can.may_view(EVERY_PIPELINE):
                raise forbidden(
                    f"{can.principal.user} may not view every pipeline: name one (?pipeline=)"
                )
        else:
            await can.view(pipeline)
        return await list_grants(svc.db, pipeline)

    @api.post("/access", tags=["access"], summary="grant a role")
    async def give(body: GrantBody, svc: ServiceDep, can: AccessDep) -> Grant:
        """Give the subject the role, for an admin of the pipeline (of every pipeline
        for '*': an admin of Stageflow, or one granted admin on '*'). A stage's own
        admin grants nothing: granting is the whole pipeline's. Granting what is
        granted already answers the grant as first made."""
        await can.administer(body.pipeline)
        try:
            return await grant(
                svc.db, body.pipeline, body.stage, body.subject, body.role, by=can.principal.user
            )
        except IdentityError as err:  # the body's checks should have caught it
            raise Problem(422, "Invalid grant", str(err)) from None

    @api.delete("/access", status_code=204, tags=["access"], summary="revoke a role")
    async def take_back(body: GrantBody, svc: ServiceDep, can: AccessDep) -> None:
        """Take back exactly that grant, for an admin of the pipeline; 404 when there is
        none. A role that also comes from another grant (a group's, '*') stays."""
        await can.administer(body.pipeline)
        if not await revoke_grant(svc.db, body.pipeline, body.stage, body.subject, body.role):
            on = body.pipeline if body.stage is None else f"{body.pipeline} stage {body.stage}"
            raise not_found(f"no grant of {body.role} to {body.subject} on {on}")

    # --- people ------------------------------------------------------------------

    @api.get("/users", tags=["people"], summary="the people of the record")
    async def users(svc: ServiceDep, who: PrincipalDep) -> list[User]:
        """Every person, disabled ones included; for admins of Stageflow."""
        _require_admin(who, "list people")
        return await list_users(svc.db)

    @api.post(
        "/users",
        status_code=201,
        tags=["people"],
        responses=NAME_TAKEN,
        summary="add a person: their first token is in this answer only",
    )
    async def add_person(
        body: UserBody, response: Response, svc: ServiceDep, who: PrincipalDep
    ) -> NewUser:
        """Add a person and make their first token (valid until revoked), for admins of
        Stageflow: 409 when the name is taken. Hand the token over, and the person
        makes their own (POST /tokens) and revokes this one."""
        _require_admin(who, "add people")
        try:
            person = await add_user(svc.db, body.name, email=body.email, admin=body.admin)
        except UserExists as err:
            raise Problem(409, "User exists", str(err)) from None
        except IdentityError as err:
            raise _invalid("body.name", str(err)) from None
        new = await create_token(svc.db, person, name=FIRST_TOKEN)
        response.headers["Cache-Control"] = "no-store"
        return NewUser(user=person, token=CreatedToken.of(new))


def _require_admin(who: Principal, what: str) -> None:
    if not who.is_admin:
        raise forbidden(f"only an admin of Stageflow may {what}; {who.user} is not one")


def _invalid(field: str, reason: str) -> Problem:
    """A 422 the body's own checks could not give, in their shape."""
    return Problem(
        422,
        "Invalid request",
        f"{field}: {reason}",
        invalid_params=[{"name": field, "reason": reason}],
    )
