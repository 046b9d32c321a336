"""The routes of /api/v1: what the CLI does, over HTTP.

Reads answer from the record; actions are sent to the workflows as the
authenticated person, and answer with the workflow's verdict: 200 and the
audit event when it was accepted, 409 with the event when the workflow refused
it. Each action takes an optional `request_id`: sent again with the same id
(a client that lost the answer), it is answered with the first verdict and
never done twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from temporalio.client import Client

from activities import record
from activities.pipeline_loader import InvalidPipeline, load_pipeline
from activities.pipelines import NoStoredPipeline, read_definition, stored_file, stored_pipeline
from activities.record import Waiting, record_request, request_answered, sender_of
from activities.record.stored_pipelines import AppliedRevision, stored_definition
from activities.record.views import RecordedRevision, StatusMatrix, TrailEvent
from activities.release_changes import git_mirrors, release_changes
from starter import deployment_control as control
from starter import releases as actions
from starter.api.access import Access, is_approver_anywhere
from starter.api.app import AccessDep, PrincipalDep, Service, ServiceDep
from starter.api.params import (
    TEXT_PATTERN,
    Name,
    NameQuery,
    PipelineName,
    ReleaseNumber,
    StageName,
    Text,
    WordQuery,
)
from starter.api.problems import ACTION_RESPONSES, Problem, forbidden, not_found
from starter.reading import termination, with_live_view
from starter.releases import ReleaseClosed, ReleaseNotFound, ReleaseRef, StageNotFound
from starter.triggers import TriggersNotSet, store_and_set
from workflows.audit import AuditEvent
from workflows.pipeline import Pipeline, Stage
from workflows.release import ReleaseSpec, ReleaseStatus

RequestId = Annotated[
    str | None,
    Field(
        None,
        min_length=8,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="the same id sent again is answered with the first verdict",
    ),
]


class Me(BaseModel):
    user: str
    groups: list[str]
    via: str
    is_admin: bool


class ReleaseView(ReleaseStatus):
    """A release as recorded, with what its running stages say now when they answer."""

    live: bool = False
    live_unavailable: str | None = None


class Page(BaseModel):
    releases: list[ReleaseStatus]
    page: int
    limit: int


class Verdict(BaseModel):
    """The workflow's answer to an action: its audit event."""

    event: AuditEvent


class Action(BaseModel):
    request_id: RequestId = None


class AbandonBody(Action):
    reason: Text = ""


class ApproveBody(Action):
    phase: Literal["pre", "post"] = "pre"
    comment: Text = ""
    defer_until: datetime | None = None


class RejectBody(Action):
    phase: Literal["pre", "post"] = "pre"
    comment: Annotated[Text, Field(min_length=1, description="why")]


class ResumeBody(Action):
    comment: Text = ""
    choice: Literal["retry", "skip", "fail"] | None = Field(
        None, description="after a failed task (the stage's on_failure): what to do with it"
    )


class RollbackBody(Action):
    to: int | None = Field(
        None, ge=1, description="the release to put back; default: the one before the current"
    )


class HoldBody(Action):
    reason: Annotated[Text, Field(min_length=1, description="why (recorded in the history)")]


class IgnoreGateBody(Action):
    check: Name
    phase: Literal["pre", "post"] = "pre"


class CreateBody(Action):
    file: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        pattern=TEXT_PATTERN,
        description="the pipeline YAML, a path on the server (stored first, when it changed)",
    )
    pipeline: Name | None = Field(None, description="or a stored pipeline: its latest revision")
    artifacts: dict[Name, Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f]*$")]] = {}
    variables: dict[Name, Annotated[str, Field(max_length=10_000, pattern=TEXT_PATTERN)]] = {}
    until: Name | None = None
    description: Text = ""


class Created(BaseModel):
    pipeline: str
    number: int
    name: str
    reference: str


class ValidateBody(BaseModel):
    file: str = Field(
        min_length=1, max_length=4096, pattern=TEXT_PATTERN, description="a path on the server"
    )


class Validated(BaseModel):
    valid: bool
    name: str | None = None
    revision: str | None = None
    stages: list[str] = []
    problems: list[str] = []


