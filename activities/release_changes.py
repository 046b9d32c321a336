"""What a release brings, found when it is created: the commits of its git artifacts
since the pipeline's previous release, and the work items they name.

Runs where the release is created (the API, or a trigger's activity), after the
artifacts are pinned: `git log previous..pinned` per git artifact
(activities/git_changes.py, remote repositories through a mirror in the data dir).
The result goes into the release's snapshot, so the record, the approval mail and
`release show` read it without git.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from activities.artifact_sources import ArtifactError
from activities.git_changes import commits_between
from activities.record import Database, release_spec
from activities.record.work_items import latest_release_number
from workflows.changes import ArtifactChanges, ReleaseChanges, work_items_in
from workflows.pipeline import Pipeline
from workflows.release import ResolvedArtifact


def git_mirrors(data_dir: Path) -> Path:
    """Where the mirrors of remote git repositories are kept."""
    return data_dir / "git-mirrors"


async def release_changes(
    db: Database, pipeline: Pipeline, artifacts: list[ResolvedArtifact], cache_dir: Path
) -> ReleaseChanges | None:
    """The commits and work items of the git artifacts since the previous release (all of
    their history, up to a limit, for the first); None without git artifacts."""
    pinned = [a for a in artifacts if a.type == "git" and a.commit]
    if not pinned:
        return None
    number = await latest_release_number(db, pipeline.name)
    previous = await release_spec(db, pipeline.name, number) if number else None
    bases = {a.alias: a.commit for a in previous.artifacts if a.commit} if previous else {}
    found = await asyncio.to_thread(_read_commits, pinned, bases, cache_dir)
    # Oldest first: the work items in the order they were brought.
    messages = [
        commit.message or commit.subject
        for changes in found
        for commit in reversed(changes.commits)
    ]
    items = work_items_in(messages, pipeline.work_items.patterns)
    # The snapshot travels in every stage's and mail's input: subjects, not whole messages.
    for changes in found:
        for commit in changes.commits:
            commit.message = ""
    return ReleaseChanges(since_release=number or None, artifacts=found, work_items=items)


def _read_commits(
    pinned: list[ResolvedArtifact], bases: Mapping[str, str | None], cache_dir: Path
) -> list[ArtifactChanges]:
    found = []
    for artifact in pinned:
        assert artifact.commit is not None
        try:
            found.append(
                commits_between(
                    artifact.alias,
                    artifact.source,
                    bases.get(artifact.alias),
                    artifact.commit,
                    cache_dir,
                )
            )
        except ArtifactError:
            # The commit was pinned a moment ago; a log that fails now (a remote gone)
            # must not stop the release: it shows no commits for this artifact.
            found.append(ArtifactChanges(alias=artifact.alias, head=artifact.commit))
    return found
