"""What a release brings: the commits of its git artifacts and the work items they name.

Pure models and rules, no I/O: `activities/git_changes.py` reads the commits from
git; the release snapshot carries them (`ReleaseSpec.changes`); the record keeps
them and answers "which releases contain work item ABC-12" and "on which stages is
it deployed" (`stageflow where`).

A release's changes are the commits between the previous release's pinned commit
of each git artifact and its own: what it brings that the release before did not.
What a release *contains* is what it and every earlier release of the pipeline
brought (release numbers are the order releases follow one another onto a stage),
so a stage holds work item X when its current release's number is at least that of
the first release that brought X.
"""

from __future__ import annotations

import re

from pydantic import Field

from workflows.pipeline import Model

# At most this many commits per artifact per release: a first release of a long
# history would otherwise carry every commit ever made.
MAX_COMMITS = 200


class Commit(Model):
    """One commit a release brings: enough to list it and to find its work items."""

    sha: str
    subject: str
    author: str
    message: str = Field("", description="the full message, which names the work items")


class ArtifactChanges(Model):
    """The commits of one git artifact between two pinned commits."""

    alias: str
    base: str | None = Field(None, description="the previous release's commit; None: first")
    head: str
    commits: list[Commit] = []
    truncated: bool = Field(False, description="more than MAX_COMMITS: the oldest left out")


class ReleaseChanges(Model):
    """What a release brings over the release before it."""

    since_release: int | None = None
    artifacts: list[ArtifactChanges] = []
    work_items: list[str] = []

    @property
    def commits(self) -> list[Commit]:
        return [commit for changes in self.artifacts for commit in changes.commits]


def work_items_in(messages: list[str], patterns: list[str]) -> list[str]:
    """The work items the messages name, each once, in the order first named (message
    by message, and within one by where it stands)."""
    compiled = [re.compile(pattern) for pattern in patterns]
    found: dict[str, None] = {}
    for message in messages:
        named = sorted(
            (match.start(), match.group(1) if pattern.groups else match.group(0))
            for pattern in compiled
            for match in pattern.finditer(message)
        )
        for _, item in named:
            found[item] = None
    return list(found)