def add_routes(api: APIRouter) -> None:
    """Every route of the API, on `api` (mounted at /api/v1)."""

    @api.get("/me", tags=["people"], summary="who the credentials are")
    async def me(who: PrincipalDep) -> Me:
        return Me(user=who.user, groups=list(who.groups), via=who.via, is_admin=who.is_admin)

    # --- pipelines ---------------------------------------------------------------

    @api.post("/pipelines/validate", tags=["pipelines"], summary="check a pipeline file")
    async def validate(body: ValidateBody, _who: PrincipalDep) -> Validated:
        try:
            pipeline, revision = load_pipeline(server_file(body.file))
        except InvalidPipeline as err:
            return Validated(valid=False, problems=[str(p) for p in err.problems])
        return Validated(
            valid=True, name=pipeline.name, revision=revision, stages=pipeline.stage_names
        )

    @api.get(
        "/pipelines/{pipeline}/revisions", tags=["pipelines"], summary="its definition's history"
    )
    async def revisions(
        pipeline: PipelineName, svc: ServiceDep, can: AccessDep
    ) -> list[RecordedRevision]:
        await can.view(pipeline)
        return await record.revisions(svc.db, pipeline)

    @api.get(
        "/pipelines/{pipeline}/status",
        tags=["pipelines"],
        summary="what is deployed on each stage, and the newest releases",
    )
    async def status(
        pipeline: PipelineName,
        svc: ServiceDep,
        can: AccessDep,
        releases: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> StatusMatrix:
        await can.view(pipeline)
        return await record.status_matrix(svc.db, pipeline, releases)

    # --- releases ----------------------------------------------------------------

    @api.get("/releases", tags=["releases"], summary="releases, newest first, paged")
    async def list_releases(
        svc: ServiceDep,
        can: AccessDep,
        pipeline: NameQuery = None,
        status: WordQuery = None,
        stage_status: WordQuery = None,
        created_by: NameQuery = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    ) -> Page:
        if pipeline is not None:
            await can.view(pipeline)
        found = await record.releases(
            svc.db,
            pipeline=pipeline,
            status=status,
            stage_status=stage_status,
            created_by=created_by,
            limit=limit,
            offset=(page - 1) * limit,
        )
        shown = [r for r in found if await _may_see(can, svc, r)]
        return Page(releases=shown, page=page, limit=limit)

    @api.post("/releases", tags=["releases"], summary="create a release of a pipeline")
    async def create(body: CreateBody, svc: ServiceDep, can: AccessDep) -> Created:
        pipeline, revision, base = await _release_source(body, svc, can)
        try:
            created = await actions.create_release_of(
                await svc.client(),
                pipeline,
                revision,
                base,
                user=can.principal.user,
                artifact_versions=body.artifacts,
                variables=body.variables,
                until=body.until,
                description=body.description,
                task_queue=svc.settings.task_queue,
                changes_of=lambda pinned: release_changes(
                    svc.db, pipeline, pinned, git_mirrors(svc.settings.data_dir)
                ),
                request_id=body.request_id,
            )
        except (StageNotFound, ValueError) as err:
            raise Problem(422, "Invalid release", str(err)) from None
        return Created(
            pipeline=pipeline.name,
            number=created.number,
            name=created.name,
            reference=f"{pipeline.name}/{created.number}",
        )

    @api.get("/releases/{pipeline}/{number}", tags=["releases"], summary="one release")
    async def show(
        pipeline: PipelineName, number: ReleaseNumber, svc: ServiceDep, can: AccessDep
    ) -> ReleaseView:
        await _spec(svc, can, pipeline, number)
        status = await record.release(svc.db, pipeline, number)
        if status is None:
            raise not_found(f"release {pipeline}/{number} not found")
        unavailable = await with_live_view(svc.settings, status, svc.connected())
        return ReleaseView(
            **status.model_dump(), live=unavailable is None, live_unavailable=unavailable
        )

    @api.get("/releases/{pipeline}/{number}/history", tags=["releases"], summary="its audit trail")
    async def history(
        pipeline: PipelineName, number: ReleaseNumber, svc: ServiceDep, can: AccessDep
    ) -> list[TrailEvent]:
        await _spec(svc, can, pipeline, number)
        events = await record.trail(svc.db, pipeline, number) or []
        # A release whose trail has no end may have been terminated in Temporal, which
        # no workflow code could record: that, from Temporal, when it answers quickly.
        ended = any(e.action in ("abandon", "close") and e.outcome == "accepted" for e in events)
        if not ended:
            ref = ReleaseRef(pipeline, number)
            terminated = await termination(svc.settings, ref, svc.connected())
            if terminated is not None:
                events.append(TrailEvent(**terminated.model_dump()))
        return events

    @api.get("/approvals", tags=["approvals"], summary="everything waiting on a person")
    async def approvals(svc: ServiceDep, can: AccessDep, mine: bool = False) -> list[Waiting]:
        who = can.principal
        waiting = await record.releases_waiting_on(
            svc.db, who.user if mine else None, who.groups if mine else ()
        )
        if mine:
            return waiting
        return [w for w in waiting if await can.may_view(w.pipeline)]

    # --- actions -----------------------------------------------------------------

    @api.post("/releases/{pipeline}/{number}/abandon", tags=["actions"], responses=ACTION_RESPONSES)
    async def abandon(
        pipeline: PipelineName,
        number: ReleaseNumber,
        body: AbandonBody,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        async def check() -> None:
            await _spec(svc, can, pipeline, number)
            await can.release(pipeline)

        async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
            return await actions.abandon_release(
                client, ref, can.principal.user, body.reason, request_id
            )

        return await _act(
            svc, can, ReleaseRef(pipeline, number), None, "abandon", body, check, send
        )

    for name, redeploy in (("deploy", False), ("redeploy", True)):
        _add_deploy(api, name, redeploy)

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/cancel",
        tags=["actions"],
        responses=ACTION_RESPONSES,
    )
    async def cancel(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: Action,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        async def check() -> None:
            await _stage(svc, can, pipeline, number, stage)
            await can.release(pipeline, stage)

        async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
            return await actions.cancel_stage(client, ref, stage, can.principal.user, request_id)

        return await _act(
            svc, can, ReleaseRef(pipeline, number), stage, "cancel", body, check, send
        )

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/approve",
        tags=["decisions"],
        responses=ACTION_RESPONSES,
    )
    async def approve(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: ApproveBody,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        send = _decide(can, stage, "approve", body.phase, body.comment, body.defer_until)
        return await _decision(svc, can, pipeline, number, stage, "approve", body, send)

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/reject",
        tags=["decisions"],
        responses=ACTION_RESPONSES,
    )
    async def reject(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: RejectBody,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        send = _decide(can, stage, "reject", body.phase, body.comment)
        return await _decision(svc, can, pipeline, number, stage, "reject", body, send)

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/resume",
        tags=["decisions"],
        responses=ACTION_RESPONSES,
    )
    async def resume(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: ResumeBody,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        send = _decide(can, stage, "resume", "pre", body.comment, choice=body.choice)
        return await _decision(svc, can, pipeline, number, stage, "resume", body, send)

    @api.post(
        "/pipelines/{pipeline}/stages/{stage}/rollback",
        tags=["actions"],
        responses=ACTION_RESPONSES,
    )
    async def rollback(
        pipeline: PipelineName,
        stage: StageName,
        body: RollbackBody,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        """Deploy again the release that was on the stage before the current one (or
        release `to`, which must have succeeded there): 409 with the reason when none."""
        await can.release(pipeline, stage)
        client = await svc.client()
        try:
            current, target = await control.plan_rollback(client, pipeline, stage, body.to)
        except control.PipelineNotFound as err:
            raise not_found(str(err)) from None
        except control.NoRollback as err:
            raise Problem(409, "Refused", str(err)) from None

        async def check() -> None:
            await _stage(svc, can, pipeline, target.number, stage)

        async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
            return await control.rollback_stage(
                client, pipeline, stage, can.principal.user, target.number, request_id
            )

        ref = ReleaseRef(pipeline, target.number)
        return await _act(svc, can, ref, stage, "rollback", body, check, send)

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/hold",
        tags=["actions"],
        responses=ACTION_RESPONSES,
    )
    async def hold(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: HoldBody,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        """Keep a release from being deployed to a stage and the stages after it."""
        return await _hold(svc, can, ReleaseRef(pipeline, number), stage, body, body.reason)

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/unhold",
        tags=["actions"],
        responses=ACTION_RESPONSES,
    )
    async def unhold(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: Action,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        """Let a held release go again: the stages the hold kept back start."""
        return await _hold(svc, can, ReleaseRef(pipeline, number), stage, body, None)

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/deploy-now",
        tags=["decisions"],
        responses=ACTION_RESPONSES,
    )
    async def deploy_now(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: Action,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
            return await actions.deploy_now(
                client, ref, stage, can.principal.user, request_id, can.principal.groups
            )

        return await _decision(svc, can, pipeline, number, stage, "deploy_now", body, send)

    @api.post(
        "/releases/{pipeline}/{number}/stages/{stage}/ignore-gate",
        tags=["decisions"],
        responses=ACTION_RESPONSES,
    )
    async def ignore_gate(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: IgnoreGateBody,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
            return await actions.ignore_gate(
                client,
                ref,
                stage,
                can.principal.user,
                body.check,
                body.phase,
                request_id,
                can.principal.groups,
            )

        return await _decision(svc, can, pipeline, number, stage, "ignore_gate", body, send)


def _add_deploy(api: APIRouter, name: str, redeploy: bool) -> None:
    @api.post(
        f"/releases/{{pipeline}}/{{number}}/stages/{{stage}}/{name}",
        tags=["actions"],
        responses=ACTION_RESPONSES,
        name=name,
        summary=f"{name} a stage of a release",
    )
    async def deploy(
        pipeline: PipelineName,
        number: ReleaseNumber,
        stage: StageName,
        body: Action,
        svc: ServiceDep,
        can: AccessDep,
    ) -> Verdict:
        async def check() -> None:
            await _stage(svc, can, pipeline, number, stage)
            await can.release(pipeline, stage)

        async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
            return await actions.deploy_stage(
                client, ref, stage, can.principal.user, redeploy=redeploy, request_id=request_id
            )

        return await _act(svc, can, ReleaseRef(pipeline, number), stage, name, body, check, send)


Send = Callable[[Client, ReleaseRef, str], Awaitable[AuditEvent]]


async def _hold(
    svc: Service, can: Access, ref: ReleaseRef, stage: str, body: Action, reason: str | None
) -> Verdict:
    """A hold (with its reason), or lifting one (reason None)."""

    async def check() -> None:
        await _stage(svc, can, ref.pipeline, ref.number, stage)
        await can.release(ref.pipeline, stage)

    async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
        return await control.hold_stage(
            client, ref, stage, can.principal.user, reason or "", request_id, lift=reason is None
        )

    action = "unhold" if reason is None else "hold"
    return await _act(svc, can, ref, stage, action, body, check, send)


def _decide(
    can: Access,
    stage: str,
    action: str,
    phase: str,
    comment: str,
    defer_until: datetime | None = None,
    choice: str | None = None,
) -> Send:
    """Sends approve, reject or resume on `stage` as the authenticated person."""

    async def send(client: Client, ref: ReleaseRef, request_id: str) -> AuditEvent:
        return await actions.decide(
            client,
            ref,
            stage,
            can.principal.user,
            action,
            phase=phase,
            comment=comment,
            defer_until=defer_until,
            request_id=request_id,
            groups=can.principal.groups,
            choice=choice,
        )

    return send


async def _decision(
    svc: Service,
    can: Access,
    pipeline: str,
    number: int,
    stage: str,
    action: str,
    body: Action,
    send: Send,
) -> Verdict:
    async def check() -> None:
        spec, found = await _stage(svc, can, pipeline, number, stage)
        can.decide(spec, found)

    return await _act(svc, can, ReleaseRef(pipeline, number), stage, action, body, check, send)


async def _act(
    svc: Service,
    can: Access,
    ref: ReleaseRef,
    stage: str | None,
    action: str,
    body: Action,
    check: Callable[[], Awaitable[None]],
    send: Send,
) -> Verdict:
    """One person's action: checked, kept in the API's trail (activities/record/requests.py)
    with how they signed in, sent to the workflow, and answered with its verdict."""
    who = can.principal
    kept: dict[str, Any] = {
        "pipeline": ref.pipeline,
        "number": ref.number,
        "stage": stage,
        "actor": who.user,
        "via": who.via,
        "action": action,
    }
    try:
        await check()
        await _own_request_id(svc, who.user, body.request_id)
    except Problem as problem:
        if problem.status in (403, 409):
            # Kept without the id of a request that is not theirs: an id names one request.
            await record_request(
                svc.db,
                **kept,
                request_id=body.request_id if problem.status == 403 else None,
                outcome="forbidden",
                detail=problem.detail,
            )
        raise
    request_id = body.request_id or uuid.uuid4().hex
    row = await record_request(svc.db, **kept, request_id=request_id, outcome="sent")
    try:
        verdict = await _verdict(send(await svc.client(), ref, request_id))
    except Problem as problem:
        outcome = "refused" if problem.status == 409 else "failed"
        await request_answered(svc.db, row, outcome, problem.detail)
        raise
    await request_answered(svc.db, row, "accepted", verdict.event.detail)
    return verdict


# --- helpers -------------------------------------------------------------------------


async def _release_source(
    body: CreateBody, svc: Service, can: Access
) -> tuple[Pipeline, str, Path]:
    """What a release is made of: the pipeline, its sha256 and the file its relative
    paths start from. A file is stored first when it differs from the pipeline's latest
    revision; changing a stored pipeline takes an admin, its first revision a releaser."""
    if (body.file is None) == (body.pipeline is None):
        raise Problem(422, "Invalid request", "body: give either file or pipeline")
    if body.pipeline is not None:
        await can.release(body.pipeline)
        try:
            pipeline, stored = await stored_pipeline(svc.db, body.pipeline)
        except NoStoredPipeline as err:
            raise not_found(str(err)) from None
        except InvalidPipeline as err:
            raise Problem(
                422, "Invalid pipeline", "; ".join(str(p) for p in err.problems)
            ) from None
        return pipeline, stored.sha256, Path(stored_file(stored))
    assert body.file is not None
    path = server_file(body.file)
    definition = read_file(path)
    pipeline, revision, _ = definition
    await can.release(pipeline)
    latest = await stored_definition(svc.db, pipeline.name)
    if latest is None or latest.sha256 != revision:
        if latest is not None and "admin" not in await can.roles(pipeline.name):
            raise forbidden(
                f"{path} differs from revision {latest.revision} of pipeline"
                f" {pipeline.name!r}, and only its admins change it: release the stored one"
                f" (`stageflow release create {pipeline.name}`) or ask an admin to"
                " `stageflow pipeline apply` the file"
            )
        await store(svc, definition, path, can.principal.user)
    return pipeline, revision, path


async def store(
    svc: Service, definition: tuple[Pipeline, str, str], path: Path, author: str
) -> AppliedRevision:
    """Store what was read from `path` as a revision and set its triggers (a 503 when
    Temporal did not take them: the revision is stored, applying again sets them)."""
    try:
        return await store_and_set(
            svc.db, await svc.client(), definition, path, author, svc.settings.task_queue
        )
    except TriggersNotSet as err:
        raise Problem(503, "Triggers not set", str(err)) from None


def read_file(path: Path) -> tuple[Pipeline, str, str]:
    """A pipeline file read once, validated: the pipeline, its sha256, its text."""
    try:
        return read_definition(path)
    except InvalidPipeline as err:
        raise Problem(422, "Invalid pipeline", "; ".join(str(p) for p in err.problems)) from None


def server_file(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute():
        raise Problem(422, "Invalid request", f"body.file: {text!r} must be an absolute path")
    if not path.is_file():
        raise Problem(422, "Invalid request", f"body.file: {text}: no such file on the server")
    return path


async def _may_see(can: Access, svc: Service, status: ReleaseStatus) -> bool:
    if await can.may_view(status.pipeline):
        return True
    spec = await record.release_spec(svc.db, status.pipeline, status.number)
    return spec is not None and is_approver_anywhere(can.principal, spec)


async def _spec(svc: Service, can: Access, pipeline: str, number: int) -> ReleaseSpec:
    """The release's snapshot, once the person may view it (a 404 says nothing to someone
    who may not see the pipeline at all: they get the 403 first)."""
    spec = await record.release_spec(svc.db, pipeline, number)
    if spec is None:
        await can.view(pipeline)
        raise not_found(f"release {pipeline}/{number} not found")
    await can.view(pipeline, spec)
    return spec


async def _stage(
    svc: Service, can: Access, pipeline: str, number: int, stage: str
) -> tuple[ReleaseSpec, Stage]:
    spec = await _spec(svc, can, pipeline, number)
    try:
        return spec, spec.pipeline.stage(stage)
    except KeyError:
        names = ", ".join(spec.pipeline.stage_names)
        raise not_found(
            f"release {pipeline}/{number} has no stage {stage!r} (stages: {names})"
        ) from None


async def _own_request_id(svc: Service, user: str, request_id: str | None) -> None:
    """A request id names one person's request: sent again by its sender it gets the first
    answer; sent by anyone else it is refused, or they would be answered with (and the
    trail would credit them with) another person's decision."""
    if request_id is None:
        return
    sender = await sender_of(svc.db, request_id)
    if sender is not None and sender != user:
        raise Problem(
            409,
            "Request id in use",
            f"request id {request_id!r} is another person's request: send a new one",
        )


async def _verdict(sent: Any) -> Verdict:
    """The workflow's answer: 200 when it accepted, 409 with its reason when it refused."""
    try:
        event: AuditEvent = await sent
    except (ReleaseNotFound, StageNotFound) as err:
        raise not_found(str(err)) from None
    except ReleaseClosed as err:
        raise Problem(409, "Release closed", str(err)) from None
    if event.outcome != "accepted":
        raise Problem(
            409, "Refused", event.detail or event.outcome, refused=event.model_dump(mode="json")
        )
    return Verdict(event=event)
