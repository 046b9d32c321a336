"""The command line's HTTP client (starter/client.py) against real servers on 127.0.0.1:
every problem the API answers is one line, an action that got no answer is sent once
more with the same request id (and says so), and one that got none twice says it may
or may not have been recorded and how to look. The server here is a small real HTTP
server that answers as it is told, including by hanging up before it answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from starter.client import Api, ApiError, Refused
from starter.exit_codes import Exit
from worker.devserver import free_port

EVENT = {
    "time": "2026-12-01T03:00:00Z",
    "actor": "alice",
    "action": "approve",
    "stage": "prod",
    "outcome": "accepted",
    "detail": "pre-deployment",
    "request_id": None,
}


@dataclass
class Answers:
    """What the server answers, in turn: (status, JSON body) or "hang up"; and what it got."""

    queue: list[Any] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Answers]]:
    answers = Answers()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self._answer()

        def do_POST(self) -> None:  # noqa: N802
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            answers.received.append(json.loads(body) if body else {})
            answers.headers.append(dict(self.headers))
            answer = answers.queue.pop(0)
            if answer == "hang up":
                self.close_connection = True  # closed without a word
                return
            status, data = answer
            content = json.dumps(data).encode()
            self.send_response(status)
            kind = "application/problem+json" if status >= 400 else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}", answers
    finally:
        http.shutdown()
        http.server_close()
        thread.join(10)


def test_an_action_without_an_answer_is_sent_again_with_the_same_request_id(
    server: tuple[str, Answers], capsys: pytest.CaptureFixture[str]
) -> None:
    url, answers = server
    answers.queue += ["hang up", (200, {"event": EVENT})]
    api = Api(url, "sft_a_b")
    event = api.act("/releases/p/1/stages/prod/approve", {"phase": "pre"}, "stageflow history p/1")
    assert event == EVENT
    first, again = answers.received
    assert first == again and first["phase"] == "pre"
    assert len(first["request_id"]) == 32
    assert answers.headers[0]["Authorization"] == "Bearer sft_a_b"
    err = capsys.readouterr().err
    assert err.startswith(f"the API at {url} gave no answer (")
    assert err.endswith(f"sending the same request again (request id {first['request_id']})\n")


def test_an_action_without_an_answer_twice_may_or_may_not_be_recorded(
    server: tuple[str, Answers],
) -> None:
    url, answers = server
    answers.queue += ["hang up", "hang up"]
    api = Api(url, "sft_a_b")
    with pytest.raises(ApiError) as caught:
        api.act("/releases/p/1/stages/prod/approve", {}, "stageflow history p/1")
    message = str(caught.value)
    request_id = answers.received[0]["request_id"]
    assert answers.received[1]["request_id"] == request_id
    assert "may or may not have been recorded" in message
    assert "`stageflow history p/1` shows whether it was" in message
    assert message.endswith(f"(request id {request_id})") and "\n" not in message
    assert caught.value.code == Exit.USAGE


def test_each_action_has_its_own_request_id(server: tuple[str, Answers]) -> None:
    url, answers = server
    answers.queue += [(200, {"event": EVENT}), (200, {"event": EVENT})]
    api = Api(url, "sft_a_b")
    for _ in range(2):
        api.act("/releases/p/1/stages/prod/approve", {}, "stageflow history p/1")
    assert answers.received[0]["request_id"] != answers.received[1]["request_id"]


def test_a_refusal_carries_the_workflows_event(server: tuple[str, Answers]) -> None:
    url, answers = server
    refused = {**EVENT, "outcome": "refused", "detail": "alice has approved already"}
    problem = {"title": "Refused", "status": 409, "detail": refused["detail"], "refused": refused}
    answers.queue.append((409, problem))
    with pytest.raises(Refused) as caught:
        Api(url, "t").act("/releases/p/1/stages/prod/approve", {}, "stageflow history p/1")
    assert caught.value.event == refused


@pytest.mark.parametrize(
    ("status", "problem", "line"),
    [
        (403, {"detail": "bob is not an approver of stage 'prod' of 'web'"}, None),
        (404, {"detail": "release web/9 not found"}, None),
        (409, {"title": "Release closed", "detail": "release web/1 is abandoned"}, None),
        (
            422,
            {
                "title": "Invalid request",
                "detail": "",
                "invalid_params": [
                    {"name": "query.limit", "reason": "Input should be less than or equal to 200"}
                ],
            },
            "query.limit: Input should be less than or equal to 200",
        ),
        (
            503,
            {"title": "Temporal unavailable", "detail": "cannot reach Temporal at 127.0.0.1:1"},
            "the API at URL answered 503 (Temporal unavailable): cannot reach Temporal at "
            "127.0.0.1:1",
        ),
    ],
)
def test_every_problem_is_one_line(
    server: tuple[str, Answers], status: int, problem: dict[str, Any], line: str | None
) -> None:
    url, answers = server
    answers.queue.append((status, {"status": status, "title": "x", **problem}))
    with pytest.raises(ApiError) as caught:
        Api(url, "t").get("/releases")
    assert str(caught.value) == (line or problem["detail"]).replace("URL", url)
    assert caught.value.code == Exit.USAGE and caught.value.status == status


def test_a_token_the_api_refuses_says_to_sign_in(server: tuple[str, Answers]) -> None:
    url, answers = server
    answers.queue.append((401, {"status": 401, "title": "Unauthorized", "detail": "revoked"}))
    with pytest.raises(ApiError) as caught:
        Api(url, "t").get("/me")
    assert str(caught.value) == (
        f"not signed in to {url} (or the token is revoked/expired): run `stageflow login`"
    )


def test_no_server_is_one_line_saying_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for call in (
        lambda api: api.get("/releases"),
        lambda api: api.act("/releases/p/1/abandon", {}, "stageflow history p/1"),
    ):
        with pytest.raises(ApiError) as caught:
            call(Api(url, "t"))
        assert str(caught.value) == (
            f"cannot reach the API at {url}: start it with `stageflow up` or "
            "`stageflow serve`, or set STAGEFLOW_URL"
        )


def test_no_credentials_say_how_to_sign_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("STAGEFLOW_URL", raising=False)
    monkeypatch.delenv("STAGEFLOW_TOKEN", raising=False)
    with pytest.raises(ApiError) as caught:
        Api.signed_in()
    assert str(caught.value) == (
        "not signed in: run `stageflow login` (or set STAGEFLOW_URL and STAGEFLOW_TOKEN)"
    )
