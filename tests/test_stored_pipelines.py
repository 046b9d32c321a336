"""Stored pipelines through the CLI and the API: `pipeline apply` keeps each changed
definition as a numbered revision with its author, `history`, `show` and `diff` read
them back, `release create P` releases the latest, and a release made before an apply
keeps its own snapshot. Changing a stored pipeline takes one of its admins."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from starter.releases import ReleaseRef
from tests.conftest import Stack
from workflows.release import StageStatus

FIRST = """
    name: stored-{suffix}
    description: the first cut
    stages:
      - name: dev
        pool: POOL
        tasks:
          - {{name: deploy, script: echo dev}}
"""
SECOND = """
    name: stored-{suffix}
    description: with qa
    stages:
      - name: dev
        pool: POOL
        tasks:
          - {{name: deploy, script: echo dev}}
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks:
          - {{name: deploy, script: echo qa}}
"""


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def release_of(stack: Stack, output: str) -> ReleaseRef:
    created = json.loads(output)
    return ReleaseRef(created["pipeline"], created["number"])


@pytest.mark.e2e
async def test_revisions_keep_who_applied_them_and_releases_keep_their_own_snapshot(
    stack: Stack,
) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    pipeline = f"stored-{stack.suffix}"
    path = stack.write_pipeline(FIRST.format(suffix=stack.suffix))

    applied = json.loads(ok(stack.cli("--json", "pipeline", "apply", str(path), user="alice")))
    assert (applied["revision"], applied["author"], applied["changed"]) == (1, "alice", True)
    again = ok(stack.cli("pipeline", "apply", str(path), user="bob"))
    assert again == f"{pipeline} unchanged: revision 1 by alice is the same definition\n"

    # Release 1, of revision 1; then bob changes the pipeline: revision 2.
    first = release_of(stack, ok(stack.cli("--json", "release", "create", pipeline, "--wait")))
    assert first.number == 1
    stack.write_pipeline(SECOND.format(suffix=stack.suffix))
    assert ok(stack.cli("pipeline", "apply", str(path), user="bob")).startswith(
        f"applied {pipeline} revision 2"
    )

    history = json.loads(ok(stack.cli("--json", "pipeline", "history", pipeline)))
    assert [(r["revision"], r["author"], r["source"]) for r in history] == [
        (1, "alice", str(path)),
        (2, "bob", str(path)),
    ]
    table = ok(stack.cli("pipeline", "history", pipeline))
    assert "alice" in table and "bob" in table
    diff = ok(stack.cli("pipeline", "diff", pipeline, "1", "2"))
    assert f"--- {pipeline} revision 1\n+++ {pipeline} revision 2\n" in diff
    assert "-description: the first cut\n+description: with qa\n" in diff
    assert "+  - name: qa\n" in diff
    assert ok(stack.cli("pipeline", "diff", pipeline, "1")) == diff  # R2: the latest
    shown = ok(stack.cli("pipeline", "show", pipeline, "--revision", "1"))
    assert "description: the first cut" in shown and "name: qa" not in shown
    assert "revision 1, applied by alice" in shown
    listed = json.loads(ok(stack.cli("--json", "pipeline", "list")))
    (mine,) = [p for p in listed if p["name"] == pipeline]
    assert (mine["latest"]["revision"], mine["latest"]["author"]) == (2, "bob")

    # By name: the latest revision (two stages); release 1 keeps its one stage.
    second = release_of(stack, ok(stack.cli("--json", "release", "create", pipeline, "--wait")))
    assert second.number == 2
    newer = await stack.wait_settled(second)
    assert [s.name for s in newer.stages] == ["dev", "qa"]
    assert newer.stage("qa").status == StageStatus.SUCCEEDED
    older = json.loads(ok(stack.cli("--json", "release", "show", str(first))))
    assert [s["name"] for s in older["stages"]] == ["dev"]
    assert older["description"] == "" and older["status"] == "succeeded"


@pytest.mark.e2e
async def test_only_a_pipelines_admin_changes_it_and_a_missing_one_is_named(
    stack: Stack, tmp_path: Path
) -> None:
    await stack.start_worker()
    await stack.start_agent("a1")
    pipeline = f"stored-{stack.suffix}"
    path = stack.write_pipeline(FIRST.format(suffix=stack.suffix))
    stack.token("rita", admin=False)
    ok(stack.cli("access", "grant", "rita", "releaser", "--pipeline", pipeline))

    # A releaser's first release of a new pipeline stores it; a change is an admin's.
    ok(stack.cli("--json", "release", "create", str(path), user="rita"))
    assert json.loads(ok(stack.cli("--json", "pipeline", "history", pipeline)))[0]["author"] == (
        "rita"
    )
    stack.write_pipeline(SECOND.format(suffix=stack.suffix))
    refused = stack.cli("pipeline", "apply", str(path), user="rita")
    assert refused.returncode == 2
    assert refused.stderr == f"error: rita is not an admin of pipeline {pipeline!r}\n"
    changed = stack.cli("release", "create", str(path), user="rita")
    assert changed.returncode == 2
    assert f"differs from revision 1 of pipeline {pipeline!r}" in changed.stderr
    assert f"`stageflow release create {pipeline}`" in changed.stderr
    # The stored one she may release; nothing was stored by the refusals.
    ok(stack.cli("release", "create", pipeline, user="rita"))
    assert len(json.loads(ok(stack.cli("--json", "pipeline", "history", pipeline)))) == 1

    missing = stack.cli("release", "create", "no-such-pipeline")
    assert missing.returncode == 2
    assert "no stored pipeline 'no-such-pipeline'" in missing.stderr
    assert "stageflow pipeline apply FILE" in missing.stderr
    gone = stack.cli("pipeline", "show", pipeline, "--revision", "7")
    assert gone.returncode == 2 and f"no stored revision 7 of pipeline {pipeline!r}" in (
        gone.stderr
    )
    bad = tmp_path / "bad.yml"
    bad.write_text("name: bad\nstages: []\n")
    invalid = stack.cli("pipeline", "apply", str(bad))
    assert invalid.returncode == 2 and "stages" in invalid.stderr
    assert "bad" not in [p["name"] for p in json.loads(ok(stack.cli("--json", "pipeline", "list")))]
