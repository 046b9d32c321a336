"""A small OpenID Connect provider for tests, on 127.0.0.1: discovery, a JWKS of one
RSA key made here, an authorization endpoint that signs in whoever the test says
(`provider.person`, without a login form) and a token endpoint that gives an ID token
for a code, once, to the client and redirect URI that asked, with the PKCE verifier
whose S256 challenge came with the authorization (RFC 7636). What it was sent is kept
in `requests`, for tests to look at.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from joserfc import jwt
from joserfc.jwk import RSAKey


@dataclass
class Person:
    username: str
    groups: list[str] = field(default_factory=list)


@dataclass
class Provider:
    client_id: str
    key: RSAKey = field(
        default_factory=lambda: RSAKey.generate_key(
            2048, parameters={"kid": "idp-pages", "use": "sig"}
        )
    )
    person: Person = field(default_factory=lambda: Person("olivia", ["release-managers"]))
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _codes: dict[str, dict[str, str]] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Provider:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                provider.requests.append((parts.path, query))
                if parts.path == "/.well-known/openid-configuration":
                    self._json(200, provider.discovery())
                elif parts.path == "/jwks.json":
                    self._json(200, {"keys": [provider.key.as_dict(private=False)]})
                elif parts.path == "/authorize":
                    self._redirect(provider.authorize(query))
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[-1] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                provider.requests.append((self.path, form))
                if self.path == "/token":
                    status, body = provider.token(form)
                    self._json(status, body)
                else:
                    self._json(404, {"error": "not_found"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/jwks.json",
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "code_challenge_methods_supported": ["S256"],
        }

    def authorize(self, query: dict[str, str]) -> str:
        """Sign `person` in at once: back to the redirect URI with a code and the state."""
        code = secrets.token_urlsafe(16)
        self._codes[code] = query
        sep = "&" if "?" in query["redirect_uri"] else "?"
        return f"{query['redirect_uri']}{sep}{urlencode({'code': code, 'state': query['state']})}"

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        asked = self._codes.pop(form.get("code", ""), None)  # a code is good once
        if asked is None:
            return 400, {"error": "invalid_grant", "error_description": "unknown code"}
        verifier = form.get("code_verifier", "")
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        if asked.get("code_challenge_method") != "S256" or challenge != asked.get("code_challenge"):
            return 400, {"error": "invalid_grant", "error_description": "PKCE verifier"}
        if form.get("client_id") != self.client_id or form.get("redirect_uri") != asked.get(
            "redirect_uri"
        ):
            return 400, {"error": "invalid_grant", "error_description": "client or redirect"}
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": self.client_id,
            "sub": f"sub-{self.person.username}",
            "preferred_username": self.person.username,
            "groups": self.person.groups,
            "nonce": asked.get("nonce"),
            "iat": now,
            "exp": now + 300,
        }
        token = jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)
        return 200, {"id_token": token, "token_type": "Bearer", "expires_in": 300}
