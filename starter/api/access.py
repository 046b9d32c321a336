"""What an authenticated person may do on a pipeline and its stages.

Roles are granted per pipeline (or every pipeline, `*`) and optionally per stage
(activities/record/identity.py): `viewer` reads, `releaser` creates releases and
deploys, redeploys and cancels stages, `admin` also grants roles. A stage with
`releaser` grants of its own is *protected*: only those grants (and admins)
deploy it, not the pipeline's releasers.

Approvers are not roles: the pipeline names them. A person it names as an
approver of any stage (directly, through one of its `groups:`, or through an
identity-provider group it names, `group:oidc:NAME`) may view the pipeline and send
decisions on the stages they approve; whether a decision counts is the workflow's
rule (workflows/who_may.py), always for the authenticated user and the groups their
sign-in carried.
"""

from __future__ import annotations

from activities.record import Database
from activities.record.identity import list_grants, roles_of
from starter.api.auth import Principal
from starter.api.problems import forbidden
from workflows.pipeline import Pipeline, Stage
from workflows.release import ReleaseSpec
from workflows.who_may import Deciders


def _entries_of(stage: Stage) -> list[str]:
    """Every approver entry the stage names: its approvals' and its interventions'."""
    return [entry for entries in stage.approver_lists() for entry in entries]


def is_decider(principal: Principal, spec: ReleaseSpec, stage: Stage) -> bool:
    """Whether the pipeline names this person for a decision on `stage` of this release,
    by its rule (its approvers, by name, group, or identity-provider group; where it
    names none, the release's creator)."""
    deciders = Deciders(pipeline=spec.pipeline, stage=stage, creator=spec.created_by)
    return any(
        deciders.allows(named, principal.user, principal.groups)
        for named in (_entries_of(stage), [])
    )


def is_approver_anywhere(principal: Principal, spec: ReleaseSpec) -> bool:
    return any(is_decider(principal, spec, stage) for stage in spec.pipeline.stages)


class Access:
    """The checks of one request: each raises a 403 Problem that says why."""

    def __init__(self, db: Database, principal: Principal) -> None:
        self.db = db
        self.principal = principal

    async def roles(self, pipeline: str, stage: str | None = None) -> set[str]:
        if self.principal.is_admin:
            return {"viewer", "releaser", "admin"}
        return await roles_of(self.db, self.principal.user, self.principal.groups, pipeline, stage)

    async def view(self, pipeline: str, spec: ReleaseSpec | None = None) -> None:
        """Read a pipeline's releases: a viewer, or an approver the release names."""
        if "viewer" in await self.roles(pipeline):
            return
        if spec is not None and is_approver_anywhere(self.principal, spec):
            return
        raise forbidden(f"{self.principal.user} may not view pipeline {pipeline!r}")

    async def may_view(self, pipeline: str) -> bool:
        return "viewer" in await self.roles(pipeline)

    async def release(self, pipeline: Pipeline | str, stage: str | None = None) -> None:
        """Create a release (stage None), or deploy, redeploy or cancel `stage`."""
        name = pipeline if isinstance(pipeline, str) else pipeline.name
        if stage is None:
            if "releaser" in await self.roles(name):
                return
            raise forbidden(f"{self.principal.user} is not a releaser of pipeline {name!r}")
        if "admin" in await self.roles(name):
            return
        protected = [
            g
            for g in await list_grants(self.db, name)
            if g.stage == stage and g.role in ("releaser", "admin")
        ]
        on_stage = await roles_of(self.db, self.principal.user, self.principal.groups, name, stage)
        if protected:
            subjects = {f"user:{self.principal.user}"} | {
                f"group:{g}" for g in self.principal.groups
            }
            if any(g.subject in subjects for g in protected):
                return
            raise forbidden(
                f"stage {stage!r} of {name!r} is protected: only its own releasers deploy it"
            )
        if "releaser" in on_stage:
            return
        raise forbidden(f"{self.principal.user} is not a releaser of {name!r} stage {stage!r}")

    async def administer(self, pipeline: str) -> None:
        if "admin" in await self.roles(pipeline):
            return
        raise forbidden(f"{self.principal.user} is not an admin of pipeline {pipeline!r}")

    def decide(self, spec: ReleaseSpec, stage: Stage) -> None:
        """Send a decision on `stage`: a person the pipeline names for it. Whether the
        decision counts (the policy, the turn, the creator) the workflow says."""
        if is_decider(self.principal, spec, stage):
            return
        raise forbidden(
            f"{self.principal.user} is not an approver of stage {stage.name!r} "
            f"of {spec.pipeline.name!r}"
        )
