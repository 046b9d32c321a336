"""`fire_trigger`: one firing of a pipeline's trigger, and a release asked for at once.

A firing reads the pipeline's latest stored revision, looks at what the trigger
watches — the newest version in a drop folder, the heads of a git artifact's chosen
branches, or (a schedule) the versions every artifact would get now — and asks the
PipelineWorkflow what that trigger saw before. What changed becomes a candidate
release, pinned and with its commits, sent in one `fire_trigger` update; the
PipelineWorkflow decides (workflows/triggering.py). The first look of an artifact
trigger only notes what is there.

Idempotent: a retried activity finds what the trigger saw already updated, and each
candidate carries a request id made of the firing's id, so the PipelineWorkflow
answers a repeated update with the same releases.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.artifact_pinning import drop_versions, resolve_artifacts, version_key
from activities.artifact_sources import ArtifactError, is_remote_repository
from activities.git_changes import branch_heads
from activities.limits import check_release_request
from activities.pipeline_loader import InvalidPipeline
from activities.pipelines import NoStoredPipeline, stored_file, stored_pipeline
from activities.record import Database
from activities.record.stored_pipelines import StoredDefinition
from activities.release_changes import git_mirrors, release_changes
from workflows.names import pipeline_workflow_id
from workflows.pipeline import (
    Artifact,
    ArtifactTrigger,
    GitArtifact,
    LocalArtifact,
    Pipeline,
    ScheduleTrigger,
)
from workflows.pipeline_workflow import NewRelease, PipelineState, PipelineWorkflow
from workflows.release import ResolvedArtifact
from workflows.triggering import FireRequest, TriggerCandidate, TriggerFiring, TriggerOutcome

# A release asked for at once (`stageflow trigger`, the webhook) is made by the
# pipeline's trigger on that artifact when it has one, else by this name.
WEBHOOK = "webhook"


class TriggerProblem(ValueError):
    """A trigger that cannot fire as asked: no stored pipeline, no such trigger."""


class Triggers:
    """What a firing needs: Temporal (to ask the PipelineWorkflow), the record (the
    stored definition, the previous release's commits) and the data dir (git mirrors)."""

    def __init__(self, client: Client, db: Database, data_dir: Path, task_queue: str) -> None:
        self.client = client
        self.db = db
        self.data_dir = data_dir
        self.task_queue = task_queue

    @activity.defn(name="fire_trigger")
    async def fire_trigger(self, request: FireRequest) -> TriggerOutcome:
        """Release what is new to the trigger; nothing when nothing is."""
        try:
            pipeline, stored = await self._stored(request.pipeline)
            trigger = pipeline.trigger(request.trigger)
        except (TriggerProblem, KeyError) as err:
            # A trigger removed by an apply whose Schedule was not deleted yet.
            raise ApplicationError(str(err), type="TriggerGone", non_retryable=True) from None
        seen = await self._seen(pipeline.name, request.trigger)
        if isinstance(trigger, ScheduleTrigger):
            firing = await self._scheduled(pipeline, stored, trigger, seen, request.firing_id)
        else:
            firing = await self._watched(pipeline, stored, trigger, seen, request.firing_id)
        if firing is None:
            return TriggerOutcome(
                pipeline=pipeline.name, trigger=request.trigger, skipped=["nothing new"]
            )
        return await self._send(pipeline.name, firing, f"fire/{request.firing_id}")

    async def fire_now(
        self, pipeline_name: str, versions: dict[str, str], person: str, request_id: str
    ) -> TriggerOutcome:
        """A release of the latest stored revision with these versions, now, as the
        pipeline's trigger on the first of those artifacts (`stageflow trigger`)."""
        pipeline, stored = await self._stored(pipeline_name)
        watching = [
            t
            for t in pipeline.triggers
            if isinstance(t, ArtifactTrigger) and t.artifact in versions
        ]
        name = str(watching[0].name) if watching else WEBHOOK
        asked = ", ".join(f"{alias}={version}" for alias, version in versions.items())
        candidate = await self._candidate(
            pipeline,
            stored,
            person,  # a person asked: they are its creator (creator_can_approve holds)
            "",
            versions,
            f"asked for with trigger {name}: {asked or 'the default versions'}",
            request_id,
        )
        firing = TriggerFiring(trigger=name, observed={}, candidates=[candidate])
        return await self._send(pipeline.name, firing, f"fire/{request_id}")

    # --- looking ---------------------------------------------------------------------

    async def _scheduled(
        self,
        pipeline: Pipeline,
        stored: StoredDefinition,
        trigger: ScheduleTrigger,
        seen: dict[str, str] | None,
        firing_id: str,
    ) -> TriggerFiring | None:
        """Every artifact at its default version; with only_if_changed, only when that or
        the definition differs from what the trigger saw last."""
        name, cron = str(trigger.name), trigger.schedule.cron
        candidate = await self._candidate(
            pipeline, stored, f"trigger:{name}", "", {}, f"scheduled ({cron})", f"{firing_id}/"
        )
        if not trigger.schedule.only_if_changed:
            candidate.key = firing_id
        elif seen is not None and seen.get("") == candidate.key:
            return None
        return TriggerFiring(trigger=name, observed={"": candidate.key}, candidates=[candidate])

    async def _watched(
        self,
        pipeline: Pipeline,
        stored: StoredDefinition,
        trigger: ArtifactTrigger,
        seen: dict[str, str] | None,
        firing_id: str,
    ) -> TriggerFiring | None:
        """The artifact's versions now (label → version or commit), and a candidate for
        each that the trigger has not seen."""
        name = str(trigger.name)
        artifact = next(a for a in pipeline.artifacts if a.alias == trigger.artifact)
        observed = await asyncio.to_thread(_look, artifact, trigger, Path(stored_file(stored)))
        if seen is None:
            return TriggerFiring(trigger=name, observed=observed, baseline=True)
        changed = [label for label, value in observed.items() if seen.get(label) != value]
        if not changed:
            return None
        candidates = []
        for label in changed:
            version = label or observed[label]
            what = f"{artifact.alias} {version} is new" + (
                f" ({observed[label][:12]})" if label else ""
            )
            candidates.append(
                await self._candidate(
                    pipeline,
                    stored,
                    f"trigger:{name}",
                    label,
                    {artifact.alias: version},
                    what,
                    f"{firing_id}/{label}",
                )
            )
        return TriggerFiring(trigger=name, observed=observed, candidates=candidates)

    async def _candidate(
        self,
        pipeline: Pipeline,
        stored: StoredDefinition,
        created_by: str,
        label: str,
        versions: dict[str, str],
        description: str,
        request_id: str,
    ) -> TriggerCandidate:
        source = Path(stored_file(stored))
        pinned = await asyncio.to_thread(resolve_artifacts, pipeline.artifacts, source, versions)
        request = NewRelease(
            pipeline=pipeline,
            revision=stored.sha256,
            artifacts=pinned,
            description=description,
            created_by=created_by,
            request_id=request_id,
            changes=await release_changes(self.db, pipeline, pinned, git_mirrors(self.data_dir)),
        )
        check_release_request(request)
        return TriggerCandidate(
            label=label, key=release_key(stored.sha256, pinned), release=request
        )

    # --- the record and the PipelineWorkflow --------------------------------------------

    async def _stored(self, name: str) -> tuple[Pipeline, StoredDefinition]:
        try:
            return await stored_pipeline(self.db, name)
        except NoStoredPipeline as err:
            raise TriggerProblem(str(err)) from None
        except InvalidPipeline as err:
            problems = "; ".join(str(p) for p in err.problems)
            raise TriggerProblem(
                f"the stored pipeline {name} is not valid now: {problems}"
            ) from None

    async def _seen(self, pipeline: str, trigger: str) -> dict[str, str] | None:
        handle = self.client.get_workflow_handle(pipeline_workflow_id(pipeline))
        try:
            return await handle.query(PipelineWorkflow.trigger_seen, trigger)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # no release yet: no pipeline entity
                return None
            raise

    async def _send(self, pipeline: str, firing: TriggerFiring, update_id: str) -> TriggerOutcome:
        """The firing to the PipelineWorkflow; sent again (a retried activity), the same
        update id gets the first answer."""
        return await self.client.execute_update_with_start_workflow(
            PipelineWorkflow.fire_trigger,
            firing,
            id=update_id,
            start_workflow_operation=WithStartWorkflowOperation(
                PipelineWorkflow.run,
                PipelineState(name=pipeline),
                id=pipeline_workflow_id(pipeline),
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"pipeline {pipeline}: release numbers and revisions",
            ),
        )


def release_key(revision: str, pinned: list[ResolvedArtifact]) -> str:
    """The same definition with the same pinned versions is the same release."""
    versions = sorted((a.alias, a.version, a.commit or "", a.location or "") for a in pinned)
    return hashlib.sha256(json.dumps([revision, versions]).encode()).hexdigest()


def _look(artifact: Artifact, trigger: ArtifactTrigger, source: Path) -> dict[str, str]:
    """What a watched artifact has now: {"": newest version} for a drop folder, {branch:
    commit} for a git artifact's chosen branches ({ref: commit} without `branches`)."""
    base = source.resolve().parent
    if isinstance(artifact, LocalArtifact):
        drop = (base / artifact.path).resolve()
        if not drop.is_dir():
            raise ArtifactError(f"artifact {artifact.alias!r}: drop folder {drop} does not exist")
        versions = drop_versions(drop)
        return {"": max(versions, key=version_key)} if versions else {}
    assert isinstance(artifact, GitArtifact)
    if trigger.branches is None:
        (pinned,) = resolve_artifacts([artifact], source, {})
        return {artifact.ref: pinned.commit or ""}
    repository = (
        artifact.repository
        if is_remote_repository(artifact.repository)
        else str((base / artifact.repository).resolve())
    )
    return branch_heads(
        artifact.alias, repository, trigger.branches.include, trigger.branches.exclude
    )
