"""Stageflow's web pages (issue 14), served by `stageflow serve` beside the API.

Server-rendered (Jinja2, starter/web/templates) with a little JavaScript
(starter/web/static/stageflow.js) that refreshes what is running without a reload
and follows a running task's log; every page works without it but for that.

Pages read what the API reads (the record, with the live view of running stages)
and act the way the API acts: a form's decision goes through the same checks, the
same trail of requests and the same Temporal update as `POST /api/v1/...`
(starter/api/routes.py `_act`), as the signed-in person (starter/web/session.py).
Each form carries a request id made when the page was drawn, so a form sent twice
(a double click, a reload) is answered once.

    /sign-in, /sign-out           a session from a personal token; its end
    /                             each pipeline's stages × recent releases, and
                                  what waits on you
    /approvals                    everything waiting on you, with its decisions
    /releases/P/N                 one release: stages, tasks, logs, its trail
    /pipelines/P                  revisions (with diffs) and the stages' rules
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

import yaml
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from temporalio.client import Client

from activities import record
from activities.log_store import read_log
from activities.record import end_session, open_session
from activities.record.requests import record_request, request_of
from activities.record.views import RecordedRevision, Waiting
from starter import releases as actions
from starter.api.access import Access, is_approver_anywhere, is_decider
from starter.api.app import Service, ServiceDep
from starter.api.params import TEXT_PATTERN
from starter.api.problems import Problem, problem_response
from starter.api.routes import Action, Send, _act, _decide, _decision, _spec, _stage
from starter.api.routes_logs import _release, _store
from starter.logs import follow, key_stem, matches, try_logs
from starter.release_ref import ReleaseRef
from starter.web.provider import add_provider_sign_in
from starter.web.session import (
    COOKIE,
    SignInNeeded,
    Visitor,
    VisitorDep,
    current_visitor,
    local_path,
    sign_in_url,
    signed_in,
)
from workflows.audit import AuditEvent
from workflows.names import release_workflow_id
from workflows.release import ReleaseStatus, StageStatus, StageView, TaskRun, TaskStatus

HERE = Path(__file__).resolve().parent
# Forms are small: a comment, a few fields.
FORM_LIMIT = 64 * 1024
# Releases per pipeline on the dashboard.
DASHBOARD_RELEASES = 8
DECISIONS = ("approve", "reject", "resume", "deploy_now")
# What a releaser does to a stage (the API's deploy, redeploy and cancel).
RELEASER_ACTIONS = ("deploy", "redeploy", "cancel")
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
COMMENT_LIMIT = 2000  # as the API's (starter/api/params.py Text)
# A log page shows at most this much at once (`stageflow logs` gives any log whole).
LOG_PAGE_LIMIT = 4 * 1024 * 1024

# Shown beside every status: its words, and a sign that is not a colour.
STATUS_SIGNS = {
    "succeeded": "✓",
    "partially_succeeded": "◐",
    "failed": "✗",
    "rejected": "✗",
    "canceled": "⊘",
    "terminated": "⊘",
    "abandoned": "⊘",
    "skipped": "–",
    "not_deployed": "·",
    "in_progress": "▶",
    "queued": "…",
    "scheduled": "◷",
    "evaluating_gates": "◷",
    "waiting_for_approval": "?",
    "waiting_for_intervention": "?",
    "deferred": "◷",
    "waiting": "?",
    "pending": "·",
}


def _status_label(status: Any) -> str:
    text = str(getattr(status, "value", status))
    return f"{STATUS_SIGNS.get(text, '·')} {text.replace('_', ' ')}"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _took(duration: timedelta | None) -> str:
    if duration is None:
        return "-"
    seconds = int(duration.total_seconds())
    if seconds < 60:
        return f"{duration.total_seconds():.1f} s"
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s"


# Our own templates only, autoescaped: a release's description, a comment, a log line
# go in as variables and are never templates themselves (DESIGN.md's sandbox is for
# the templates pipelines bring).
_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(enabled_extensions=("j2",), default=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(status=_status_label, when=_when, took=_took, q=lambda s: quote(s))


def _page(
    request: Request,
    template: str,
    visitor: Visitor | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    html = _templates.get_template(template).render(
        request_path=request.url.path,
        me=visitor.principal if visitor else None,
        csrf=visitor.csrf if visitor else "",
        web_ui=request.app.state.web_ui,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


async def _form(request: Request) -> dict[str, list[str]]:
    """The fields of an urlencoded form (the only kind these pages send)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Problem(415, "Unsupported Media Type", "send the form as urlencoded fields")
    body = await request.body()
    if len(body) > FORM_LIMIT:
        raise Problem(413, "Content Too Large", f"a form is at most {FORM_LIMIT} bytes")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=500)
    except (UnicodeDecodeError, ValueError) as err:
        raise Problem(400, "Bad Request", f"the form could not be read: {err}") from None


