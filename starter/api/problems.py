"""Errors of the API as RFC 9457 problem details (`application/problem+json`).

Every error the API answers is one of these: a status, a title that names the
kind of problem, a detail that says what was wrong in this request; bad input
(422) lists each invalid field by its path (`body.comment`, `query.limit`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class InvalidParam(BaseModel):
    name: str
    reason: str


class ProblemDetails(BaseModel):
    """RFC 9457: what went wrong with a request."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    invalid_params: list[InvalidParam] | None = None
    # 409: the workflow's own answer (its audit event), for a refused decision.
    refused: dict[str, Any] | None = None


class Problem(Exception):
    """Raise to answer with a problem: `status`, a short `title`, this request's `detail`."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra


def unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail)


def forbidden(detail: str) -> Problem:
    return Problem(403, "Forbidden", detail)


def not_found(detail: str) -> Problem:
    return Problem(404, "Not Found", detail)


def problem_response(problem: Problem) -> JSONResponse:
    body = ProblemDetails(
        title=problem.title, status=problem.status, detail=problem.detail, **problem.extra
    )
    headers = {"WWW-Authenticate": "Bearer"} if problem.status == 401 else None
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _field_path(location: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in location)


def install(app: FastAPI) -> None:
    """Answer every error of `app` as a problem."""

    @app.exception_handler(Problem)
    async def _problem(_request: Request, problem: Problem) -> JSONResponse:
        return problem_response(problem)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        params = [
            InvalidParam(name=_field_path(e.get("loc", ())), reason=str(e.get("msg", "")))
            for e in error.errors()
        ]
        detail = "; ".join(f"{p.name}: {p.reason}" for p in params)
        return problem_response(
            Problem(
                422,
                "Invalid request",
                detail,
                invalid_params=[p.model_dump() for p in params],
            )
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        titles = {
            400: "Bad Request",
            401: "Unauthorized",
            404: "Not Found",
            405: "Method Not Allowed",
        }
        return problem_response(
            Problem(error.status_code, titles.get(error.status_code, "Error"), str(error.detail))
        )


# Documented on every route that needs a person: what a refusal looks like.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ProblemDetails, "content": {PROBLEM_JSON: {}}, "description": text}
    for status, text in (
        (400, "the body is not JSON"),
        (401, "no valid credentials"),
        (403, "the person may not do this"),
        (404, "no such pipeline, release or stage"),
        (422, "invalid input; each field by its path"),
        (503, "the record store or Temporal did not answer: nothing was done, try again"),
    )
}

# Documented on the actions too: what a refusal by the workflow (or a request id that
# is another person's, or a release that has closed) looks like.
ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ProblemDetails,
        "content": {PROBLEM_JSON: {}},
        "description": "refused: by the workflow (its event in `refused`), a closed "
        "release, or a request id another person sent",
    }
}
