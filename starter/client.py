"""The command line's way to the API: a small synchronous HTTP client (httpx).

Which server and which token come from starter/credentials.py (STAGEFLOW_URL and
STAGEFLOW_TOKEN first, then the credentials file `stageflow login` writes). Every
answer that is not a success becomes one ApiError: one line saying what is wrong,
and the exit code it means (2: bad input, refused, not signed in, unreachable).

A person's action (deploy, approve, ...) carries a fresh `request_id`. When the
request gets no answer (the connection dropped, the server died), it is sent once
more with the same id: the API answers a request it has seen with its first
verdict and never acts twice (starter/api/routes.py). When that gets no answer
either, nobody can say whether it was recorded, and the error says so and how to look.

Imports nothing of Temporal: user commands stay fast to start.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from starter.credentials import Credentials, CredentialsUnreadable, current_credentials
from starter.exit_codes import Exit

# httpx imports its own command line (click, pygments, rich.progress: some 40 ms) when
# those are installed, only for `python -m httpx`; a None entry makes that import fail,
# and httpx goes without it, as it does where they are not installed.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
import httpx  # noqa: E402

API = "/api/v1"
CONNECT_SECONDS = 5.0
# A read answers from the record; an action waits for the workflow's verdict.
READ_SECONDS = 30.0
ACTION_SECONDS = 60.0
# A connection that ended before its answer: the request may have been done.
NO_ANSWER = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ReadTimeout)
SIGN_IN = "run `stageflow login`"


class ApiError(Exception):
    """One line for the person at the terminal, and the exit code it means."""

    def __init__(self, message: str, code: int = Exit.USAGE, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        # The HTTP status the API answered, when it answered.
        self.status = status


class Refused(Exception):
    """The workflow refused an action (409 with its audit event): the event says why."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__(event.get("detail") or "refused")
        self.event = event


def unreachable(url: str) -> ApiError:
    return ApiError(
        f"cannot reach the API at {url}: start it with `stageflow up` or `stageflow serve`, "
        "or set STAGEFLOW_URL"
    )