def _one(form: dict[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[-1] if values else default


class Forged(Exception):
    """A form post whose CSRF token is missing or not the session's: refused 403."""


async def _checked_form(
    request: Request, svc: Service, visitor: Visitor, ref: ReleaseRef | None, stage: str | None
) -> dict[str, list[str]]:
    """The form, once its CSRF token is the session's; else the refusal is kept in the
    trail of requests (as a 403 of the API is) and Forged raised."""
    form = await _form(request)
    if visitor.csrf_matches(_one(form, "csrf") or None):
        return form
    if ref is not None:
        await record_request(
            svc.db,
            pipeline=ref.pipeline,
            number=ref.number,
            stage=stage,
            actor=visitor.principal.user,
            via=visitor.principal.via,
            action=_one(form, "action") or "form",
            request_id=None,
            outcome="forbidden",
            detail="the form's CSRF token is missing or not this session's",
        )
    raise Forged


def add_pages(app: FastAPI, web_ui: str | None = None) -> None:
    """The pages and their static files, on `app` (the API's own FastAPI app)."""
    app.state.web_ui = web_ui
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(SignInNeeded)
    async def _sign_in(_request: Request, error: SignInNeeded) -> Response:
        return RedirectResponse(sign_in_url(error.next_path), status_code=303)

    @app.exception_handler(Problem)
    async def _problem(request: Request, problem: Problem) -> Response:
        """The API answers problem JSON; a page, a page that says the same."""
        if request.url.path.startswith("/api/"):
            return problem_response(problem)
        visitor = await current_visitor(request, request.app.state.service)
        return _page(
            request,
            "error.html.j2",
            visitor,
            problem.status,
            title=problem.title,
            detail=problem.detail,
        )

    @app.exception_handler(Forged)
    async def _forged(request: Request, _error: Forged) -> Response:
        return _page(
            request,
            "error.html.j2",
            None,
            403,
            title="Refused",
            detail="This form was not sent from this session's page (its CSRF token is "
            "missing or wrong). Nothing was done. Open the page again and use it there.",
        )

    pages = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
    _add_sign_in(pages)
    add_provider_sign_in(pages, _page)
    _add_views(pages)
    _add_decisions(pages)
    app.include_router(pages)


# --- signing in and out ---------------------------------------------------------------


def _add_sign_in(pages: APIRouter) -> None:
    @pages.get("/sign-in")
    async def sign_in_form(request: Request, svc: ServiceDep, next: str = "/") -> Response:
        if await current_visitor(request, svc) is not None:
            return RedirectResponse(local_path(next), status_code=303)
        return _sign_in_page(request, svc, 200, local_path(next), "")

    @pages.post("/sign-in")
    async def sign_in(request: Request, svc: ServiceDep) -> Response:
        form = await _form(request)
        target = local_path(_one(form, "next"))
        token = _one(form, "token").strip()
        try:
            who = await svc.authenticator(f"Bearer {token}" if token else None)
        except Problem as problem:
            return _sign_in_page(request, svc, 401, target, problem.detail)
        if not who.via.startswith("token "):
            return _sign_in_page(
                request,
                svc,
                401,
                target,
                "paste a personal token (sft_…), made with `stageflow token create`",
            )
        opened = await open_session(
            svc.db,
            user=who.user,
            via=who.via,
            groups=who.groups,
            is_admin=who.is_admin,
            token_id=who.via.removeprefix("token "),
        )
        return signed_in(request, target, opened)

    @pages.post("/sign-out")
    async def sign_out(request: Request, svc: ServiceDep, visitor: VisitorDep) -> Response:
        await _checked_form(request, svc, visitor, None, None)
        await end_session(svc.db, visitor.session.session_id)
        response = RedirectResponse("/sign-in", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def _sign_in_page(
    request: Request, svc: Service, status_code: int, next_path: str, error: str
) -> HTMLResponse:
    """The sign-in form, with the identity provider's button when one is configured."""
    oidc = svc.authenticator.oidc
    return _page(
        request,
        "sign_in.html.j2",
        None,
        status_code,
        next=next_path,
        error=error,
        provider=oidc.settings.issuer if oidc else None,
    )


# --- what people look at --------------------------------------------------------------


def _add_views(pages: APIRouter) -> None:
    @pages.get("/")
    async def dashboard(request: Request, svc: ServiceDep, visitor: VisitorDep) -> Response:
        can = visitor.access
        waiting = await _waiting_on(svc, visitor)
        boards = []
        for name in await record.pipeline_names(svc.db):
            matrix = await record.status_matrix(svc.db, name, DASHBOARD_RELEASES)
            if not await _may_see_board(svc, can, name, matrix.releases):
                continue
            counts = Counter(
                _summary(view.status)
                for release in matrix.releases
                if release.state == "active"
                for view in release.stages
            )
            boards.append({"matrix": matrix, "counts": counts})
        return _page(request, "dashboard.html.j2", visitor, waiting=waiting, boards=boards)

    @pages.get("/approvals")
    async def inbox(
        request: Request, svc: ServiceDep, visitor: VisitorDep, done: str = ""
    ) -> Response:
        waiting = await _waiting_on(svc, visitor)
        answers = [await request_of(svc.db, rid, visitor.principal.user) for rid in done.split()]
        return _page(
            request,
            "inbox.html.j2",
            visitor,
            waiting=waiting,
            rows=[{"value": _row(w), "request_id": uuid.uuid4().hex} for w in waiting],
            answers=[a for a in answers if a is not None],
        )

    @pages.get("/releases/{pipeline}/{number}")
    async def release_page(
        request: Request,
        pipeline: str,
        number: int,
        svc: ServiceDep,
        visitor: VisitorDep,
        request_id: Annotated[str, Query(alias="request")] = "",
    ) -> Response:
        shown = await _release_context(svc, visitor, pipeline, number)
        answer = (
            await request_of(svc.db, request_id, visitor.principal.user) if request_id else None
        )
        trail = await record.trail(svc.db, pipeline, number) or []
        previous = await record.release(svc.db, pipeline, number - 1) if number > 1 else None
        return _page(
            request,
            "release.html.j2",
            visitor,
            answer=answer,
            trail=trail,
            previous=previous,
            changes=_changes(previous, shown["release"]),
            **shown,
        )

    @pages.get("/releases/{pipeline}/{number}/stages")
    async def stages_part(
        request: Request, pipeline: str, number: int, svc: ServiceDep, visitor: VisitorDep
    ) -> Response:
        """The stages and tasks of the release page alone, for its live refresh."""
        shown = await _release_context(svc, visitor, pipeline, number)
        return _page(request, "stages.html.j2", visitor, **shown)

    @pages.get("/releases/{pipeline}/{number}/stages/{stage}/tasks/{task:path}")
    async def log_page(
        request: Request,
        pipeline: str,
        number: int,
        stage: str,
        task: str,
        svc: ServiceDep,
        visitor: VisitorDep,
    ) -> Response:
        """A task's log (NAME or JOB/NAME) in the stage's latest deployment: its last
        try's, whole; while it runs, what it has written so far and then as it writes."""
        status, run, stem = await _task_of(svc, visitor, pipeline, number, stage, task)
        running = run.status == TaskStatus.IN_PROGRESS
        text, cut = "", False
        tries = try_logs(_store(svc), stem)
        path = _store(svc).path(tries[-1].key) if tries and not running else None
        if path is not None:  # all of it, with the note of a log cut short
            lines, size = [], 0
            for line in read_log(path, timestamps=False, task_over=True):
                size += len(line) + 1
                if size > LOG_PAGE_LIMIT:
                    cut = True
                    break
                lines.append(line)
            text = "\n".join(lines)
        follow = f"/releases/{quote(pipeline, safe='')}/{number}/stages/{quote(stage, safe='')}"
        return _page(
            request,
            "log.html.j2",
            visitor,
            status=status,
            stage=stage,
            task=task,
            run=run,
            text=text,
            running=running,
            cut=cut,
            follow=f"{follow}/follow?task={quote(task, safe='')}",
        )

    @pages.get("/releases/{pipeline}/{number}/stages/{stage}/follow")
    async def follow_log(
        pipeline: str,
        number: int,
        stage: str,
        svc: ServiceDep,
        visitor: VisitorDep,
        task: Annotated[str, Query(min_length=1, max_length=400)],
    ) -> Response:
        """A running task's log as its agent writes it, until the task ends (what
        `GET /api/v1/.../follow` streams), for the log page's follow."""
        status, run, stem = await _task_of(svc, visitor, pipeline, number, stage, task)
        attempt = status.stage(stage).latest
        if run.status != TaskStatus.IN_PROGRESS or attempt is None:
            return PlainTextResponse("")
        stream = follow(await svc.client(), _store(svc), stem, attempt, run)
        return StreamingResponse(stream, media_type="text/plain; charset=utf-8")

    @pages.get("/pipelines/{pipeline}")
    async def pipeline_page(
        request: Request,
        pipeline: str,
        svc: ServiceDep,
        visitor: VisitorDep,
        old: str = "",
        new: str = "",
    ) -> Response:
        newest = await record.status_matrix(svc.db, pipeline, 1)
        if not await _may_see_board(svc, visitor.access, pipeline, newest.releases):
            await visitor.access.view(pipeline)  # the 403 that says why
        revisions = await record.revisions(svc.db, pipeline)
        if not revisions:
            raise Problem(404, "Not Found", f"pipeline {pipeline!r} not found")
        by_sha = {r.sha256: r for r in revisions}
        before = by_sha.get(old) or (revisions[-2] if len(revisions) > 1 else None)
        after = by_sha.get(new) or revisions[-1]
        diff = ""
        if before is not None and before is not after:
            old_text = await _definition_text(svc, pipeline, before)
            new_text = await _definition_text(svc, pipeline, after)
            diff = "".join(
                difflib.unified_diff(
                    old_text.splitlines(keepends=True),
                    new_text.splitlines(keepends=True),
                    fromfile=f"{before.sha256[:12]} ({before.author})",
                    tofile=f"{after.sha256[:12]} ({after.author})",
                )
            )
        definition = None
        if newest.releases:
            spec = await record.release_spec(svc.db, pipeline, newest.releases[0].number)
            definition = spec.pipeline if spec else None
        return _page(
            request,
            "pipeline.html.j2",
            visitor,
            name=pipeline,
            revisions=list(reversed(revisions)),
            before=before,
            after=after,
            diff=diff,
            definition=definition,
        )


async def _task_of(
    svc: Service, visitor: Visitor, pipeline: str, number: int, stage: str, task: str
) -> tuple[ReleaseStatus, TaskRun, str]:
    """The release, the task (NAME or JOB/NAME) of the stage's latest deployment, and
    the log store key its tries' logs start with; 404 naming what is missing."""
    status = await _release(svc, visitor.access, pipeline, number)
    try:
        view = status.stage(stage)
    except KeyError:
        raise Problem(
            404, "Not Found", f"release {status.pipeline}/{number} has no stage {stage!r}"
        ) from None
    latest = view.latest
    runs = [r for r in (latest.tasks if latest else []) if matches(r, task)]
    if latest is None or not runs:
        raise Problem(
            404, "Not Found", f"stage {stage!r} of {pipeline}/{number} has no task {task!r}"
        )
    return status, runs[0], key_stem(status, stage, latest, runs[0])


async def _definition_text(svc: Service, pipeline: str, revision: RecordedRevision) -> str:
    """A revision's definition as text: as it was written when the record has it, else
    the definition its first release was made from, as YAML (the same for the same
    pipeline, so two of them compare line by line)."""
    if revision.definition:
        return revision.definition
    if revision.first_release is None:
        return ""
    spec = await record.release_spec(svc.db, pipeline, revision.first_release)
    if spec is None:
        return ""
    shown = spec.pipeline.model_dump(mode="json", exclude_defaults=True)
    return yaml.safe_dump(shown, sort_keys=False, allow_unicode=True, width=100)


def _changes(before: ReleaseStatus | None, after: ReleaseStatus) -> list[dict[str, str]]:
    """What changed since the release before: each artifact whose version or commit is
    not the same (an artifact new in this release counts as changed)."""
    if before is None:
        return []
    old = {a.alias: a for a in before.artifacts}
    found = []
    for artifact in after.artifacts:
        was = old.get(artifact.alias)
        if was is None or (was.version, was.commit) != (artifact.version, artifact.commit):
            commits = ""
            if was and was.commit and artifact.commit and was.commit != artifact.commit:
                commits = f"{was.commit[:10]} → {artifact.commit[:10]}"
            found.append(
                {
                    "alias": artifact.alias,
                    "before": was.version if was else "(none)",
                    "after": artifact.version,
                    "commits": commits,
                }
            )
    return found


async def _may_see_board(
    svc: Service, can: Access, pipeline: str, newest: list[ReleaseStatus]
) -> bool:
    """A viewer of the pipeline sees its board; so does a person its newest release
    names as an approver (as the API lets them read that release)."""
    if await can.may_view(pipeline):
        return True
    if not newest:
        return False
    spec = await record.release_spec(svc.db, pipeline, newest[0].number)
    return spec is not None and is_approver_anywhere(can.principal, spec)


def _summary(status: StageStatus) -> str:
    if status in (StageStatus.WAITING_FOR_APPROVAL, StageStatus.WAITING_FOR_INTERVENTION):
        return "waiting"
    if status in (StageStatus.FAILED, StageStatus.REJECTED, StageStatus.TERMINATED):
        return "failed"
    if status.is_final or status == StageStatus.NOT_DEPLOYED:
        return "done"
    return "in progress"


async def _waiting_on(svc: Service, visitor: Visitor) -> list[Waiting]:
    who = visitor.principal
    return await record.releases_waiting_on(svc.db, who.user, who.groups)


def _row(wait: Waiting) -> str:
    """A waiting decision as one checkbox's value: `PIPELINE/NUMBER/STAGE/KIND/PHASE`."""
    return "/".join([wait.pipeline, str(wait.number), wait.stage, wait.kind, wait.phase or "-"])


async def _release_context(
    svc: Service, visitor: Visitor, pipeline: str, number: int
) -> dict[str, Any]:
    can = visitor.access
    spec = await _spec(svc, can, pipeline, number)
    status = await _release(svc, can, pipeline, number)
    stages = []
    for view in status.stages:
        may_release = False
        if status.state == "active":
            try:
                await can.release(pipeline, view.name)
                may_release = True
            except Problem:
                pass
        stages.append(_stage_context(visitor, spec, status, view, may_release))
    return {
        "release": status,
        "spec": spec,
        "stages": stages,
        "running": any(not s["view"].status.is_final for s in stages if s["view"].attempts)
        and status.state == "active",
        "workflow_id": release_workflow_id(pipeline, number),
    }


def _stage_context(
    visitor: Visitor, spec: Any, status: ReleaseStatus, view: StageView, may_release: bool
) -> dict[str, Any]:
    """One stage as the page shows it, with what this person may do to it now: the
    decisions the pipeline names them for, and (a releaser) deploy, redeploy, cancel."""
    latest = view.latest
    decider = is_decider(visitor.principal, spec, spec.pipeline.stage(view.name))
    offers: list[dict[str, str]] = []
    if status.state == "active" and latest is not None and decider:
        if view.status == StageStatus.WAITING_FOR_APPROVAL:
            pending = [a for a in latest.approvals if a.status == "pending"]
            phase = pending[-1].phase if pending else "pre"
            offers = [{"action": "approve", "phase": phase}, {"action": "reject", "phase": phase}]
        elif view.status == StageStatus.WAITING_FOR_INTERVENTION:
            offers = [{"action": "resume", "phase": ""}, {"action": "reject", "phase": ""}]
        elif view.status == StageStatus.DEFERRED:
            offers = [{"action": "deploy_now", "phase": "pre"}]
    if may_release:
        if view.status == StageStatus.NOT_DEPLOYED:
            offers.append({"action": "deploy", "phase": ""})
        elif view.status.is_final:
            offers.append({"action": "redeploy", "phase": ""})
        else:  # queued, running, scheduled, waiting: it can be stopped
            offers.append({"action": "cancel", "phase": ""})
    return {
        "view": view,
        "latest": latest,
        "offers": offers,
        "request_id": uuid.uuid4().hex,
        "decider": decider,
    }


# --- decisions from forms -------------------------------------------------------------


def _add_decisions(pages: APIRouter) -> None:
    @pages.post("/releases/{pipeline}/{number}/stages/{stage}/decide")
    async def decide(
        request: Request,
        pipeline: str,
        number: int,
        stage: str,
        svc: ServiceDep,
        visitor: VisitorDep,
    ) -> Response:
        ref = ReleaseRef(pipeline, number)
        form = await _checked_form(request, svc, visitor, ref, stage)
        # The page's id (a form sent twice is answered once); a new one if it is not one.
        request_id = _one(form, "request_id")
        if not REQUEST_ID.fullmatch(request_id):
            request_id = uuid.uuid4().hex
        await _send_decision(svc, visitor.access, ref, stage, form, request_id)
        back = local_path(_one(form, "back")) if _one(form, "back") else None
        if back == "/approvals":
            return RedirectResponse(f"/approvals?done={request_id}", status_code=303)
        target = f"/releases/{quote(pipeline, safe='')}/{number}?request={request_id}"
        return RedirectResponse(target + f"#stage-{quote(stage, safe='')}", status_code=303)

    @pages.post("/approvals/approve")
    async def approve_selected(request: Request, svc: ServiceDep, visitor: VisitorDep) -> Response:
        """Approve every selected row of the inbox, one decision each."""
        form = await _checked_form(request, svc, visitor, None, None)
        done = []
        for row in form.get("selected", []):
            parts = row.rsplit("/", 4)
            if len(parts) != 5 or not parts[1].isdigit() or parts[3] != "approval":
                continue
            pipeline, number, stage, _kind, phase = parts
            request_id = uuid.uuid4().hex
            fields = {"action": ["approve"], "phase": [phase], "comment": [_one(form, "comment")]}
            await _send_decision(
                svc, visitor.access, ReleaseRef(pipeline, int(number)), stage, fields, request_id
            )
            done.append(request_id)
        return RedirectResponse("/approvals?done=" + "+".join(done), status_code=303)


async def _send_decision(
    svc: Service,
    can: Access,
    ref: ReleaseRef,
    stage: str,
    form: dict[str, list[str]],
    request_id: str,
) -> None:
    """One decision, as POST /api/v1/.../stages/S/<action> makes it: its outcome is in
    the trail of requests under `request_id` (the page shows it from there)."""
    action = _one(form, "action")
    phase = _one(form, "phase") or "pre"
    comment = _one(form, "comment").strip()
    body = Action(request_id=request_id)
    send: Send
    try:
        if action in RELEASER_ACTIONS:
            await _act(
                svc,
                can,
                ref,
                stage,
                action,
                body,
                _releaser_check(svc, can, ref, stage),
                _releaser_send(can, stage, action),
            )
            return
        if action not in DECISIONS or phase not in ("pre", "post"):
            raise Problem(422, "Invalid request", f"no decision {action!r} ({phase})")
        if action == "reject" and not comment:
            raise Problem(422, "Invalid request", "a rejection needs a comment: say why")
        if len(comment) > COMMENT_LIMIT or not re.fullmatch(TEXT_PATTERN, comment):
            raise Problem(
                422,
                "Invalid request",
                f"the comment must be at most {COMMENT_LIMIT} characters, without NUL characters",
            )
        if action == "deploy_now":

            async def now(client: Client, where: ReleaseRef, rid: str) -> AuditEvent:
                who = can.principal
                return await actions.deploy_now(client, where, stage, who.user, rid, who.groups)

            send = now
        else:
            defer = _defer_until(form) if action == "approve" else None
            send = _decide(can, stage, action, phase, comment, defer)
        await _decision(svc, can, ref.pipeline, ref.number, stage, action, body, send)
    except Problem as problem:
        if await request_of(svc.db, request_id, can.principal.user) is not None:
            return  # kept in the trail of requests by _act (403, 409, failed): shown from there
        await record_request(
            svc.db,
            pipeline=ref.pipeline,
            number=ref.number,
            stage=stage,
            actor=can.principal.user,
            via=can.principal.via,
            action=action or "decision",
            request_id=request_id,
            outcome="refused",
            detail=problem.detail,
        )


def _releaser_check(
    svc: Service, can: Access, ref: ReleaseRef, stage: str
) -> Callable[[], Awaitable[None]]:
    async def check() -> None:  # as the API's deploy, redeploy and cancel check
        await _stage(svc, can, ref.pipeline, ref.number, stage)
        await can.release(ref.pipeline, stage)

    return check


def _releaser_send(can: Access, stage: str, action: str) -> Send:
    async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
        user = can.principal.user
        if action == "cancel":
            return await actions.cancel_stage(client, ref, stage, user, request_id)
        redeploy = action == "redeploy"
        return await actions.deploy_stage(
            client, ref, stage, user, redeploy=redeploy, request_id=request_id
        )

    return send


def _defer_until(form: dict[str, list[str]]) -> datetime | None:
    """`defer_until` of the form: a datetime-local value in the person's time zone,
    whose offset from UTC in minutes (as JavaScript's getTimezoneOffset gives it) the
    page sends beside it; without it, the time is UTC."""
    text = _one(form, "defer_until").strip()
    if not text:
        return None
    try:
        local = datetime.fromisoformat(text)
        offset = int(_one(form, "tz_offset") or "0")
    except ValueError:
        raise Problem(
            422, "Invalid request", f"defer until {text!r}: not a date and time"
        ) from None
    if local.tzinfo is not None:
        return local.astimezone(UTC)
    return (local + timedelta(minutes=offset)).replace(tzinfo=UTC)
