"""OIDC bearer tokens: check a JWT from the team's identity provider and say whom it names.

A token is accepted when it is a JWS signed with one of the issuer's published keys
(its JWKS) in an allowed asymmetric algorithm, and its claims name our issuer and
audience and it is valid now. The person is the `preferred_username` claim (or `sub`);
their identity-provider groups come back prefixed `oidc:`, so a pipeline names them as
`group:oidc:release-managers` and they cannot be mistaken for Stageflow's own groups.

The JOSE work (parsing, signatures, claim checks) is joserfc's; this module decides
which keys to trust, when to fetch them again, and says in one line why a token is
refused (`InvalidToken.reason`), for the API's 401.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import (
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import JWKRegistry, Key
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

log = logging.getLogger(__name__)

GROUP_PREFIX = "oidc:"
DEFAULT_ALGORITHMS = ("RS256", "ES256")
# The JWKS holds public keys: an HMAC "secret" would be public too, and "none" is no
# signature at all. Refusing them here closes the classic algorithm-confusion holes.
_FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})


class InvalidToken(Exception):
    """A bearer token we refuse; `reason` is one line for the 401 and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class OidcSettings:
    """Which identity provider we trust and how its tokens name people.

    `jwks_url` None: discovered from `<issuer>/.well-known/openid-configuration`.
    """

    issuer: str
    audience: str
    jwks_url: str | None = None
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    # Clock skew allowed between us and the identity provider (exp, nbf, iat).
    leeway: timedelta = timedelta(seconds=60)
    # How long fetched keys are used before they are fetched again.
    keys_ttl: timedelta = timedelta(minutes=10)
    # At most one fetch per this interval: an unknown `kid` (key rotation) asks for one,
    # and a stream of forged kids, or an identity provider that is down, cannot make more.
    refetch_interval: timedelta = timedelta(seconds=30)
    # While the provider cannot be reached, keys past their TTL are still used this long,
    # so an outage of the provider does not sign everybody out at once.
    stale_keys_grace: timedelta = timedelta(hours=1)
    fetch_timeout: timedelta = timedelta(seconds=5)
    # Signing in to the pages through the provider (authorization code with PKCE): the
    # client Stageflow is registered as (its ID tokens name it as their audience, so it
    # is the audience unless set), its secret for a confidential client, the scopes.
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scopes: str = "openid profile"

    def __post_init__(self) -> None:
        if not self.issuer:
            raise ValueError("the OIDC issuer is empty")
        if not self.audience:
            # Without an audience any token the provider issues, to any application, counts.
            raise ValueError("the OIDC audience is empty; set STAGEFLOW_OIDC_AUDIENCE")
        if not self.algorithms:
            raise ValueError("no OIDC signing algorithms are allowed")
        for algorithm in self.algorithms:
            if algorithm in _FORBIDDEN_ALGORITHMS:
                raise ValueError(
                    f"OIDC algorithm {algorithm!r} cannot be allowed: tokens must be signed "
                    "with the issuer's private key (RS256, ES256, ...)"
                )
            if algorithm not in JWSRegistry.algorithms:
                raise ValueError(f"unknown OIDC signing algorithm {algorithm!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> OidcSettings | None:
        """Read `STAGEFLOW_OIDC_*`; None when no issuer is set (OIDC sign-in is off)."""
        issuer = env.get("STAGEFLOW_OIDC_ISSUER")
        if not issuer:
            return None
        audience = env.get("STAGEFLOW_OIDC_AUDIENCE")
        if not audience:
            raise ValueError("STAGEFLOW_OIDC_ISSUER is set but STAGEFLOW_OIDC_AUDIENCE is not")
        algorithms = env.get("STAGEFLOW_OIDC_ALGORITHMS")
        return cls(
            issuer=issuer,
            audience=audience,
            jwks_url=env.get("STAGEFLOW_OIDC_JWKS_URL") or None,
            username_claim=env.get("STAGEFLOW_OIDC_USERNAME_CLAIM") or "preferred_username",
            groups_claim=env.get("STAGEFLOW_OIDC_GROUPS_CLAIM") or "groups",
            algorithms=tuple(a.strip() for a in algorithms.split(",") if a.strip())
            if algorithms
            else DEFAULT_ALGORITHMS,
            client_id=env.get("STAGEFLOW_OIDC_CLIENT_ID") or None,
            client_secret=env.get("STAGEFLOW_OIDC_CLIENT_SECRET") or None,
            scopes=env.get("STAGEFLOW_OIDC_SCOPES") or "openid profile",
        )

    @property
    def client(self) -> str:
        return self.client_id or self.audience


@dataclass(frozen=True)
class OidcIdentity:
    """The person a verified token names."""

    user: str
    # Identity-provider groups, each prefixed `oidc:`.
    groups: tuple[str, ...]
    issuer: str
    subject: str


@dataclass
class _KeySet:
    """The issuer's signing keys as fetched at `fetched_at` (a Unix time)."""

    keys: list[Key]
    fetched_at: float
    by_kid: dict[str, Key] = field(init=False)

    def __post_init__(self) -> None:
        self.by_kid = {}
        for key in self.keys:
            kid = key.kid
            if kid is not None:
                self.by_kid.setdefault(kid, key)

    def find(self, kid: str | None) -> Key | None:
        if kid is None:
            # A token may leave the kid out only when there is no choice to make.
            return self.keys[0] if len(self.keys) == 1 else None
        return self.by_kid.get(kid)


class _FetchFailed(Exception):
    pass


class OidcVerifier:
    """Verifies bearer tokens against one issuer; keeps its keys (JWKS) between calls.

    One verifier per process, shared by all requests: it fetches the keys once per
    `keys_ttl`, again when a token names a key it does not know (at most once per
    `refetch_interval`), and never more than one fetch at a time.
    """

    def __init__(self, settings: OidcSettings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self._http = http
        self._jws = JWSRegistry(
            algorithms=list(settings.algorithms),
            # Providers add header parameters of their own (Azure's `nonce`, for one);
            # unknown ones are not an attack, the signature covers them.
            strict_check_header=False,
        )
        self._keys: _KeySet | None = None
        self._jwks_url: str | None = settings.jwks_url
        self._last_fetch: float | None = None
        self._last_problem: str | None = None
        self._lock = asyncio.Lock()
        self._endpoints: tuple[str, str] | None = None

    async def verify(
        self,
        token: str,
        now: datetime | None = None,
        nonce: str | None = None,
        audience: str | None = None,
    ) -> OidcIdentity:
        """The identity `token` proves, or InvalidToken saying why not.

        `now` is the time to judge the token and the key cache by (the wall clock when
        None); tests set it instead of sleeping. `nonce`: an ID token from a sign-in
        must carry the nonce that sign-in sent (no token replayed from another), and
        name as `audience` the client that asked for it (settings.client).
        """
        at = _timestamp(now)
        signed, header, claims = self._parse(token)
        algorithm = header["alg"]
        if algorithm not in self.settings.algorithms:
            allowed = ", ".join(self.settings.algorithms)
            raise InvalidToken(f"algorithm {algorithm!r} is not allowed (allowed: {allowed})")
        # Checked again, signed, below; checking first means a token from another issuer
        # never makes us fetch keys.
        if claims.get("iss") != self.settings.issuer:
            raise InvalidToken(_wrong_issuer(claims.get("iss"), self.settings.issuer))
        # Only the kid is taken from the header: keys or key URLs a token carries
        # (`jwk`, `jku`, `x5u`, `x5c`) are the sender's word and never used.
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token: its 'kid' header is not a string")
        key = await self._signing_key(kid, at)
        self._check_signature(signed, key, algorithm, kid)
        self._check_claims(claims, at, audience or self.settings.audience)
        if nonce is not None and claims.get("nonce") != nonce:
            raise InvalidToken("the ID token's nonce is not this sign-in's")
        return self._identity(claims)

    async def endpoints(self) -> tuple[str, str]:
        """The provider's authorization and token endpoints, from its discovery document
        (InvalidToken when it cannot be read or names none)."""
        if self._endpoints is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                document = await self._get_json(url, "the issuer's discovery document")
            except _FetchFailed as error:
                raise InvalidToken(str(error)) from None
            found = document.get("authorization_endpoint"), document.get("token_endpoint")
            if document.get("issuer") != self.settings.issuer or not all(
                isinstance(e, str) and e.startswith(("https://", "http://")) for e in found
            ):
                raise InvalidToken(f"{url} names no authorization and token endpoints")
            self._endpoints = (str(found[0]), str(found[1]))
        return self._endpoints

    def _parse(self, token: str) -> tuple[jws.CompactSignature, dict[str, Any], dict[str, Any]]:
        try:
            signed = jws.extract_compact(token.strip().encode("utf-8"), registry=self._jws)
            header = signed.headers()
            if not isinstance(header, dict):
                raise InvalidToken("malformed token: its header is not a JSON object")
            self._jws.check_header(header)
            claims = json.loads(signed.payload)
        except InvalidToken:
            raise
        except (JoseError, ValueError, TypeError, AttributeError, KeyError) as error:
            raise InvalidToken(f"malformed token: {_describe(error)}") from None
        if not isinstance(claims, dict):
            raise InvalidToken("malformed token: its claims are not a JSON object")
        if not isinstance(header.get("alg"), str):
            raise InvalidToken("malformed token: its 'alg' header is not a string")
        return signed, header, claims

    def _check_signature(
        self, signed: jws.CompactSignature, key: Key, algorithm: str, kid: str | None
    ) -> None:
        try:
            self._jws.get_alg(algorithm).check_key(key)
        except JoseError as error:
            raise InvalidToken(
                f"key {kid!r} cannot verify {algorithm}: {_describe(error)}"
            ) from None
        try:
            valid = jws.validate_compact(signed, key, registry=self._jws)
        except (JoseError, ValueError) as error:
            raise InvalidToken(f"bad signature: {_describe(error)}") from None
        if not valid:
            raise InvalidToken("bad signature")

    def _check_claims(self, claims: dict[str, Any], at: float, audience: str) -> None:
        registry = JWTClaimsRegistry(
            now=int(at),
            leeway=int(self.settings.leeway.total_seconds()),
            iss={"essential": True, "value": self.settings.issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise InvalidToken(f"expired at {_when(claims['exp'])}") from None
        except MissingClaimError as error:
            names = ", ".join(repr(name) for name in error.claim.split(","))
            raise InvalidToken(f"missing claim {names}") from None
        except ClaimError as error:
            if error.claim == "aud":
                wrong = claims.get("aud")
                raise InvalidToken(f"wrong audience {wrong!r} (expected {audience!r})") from None
            raise InvalidToken(self._claim_problem(error, claims)) from None

    def _claim_problem(self, error: ClaimError, claims: dict[str, Any]) -> str:
        value = claims.get(error.claim)
        if error.claim == "iss":
            return _wrong_issuer(value, self.settings.issuer)
        if error.claim == "aud":
            return f"wrong audience {value!r} (expected {self.settings.audience!r})"
        if error.claim == "nbf" and isinstance(value, int | float):
            return f"not yet valid (not before {_when(value)})"
        if error.claim == "iat" and isinstance(value, int | float):
            return f"issued in the future ({_when(value)})"
        return f"malformed claim {error.claim!r}: {error.description}"

    def _identity(self, claims: dict[str, Any]) -> OidcIdentity:
        subject = claims["sub"]  # a non-empty string: checked with the claims
        claim = self.settings.username_claim
        user = claims.get(claim)
        if user is None or user == "":
            user = subject
        if not isinstance(user, str) or not user.strip():
            raise InvalidToken(f"missing username claim: {claim!r} is not a name")
        groups = claims.get(self.settings.groups_claim, [])
        if isinstance(groups, str):  # some providers send one group as a plain string
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise InvalidToken(
                f"malformed claim {self.settings.groups_claim!r}: not a list of group names"
            )
        return OidcIdentity(
            user=user,
            groups=tuple(GROUP_PREFIX + group for group in groups if group),
            issuer=self.settings.issuer,
            subject=subject,
        )

    # --- the issuer's keys -------------------------------------------------------------

    async def _signing_key(self, kid: str | None, at: float) -> Key:
        fetched = False
        async with self._lock:  # one fetch at a time; the others wait and share it
            if self._keys is None or self._age(self._keys, at) >= self.settings.keys_ttl:
                if self._may_fetch(at):
                    await self._fetch(at)
                    fetched = True
                if self._keys is None or self._age(self._keys, at) >= (
                    self.settings.keys_ttl + self.settings.stale_keys_grace
                ):
                    raise InvalidToken(self._fetch_problem(at, fetched))
            key = self._keys.find(kid)
            if key is None and kid is not None and self._may_fetch(at):
                # Not a key we know: the provider may have rotated its keys since.
                await self._fetch(at)
                fetched = True
                key = self._keys.find(kid)
        if key is None:
            if kid is None:
                raise InvalidToken(
                    f"the token names no key id (kid) and the issuer has {len(self._keys.keys)} keys"
                )
            problem = f"; {self._fetch_problem(at, fetched)}" if self._last_problem else ""
            raise InvalidToken(f"unknown key id {kid!r}: not one of the issuer's keys{problem}")
        return key

    def _age(self, keys: _KeySet, at: float) -> timedelta:
        # abs(): a clock set back (or a test's `now`) must not make keys look fresh forever.
        return timedelta(seconds=abs(at - keys.fetched_at))

    def _may_fetch(self, at: float) -> bool:
        if self._last_fetch is None:
            return True
        return abs(at - self._last_fetch) >= self.settings.refetch_interval.total_seconds()

    async def _fetch(self, at: float) -> None:
        """Fetch the keys; a failure is remembered (and logged), the old keys kept."""
        self._last_fetch = at
        try:
            keys = await self._fetch_keys()
        except _FetchFailed as error:
            self._last_problem = str(error)
            log.warning("OIDC: %s", error)
            return
        self._keys = _KeySet(keys, fetched_at=at)
        self._last_problem = None
        log.info("OIDC: fetched %d signing keys of %s", len(keys), self.settings.issuer)

    def _fetch_problem(self, at: float, just_tried: bool) -> str:
        problem = self._last_problem or "no keys fetched yet"
        if not just_tried and self._last_fetch is not None and not self._may_fetch(at):
            wait = self.settings.refetch_interval.total_seconds() - abs(at - self._last_fetch)
            problem += f" (next try in {max(1, round(wait))} s)"
        return f"cannot fetch the issuer's keys: {problem}"

    async def _fetch_keys(self) -> list[Key]:
        url = self._jwks_url or await self._discover_jwks_url()
        document = await self._get_json(url, "the issuer's keys (JWKS)")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise _FetchFailed(f"{url} is not a JWKS (no 'keys' list)")
        keys = [key for entry in entries if (key := _signing_key_of(entry)) is not None]
        if not keys:
            raise _FetchFailed(f"{url} has no signing keys we can use")
        return keys

    async def _discover_jwks_url(self) -> str:
        issuer = self.settings.issuer
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(url, "the issuer's discovery document")
        # OpenID Connect Discovery 1.0 §4.3: the document must name the issuer we asked.
        if document.get("issuer") != issuer:
            raise _FetchFailed(f"{url} names issuer {document.get('issuer')!r}, not {issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise _FetchFailed(f"{url} has no 'jwks_uri'")
        self._jwks_url = jwks_uri
        return jwks_uri

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(
                url, timeout=self.settings.fetch_timeout.total_seconds()
            )
        except httpx.HTTPError as error:
            raise _FetchFailed(f"{what} at {url}: {_describe(error)}") from None
        if response.status_code != 200:
            raise _FetchFailed(f"{what} at {url}: HTTP {response.status_code}")
        try:
            document = response.json()
        except ValueError:
            raise _FetchFailed(f"{what} at {url}: not JSON") from None
        if not isinstance(document, dict):
            raise _FetchFailed(f"{what} at {url}: not a JSON object")
        return document


def _signing_key_of(entry: object) -> Key | None:
    """A JWKS entry as a key to verify signatures with, or None to skip it."""
    if not isinstance(entry, dict):
        return None
    # Symmetric keys have no place in a public key set; encryption keys sign nothing.
    if entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
        return None
    try:
        return JWKRegistry.import_key(entry)
    except (JoseError, ValueError, TypeError) as error:
        # RFC 7517 §5: a key we cannot use is ignored, not a reason to refuse the set.
        log.info("OIDC: skipping JWKS key %r: %s", entry.get("kid"), _describe(error))
        return None


def _timestamp(now: datetime | None) -> float:
    if now is None:
        return time.time()
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.timestamp()


def _when(timestamp: Any) -> str:
    try:
        return datetime.fromtimestamp(float(timestamp), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(timestamp)


def _wrong_issuer(issuer: object, expected: str) -> str:
    return f"wrong issuer {issuer!r} (expected {expected!r})"


def _describe(error: Exception) -> str:
    if isinstance(error, JoseError):
        return error.description or error.error
    return str(error) or type(error).__name__
