"""OIDC bearer tokens (starter/api/oidc.py) against a test issuer on loopback.

The issuer's keys are made here; its discovery document and JWKS are served by a real
HTTP server on 127.0.0.1, started and stopped by each test. Time is the `now` given to
`verify`, never a sleep.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, Key, RSAKey

from starter.api.oidc import InvalidToken, OidcIdentity, OidcSettings, OidcVerifier

AUDIENCE = "stageflow"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass
class Issuer:
    """A test identity provider: its URL, the documents it serves, the requests it saw."""

    url: str
    documents: dict[str, Any] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks.json"

    def publish(self, *keys: Key) -> None:
        self.documents["/jwks.json"] = {"keys": [key.as_dict(private=False) for key in keys]}

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def _serve(issuer_documents: dict[str, Any], hits: dict[str, int]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            document = issuer_documents.get(self.path)
            body = json.dumps(document).encode() if document is not None else b"{}"
            self.send_response(200 if document is not None else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1", "use": "sig"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture
def issuer(rsa_key: RSAKey, ec_key: ECKey) -> Iterator[Issuer]:
    """The test issuer serving discovery and a JWKS of rsa-1 and ec-1, stopped at the end."""
    documents: dict[str, Any] = {}
    hits: dict[str, int] = {}
    server = _serve(documents, hits)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="oidc-issuer", daemon=True
    )
    thread.start()
    test_issuer = Issuer(url=url, documents=documents, hits=hits, server=server)
    documents["/.well-known/openid-configuration"] = {
        "issuer": url,
        "jwks_uri": test_issuer.jwks_url,
    }
    test_issuer.publish(rsa_key, ec_key)
    try:
        yield test_issuer
    finally:
        test_issuer.stop()
        thread.join(timeout=10)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy in the environment must not sit between us and loopback.
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def verifier_for(issuer: Issuer, http: httpx.AsyncClient, **settings: Any) -> OidcVerifier:
    return OidcVerifier(OidcSettings(issuer=issuer.url, audience=AUDIENCE, **settings), http)


def claims_at(issuer: Issuer, at: datetime = T0, **extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": issuer.url,
        "aud": AUDIENCE,
        "sub": "u-1234",
        "preferred_username": "alice",
        "groups": ["release-managers", "dev"],
        "iat": int(at.timestamp()),
        "nbf": int(at.timestamp()),
        "exp": int((at + timedelta(minutes=5)).timestamp()),
    }
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: Key, alg: str = "RS256", kid: str | None = "") -> str:
    header = {"alg": alg}
    kid = key.kid if kid == "" else kid
    if kid is not None:
        header["kid"] = kid
    return jwt.encode(header, claims, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segments(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"


async def refused(verifier: OidcVerifier, token: str, at: datetime = T0) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token, now=at)
    return caught.value.reason


# --- accepted ----------------------------------------------------------------------


async def test_token_signed_by_the_issuer_names_the_user_and_their_groups(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    identity = await verifier.verify(sign(claims_at(issuer), rsa_key), now=T0)
    assert identity == OidcIdentity(
        user="alice",
        groups=("oidc:release-managers", "oidc:dev"),
        issuer=issuer.url,
        subject="u-1234",
    )
    # The JWKS was found through the discovery document.
    assert issuer.hits == {"/.well-known/openid-configuration": 1, "/jwks.json": 1}


async def test_es256_token_is_accepted_and_keys_are_fetched_once(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey, ec_key: ECKey
) -> None:
    verifier = verifier_for(issuer, http, jwks_url=issuer.jwks_url)
    ec_token = sign(claims_at(issuer, preferred_username="bob"), ec_key, alg="ES256")
    assert (await verifier.verify(ec_token, now=T0)).user == "bob"
    later = T0 + timedelta(minutes=2)
    rsa_token = sign(claims_at(issuer, later), rsa_key)
    assert (await verifier.verify(rsa_token, now=later)).user == "alice"
    assert issuer.hits == {"/jwks.json": 1}  # the configured URL; cached for the second


async def test_user_falls_back_to_sub_and_groups_claim_is_configurable(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http, groups_claim="roles")
    claims = claims_at(issuer, preferred_username=None, groups=None, roles="admins")
    identity = await verifier.verify(sign(claims, rsa_key), now=T0)
    assert (identity.user, identity.groups) == ("u-1234", ("oidc:admins",))

    by_email = verifier_for(issuer, http, username_claim="email")
    claims = claims_at(issuer, email="carol@example.com", groups=None)
    identity = await by_email.verify(sign(claims, rsa_key), now=T0)
    assert (identity.user, identity.groups) == ("carol@example.com", ())


async def test_clock_skew_within_the_leeway_is_accepted(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    token = sign(claims_at(issuer), rsa_key)
    await verifier.verify(token, now=T0 - timedelta(seconds=59))
    await verifier.verify(token, now=T0 + timedelta(minutes=5, seconds=59))


# --- refused -----------------------------------------------------------------------


async def test_wrong_audience_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    token = sign(claims_at(issuer, aud="another-app"), rsa_key)
    assert await refused(verifier, token) == "wrong audience 'another-app' (expected 'stageflow')"
    token = sign(claims_at(issuer, aud=["another-app", "a-third"]), rsa_key)
    assert (await refused(verifier, token)).startswith("wrong audience")
    token = sign(claims_at(issuer, aud=None), rsa_key)
    assert await refused(verifier, token) == "missing claim 'aud'"


async def test_wrong_issuer_is_refused_without_fetching_keys(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    token = sign(claims_at(issuer, iss="https://evil.example"), rsa_key)
    assert await refused(verifier, token) == (
        f"wrong issuer 'https://evil.example' (expected '{issuer.url}')"
    )
    assert issuer.hits == {}


async def test_expired_token_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    token = sign(claims_at(issuer), rsa_key)
    reason = await refused(verifier, token, T0 + timedelta(minutes=6, seconds=1))
    assert reason == "expired at 2026-12-01T12:05:00+00:00"
    no_exp = sign(claims_at(issuer, exp=None), rsa_key)
    assert await refused(verifier, no_exp) == "missing claim 'exp'"


async def test_token_not_yet_valid_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    token = sign(claims_at(issuer, iat=None), rsa_key)
    reason = await refused(verifier, token, T0 - timedelta(seconds=61))
    assert reason == "not yet valid (not before 2026-12-01T12:00:00+00:00)"


async def test_alg_none_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    unsigned = segments({"alg": "none", "kid": "rsa-1"}, claims_at(issuer)) + "."
    reason = await refused(verifier, unsigned)
    assert reason == "algorithm 'none' is not allowed (allowed: RS256, ES256)"
    assert issuer.hits == {}


async def test_hs256_signed_with_the_public_key_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    # The algorithm-confusion attack: the public key, which anyone has, as an HMAC secret.
    secret = rsa_key.as_pem(private=False)
    signing_input = segments({"alg": "HS256", "kid": "rsa-1"}, claims_at(issuer))
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    reason = await refused(verifier, f"{signing_input}.{b64(mac)}")
    assert reason == "algorithm 'HS256' is not allowed (allowed: RS256, ES256)"


def test_settings_refuse_symmetric_and_none_algorithms() -> None:
    for algorithm in ("HS256", "none"):
        with pytest.raises(ValueError, match=algorithm):
            OidcSettings(issuer="https://idp", audience=AUDIENCE, algorithms=("RS256", algorithm))
    with pytest.raises(ValueError, match="audience"):
        OidcSettings(issuer="https://idp", audience="")


async def test_key_not_in_the_jwks_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    reason = await refused(verifier, sign(claims_at(issuer), stranger))
    assert reason == "unknown key id 'stranger': not one of the issuer's keys"
    # The same kid as a published key, but other key material: the signature fails.
    impostor = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
    reason = await refused(verifier, sign(claims_at(issuer), impostor, alg="ES256"))
    assert reason == "bad signature"


async def test_tampered_payload_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    header, _, signature = sign(claims_at(issuer), rsa_key).split(".")
    forged = b64(json.dumps(claims_at(issuer, preferred_username="mallory")).encode())
    assert await refused(verifier, f"{header}.{forged}.{signature}") == "bad signature"


async def test_key_of_the_wrong_type_for_the_algorithm_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, ec_key: ECKey
) -> None:
    verifier = verifier_for(issuer, http)
    # An RS256 header naming the EC key: the key must fit the algorithm.
    token = sign(claims_at(issuer), RSAKey.generate_key(2048), alg="RS256", kid="ec-1")
    assert (await refused(verifier, token)).startswith("key 'ec-1' cannot verify RS256")


async def test_malformed_tokens_are_refused_with_a_reason(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    for token in ("", "not-a-jwt", "a.b.c", "a.b.c.d.e", segments({"kid": "x"}, {}) + ".x"):
        assert (await refused(verifier, token)).startswith("malformed token"), token
    not_claims = f"{b64(json.dumps({'alg': 'RS256'}).encode())}.{b64(b'[1]')}.x"
    assert await refused(verifier, not_claims) == (
        "malformed token: its claims are not a JSON object"
    )


async def test_token_without_a_subject_or_username_is_refused(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    token = sign(claims_at(issuer, preferred_username=None, sub=None), rsa_key)
    assert await refused(verifier, token) == "missing claim 'sub'"
    token = sign(claims_at(issuer, preferred_username=["alice"]), rsa_key)
    assert await refused(verifier, token) == (
        "missing username claim: 'preferred_username' is not a name"
    )
    token = sign(claims_at(issuer, groups={"dev": True}), rsa_key)
    assert await refused(verifier, token) == ("malformed claim 'groups': not a list of group names")


# --- the issuer's keys over time ---------------------------------------------------


async def test_rotated_key_is_accepted_after_a_refetch_at_most_every_30_s(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http, jwks_url=issuer.jwks_url)
    await verifier.verify(sign(claims_at(issuer), rsa_key), now=T0)
    assert issuer.hits == {"/jwks.json": 1}

    rotated = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
    issuer.publish(rsa_key, rotated)

    # Within 30 s of the last fetch an unknown kid does not fetch again.
    soon = T0 + timedelta(seconds=10)
    reason = await refused(verifier, sign(claims_at(issuer, soon), rotated), soon)
    assert reason == "unknown key id 'rsa-2': not one of the issuer's keys"
    assert issuer.hits == {"/jwks.json": 1}

    later = T0 + timedelta(seconds=31)
    identity = await verifier.verify(sign(claims_at(issuer, later), rotated), now=later)
    assert identity.user == "alice"
    assert issuer.hits == {"/jwks.json": 2}
    # A second token from the new key needs no further fetch.
    await verifier.verify(sign(claims_at(issuer, later), rotated), now=later)
    assert issuer.hits == {"/jwks.json": 2}


async def test_concurrent_first_requests_share_one_fetch(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    token = sign(claims_at(issuer), rsa_key)
    identities = await asyncio.gather(*(verifier.verify(token, now=T0) for _ in range(20)))
    assert {identity.user for identity in identities} == {"alice"}
    assert issuer.hits == {"/.well-known/openid-configuration": 1, "/jwks.json": 1}


async def test_keys_are_fetched_again_after_ten_minutes(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http, jwks_url=issuer.jwks_url)
    await verifier.verify(sign(claims_at(issuer), rsa_key), now=T0)
    # The issuer withdraws rsa-1: once the cache expires, its tokens are refused.
    issuer.publish(RSAKey.generate_key(2048, parameters={"kid": "rsa-2"}))
    at = T0 + timedelta(minutes=9)
    await verifier.verify(sign(claims_at(issuer, at), rsa_key), now=at)
    assert issuer.hits == {"/jwks.json": 1}
    at = T0 + timedelta(minutes=10)
    reason = await refused(verifier, sign(claims_at(issuer, at), rsa_key), at)
    assert reason == "unknown key id 'rsa-1': not one of the issuer's keys"
    assert issuer.hits == {"/jwks.json": 2}


async def test_issuer_down_is_an_invalid_token_not_an_exception(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http)
    issuer.stop()
    reason = await refused(verifier, sign(claims_at(issuer), rsa_key))
    assert reason.startswith(
        "cannot fetch the issuer's keys: the issuer's discovery document at "
        f"{issuer.url}/.well-known/openid-configuration: "
    ), reason
    # Asked again at once, it says so without hammering the provider.
    reason = await refused(verifier, sign(claims_at(issuer), rsa_key))
    assert reason.endswith("(next try in 30 s)"), reason


async def test_keys_in_hand_outlive_an_outage_of_the_issuer_for_an_hour(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    verifier = verifier_for(issuer, http, jwks_url=issuer.jwks_url)
    await verifier.verify(sign(claims_at(issuer), rsa_key), now=T0)
    issuer.stop()
    at = T0 + timedelta(minutes=30)
    assert (await verifier.verify(sign(claims_at(issuer, at), rsa_key), now=at)).user == "alice"
    at = T0 + timedelta(minutes=71)
    reason = await refused(verifier, sign(claims_at(issuer, at), rsa_key), at)
    assert reason.startswith(
        f"cannot fetch the issuer's keys: the issuer's keys (JWKS) at {issuer.jwks_url}: "
    )


async def test_unusable_issuer_documents_are_refusals(
    issuer: Issuer, http: httpx.AsyncClient, rsa_key: RSAKey
) -> None:
    token = sign(claims_at(issuer), rsa_key)
    discovery = f"{issuer.url}/.well-known/openid-configuration"
    issuer.documents[discovery.removeprefix(issuer.url)] = {
        "issuer": "https://elsewhere",
        "jwks_uri": issuer.jwks_url,
    }
    reason = await refused(verifier_for(issuer, http), token)
    assert reason == (
        f"cannot fetch the issuer's keys: {discovery} names issuer 'https://elsewhere', "
        f"not '{issuer.url}'"
    )
    issuer.documents["/jwks.json"] = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "rsa-1"}]}
    reason = await refused(verifier_for(issuer, http, jwks_url=issuer.jwks_url), token)
    assert (
        reason
        == f"cannot fetch the issuer's keys: {issuer.jwks_url} has no signing keys we can use"
    )
    missing = f"{issuer.url}/nothing-here"
    reason = await refused(verifier_for(issuer, http, jwks_url=missing), token)
    assert (
        reason == f"cannot fetch the issuer's keys: the issuer's keys (JWKS) at {missing}: HTTP 404"
    )


def test_settings_from_env() -> None:
    assert OidcSettings.from_env({}) is None
    settings = OidcSettings.from_env(
        {
            "STAGEFLOW_OIDC_ISSUER": "https://idp.example/realms/eng",
            "STAGEFLOW_OIDC_AUDIENCE": "stageflow",
            "STAGEFLOW_OIDC_JWKS_URL": "https://idp.example/keys",
            "STAGEFLOW_OIDC_USERNAME_CLAIM": "email",
            "STAGEFLOW_OIDC_GROUPS_CLAIM": "roles",
        }
    )
    assert settings == OidcSettings(
        issuer="https://idp.example/realms/eng",
        audience="stageflow",
        jwks_url="https://idp.example/keys",
        username_claim="email",
        groups_claim="roles",
    )
    defaults = OidcSettings.from_env(
        {"STAGEFLOW_OIDC_ISSUER": "https://idp", "STAGEFLOW_OIDC_AUDIENCE": "sf"}
    )
    assert defaults is not None
    assert (defaults.jwks_url, defaults.username_claim, defaults.groups_claim) == (
        None,
        "preferred_username",
        "groups",
    )
    assert defaults.algorithms == ("RS256", "ES256")
    assert defaults.leeway == timedelta(seconds=60)
    with pytest.raises(ValueError, match="STAGEFLOW_OIDC_AUDIENCE"):
        OidcSettings.from_env({"STAGEFLOW_OIDC_ISSUER": "https://idp"})