class Api:
    """The API at one URL, as one signed-in person (`token`); None: no credentials,
    for `login` to check a token before saving it."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        # What a 401 means: `login` says it of the token it checks.
        self.unauthorized = f"not signed in to {url} (or the token is revoked/expired): {SIGN_IN}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=url + API,
            headers=headers,
            timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS),
            follow_redirects=False,
            # An https URL is verified against the system's CAs (httpx's default). A
            # plain http one never does TLS (and is never redirected): loading the CAs
            # for it would only cost some 60 ms of every command's start.
            verify=not url.startswith("http://"),
        )

    @classmethod
    def signed_in(cls) -> Api:
        """The API and token of current_credentials(); ApiError when there are none."""
        try:
            found: Credentials | None = current_credentials()
        except CredentialsUnreadable as err:
            raise ApiError(str(err)) from None
        if found is None:
            raise ApiError(f"not signed in: {SIGN_IN} (or set STAGEFLOW_URL and STAGEFLOW_TOKEN)")
        return cls(found.url, found.token)

    def close(self) -> None:
        self._http.close()

    # --- reads -------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET `path` (under /api/v1); the JSON it answers."""
        return self._json(self._send("GET", path, params=_given(params)))

    @contextmanager
    def lines(
        self, path: str, params: Mapping[str, Any] | None = None, follow: bool = False
    ) -> Iterator[Iterator[str]]:
        """The text `path` answers, line by line (without its newline) as it arrives;
        `follow`: no read timeout (a followed task may be quiet for long)."""
        timeout = (
            httpx.Timeout(None, connect=CONNECT_SECONDS) if follow else httpx.USE_CLIENT_DEFAULT
        )
        try:
            with self._http.stream("GET", path, params=_given(params), timeout=timeout) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise self._problem(answer)
                yield _lines(answer)
        except httpx.ConnectError:
            raise unreachable(self.url) from None
        except httpx.TimeoutException:
            raise ApiError(f"the API at {self.url} did not answer in time") from None
        except httpx.TransportError as err:
            raise ApiError(f"the API at {self.url} broke off its answer ({_short(err)})") from None

    # --- changes -----------------------------------------------------------------

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a change that is not a release action (a token, a grant)."""
        return self._json(self._send("POST", path, json=dict(body), once=True))

    def delete(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        answer = self._send(
            "DELETE", path, json=dict(body) if body is not None else None, once=True
        )
        return self._json(answer) if answer.content else None

    def act(self, path: str, body: Mapping[str, Any], check: str) -> dict[str, Any]:
        """A person's action on a release: POST with a fresh request id; the workflow's
        audit event when it accepted, Refused (with the event) when it refused.

        No answer: the same request once more (saying so on stderr); none again: an
        ApiError saying the action may or may not have been recorded, and `check`,
        the command that shows whether it was."""
        request = {**body, "request_id": uuid.uuid4().hex}
        try:
            answer = self._post_action(path, request)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise unreachable(self.url) from None  # nothing was sent
        except NO_ANSWER as err:
            print(
                f"the API at {self.url} gave no answer ({_short(err)}); sending the same "
                f"request again (request id {request['request_id']})",
                file=sys.stderr,
                flush=True,
            )
            try:
                answer = self._post_action(path, request)
            except httpx.TransportError as again:
                raise ApiError(
                    f"the API at {self.url} gave no answer again ({_short(again)}): the action "
                    f"may or may not have been recorded; `{check}` shows whether it was "
                    f"(request id {request['request_id']})"
                ) from None
        if answer.status_code == 409:
            refused = _problem_json(answer).get("refused")
            if isinstance(refused, dict):
                raise Refused(refused)
        verdict = self._json(answer)
        event: dict[str, Any] = verdict["event"]
        return event

    def _post_action(self, path: str, request: dict[str, Any]) -> httpx.Response:
        timeout = httpx.Timeout(ACTION_SECONDS, connect=CONNECT_SECONDS)
        return self._http.post(path, json=request, timeout=timeout)

    # --- plumbing ----------------------------------------------------------------

    def _send(self, method: str, path: str, once: bool = False, **options: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **options)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise unreachable(self.url) from None
        except httpx.TimeoutException:
            raise ApiError(f"the API at {self.url} did not answer in time") from None
        except httpx.TransportError as err:
            what = "the change may or may not have been made" if once else "try again"
            raise ApiError(
                f"the API at {self.url} gave no answer ({_short(err)}): {what}"
            ) from None

    def _json(self, answer: httpx.Response) -> Any:
        if answer.status_code >= 400:
            raise self._problem(answer)
        if answer.status_code == 204 or not answer.content:
            return None
        try:
            return answer.json()
        except ValueError:
            raise ApiError(
                f"the API at {self.url} answered {answer.status_code} with no JSON: "
                "is STAGEFLOW_URL the Stageflow API?"
            ) from None

    def _problem(self, answer: httpx.Response) -> ApiError:
        """The one line a problem answer (RFC 9457, starter/api/problems.py) means."""
        status = answer.status_code
        problem = _problem_json(answer)
        detail = str(problem.get("detail") or "")
        if status == 401:
            return ApiError(self.unauthorized, status=status)
        if status == 422:
            params = problem.get("invalid_params") or []
            fields = "; ".join(f"{p.get('name')}: {p.get('reason')}" for p in params)
            return ApiError(detail or fields or "invalid request", status=status)
        if status in (403, 404, 409) and detail:
            return ApiError(detail, status=status)
        title = str(problem.get("title") or answer.reason_phrase)
        text = detail or (answer.text.strip().splitlines() or [""])[0][:200]
        return ApiError(
            f"the API at {self.url} answered {status} ({title})" + (f": {text}" if text else ""),
            status=status,
        )


def _lines(answer: httpx.Response) -> Iterator[str]:
    """The lines of a text answer as they arrive, split at "\\n" only (a log's "\\r"
    stays in its line, as in the log store)."""
    rest = ""
    for text in answer.iter_text():
        *whole, rest = (rest + text).split("\n")
        yield from whole
    if rest:
        yield rest


def _problem_json(answer: httpx.Response) -> dict[str, Any]:
    try:
        found = answer.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _given(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Query parameters that were given (None: left out, as the route's default)."""
    if params is None:
        return None
    return {k: _query_value(v) for k, v in params.items() if v is not None}


def _query_value(value: Any) -> Any:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _short(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__
