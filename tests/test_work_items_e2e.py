"""Commits and work items end to end, with a real git repository made here: a release
brings the commits since the previous release and the work items they name;
`release show` lists them per stage since the release there now, `where ITEM` names
the stages whose current release contains it (and stops after a rollback past it),
`release diff` compares two releases, and the release carries StageflowWorkItems."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from starter.releases import ReleaseRef
from tests.conftest import Stack, wait_for
from tests.test_git_changes import commit, git
from workflows.release import StageStatus

PIPELINE = """
    name: items-{suffix}
    artifacts:
      - {{alias: app, type: git, repository: repo, ref: main}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - {{name: deploy, script: 'test -d "$STAGEFLOW_ARTIFACTS/app"'}}
      - name: prod
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks:
          - {{name: deploy, script: echo prod}}
"""


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def stages_holding(stack: Stack, item: str) -> list[tuple[str, str]]:
    found = json.loads(ok(stack.cli("--json", "where", item)))
    return [(s["stage"], s["deployed"]["release"]) for p in found for s in p["stages"]]


@pytest.mark.e2e
async def test_show_where_and_diff_follow_the_commits_a_release_brings(stack: Stack) -> None:
    repo = stack.root / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "index.html").write_text("<h1>hello</h1>\n")
    git(repo, "add", "index.html")
    first_sha = commit(repo, "the first page")
    await stack.start_worker()
    await stack.start_agent("a1")
    path = stack.write_pipeline(PIPELINE.format(suffix=stack.suffix))
    pipeline = f"items-{stack.suffix}"
    ok(stack.cli("release", "create", str(path), "--wait"))

    commit(repo, "ABC-12: the login page", author="Grace Hopper")
    second_sha = commit(repo, "Fixes #7: a typo\n\nAlso touches ABC-12 again.")
    ok(stack.cli("release", "create", pipeline, "--until", "dev", "--wait"))
    second = ReleaseRef(pipeline, 2)

    shown = json.loads(ok(stack.cli("--json", "release", "show", str(second))))
    own = shown["changes"]["own"]
    assert (own["since_release"], own["work_items"]) == (1, ["ABC-12", "#7"])
    assert [c["sha"] for c in own["artifacts"][0]["commits"]] == [
        second_sha,
        git(repo, "rev-parse", "HEAD~1"),
    ]
    by_stage = {s["stage"]: s for s in shown["changes"]["stages"]}
    assert by_stage["dev"]["ahead"] is False  # dev has this release
    assert by_stage["prod"]["deployed"]["number"] == 1
    assert by_stage["prod"]["work_items"] == ["ABC-12", "#7"]
    assert [c["subject"] for c in by_stage["prod"]["commits"]] == [
        "Fixes #7: a typo",
        "ABC-12: the login page",
    ]
    text = ok(stack.cli("release", "show", str(second)))
    assert "brings since Release 1: 2 commits; work items: ABC-12, #7" in text
    assert "prod (has Release-1): 2 commits, ABC-12, #7" in text
    assert "ABC-12: the login page (Grace Hopper)" in text
    assert stages_holding(stack, "ABC-12") == [("dev", "Release-2")]

    # Deployed to prod: ABC-12 is there too; rolled back past it: only dev.
    ok(stack.cli("deploy", str(second), "prod"))

    async def prod_has(number: int) -> bool:
        matrix = json.loads(ok(stack.cli("status", pipeline, "--json")))
        (prod,) = [s for s in matrix["deployed"] if s["stage"] == "prod"]
        return bool(prod["deployed"] and prod["deployed"]["number"] == number)

    await wait_for(lambda: prod_has(2), timeout=60, what="Release-2 on prod")
    assert stages_holding(stack, "ABC-12") == [("dev", "Release-2"), ("prod", "Release-2")]
    ok(stack.cli("rollback", pipeline, "prod"))
    await wait_for(lambda: prod_has(1), timeout=60, what="the rollback to Release-1 on prod")
    assert stages_holding(stack, "ABC-12") == [("dev", "Release-2")]
    assert ok(stack.cli("where", "XYZ-1")) == "no release brings XYZ-1\n"

    diff = json.loads(ok(stack.cli("--json", "release", "diff", f"{pipeline}/1", str(second))))
    (app,) = diff["artifacts"]
    assert app["before"] == f"main ({first_sha[:12]})"
    assert app["after"] == f"main ({second_sha[:12]})"
    assert (len(diff["commits"]), diff["work_items"], diff["backwards"]) == (
        2,
        ["ABC-12", "#7"],
        False,
    )
    back = ok(stack.cli("release", "diff", str(second), f"{pipeline}/1"))
    assert "2 commits taken away" in back and "work items taken away: ABC-12, #7" in back

    async def searchable() -> list[Any]:
        query = f"StageflowWorkItems = 'ABC-12' AND StageflowPipeline = '{pipeline}'"
        return [w.id async for w in stack.client.list_workflows(query)]

    assert await wait_for(searchable, timeout=30, what="StageflowWorkItems") == [
        f"release/{pipeline}/2"
    ]
    status = await stack.wait_settled(second)
    assert status.stage("prod").status == StageStatus.SUCCEEDED


def test_a_pipeline_names_its_own_work_item_patterns(tmp_path: Path) -> None:
    from activities.pipeline_loader import InvalidPipeline, parse_pipeline
    from workflows.changes import work_items_in

    text = """
name: own
work_items: {patterns: ['\\b(?:story|bug)/(\\d+)\\b']}
stages: [{name: dev, pool: p, tasks: [{name: t, script: 'true'}]}]
"""
    pipeline = parse_pipeline(text, "own.yml")
    assert work_items_in(["fix bug/12 and ABC-9"], pipeline.work_items.patterns) == ["12"]
    with pytest.raises(InvalidPipeline) as bad:
        parse_pipeline(text.replace("(\\d+)", "(\\d+"), "own.yml")
    assert "work_items.patterns" in str(bad.value) and "not a regular expression" in str(bad.value)


def test_the_approval_mail_says_what_you_are_approving() -> None:
    from activities.notify import render
    from tests.test_mail import policy_and_state, with_approvals
    from workflows.changes import ArtifactChanges, Commit, ReleaseChanges
    from workflows.mail import approval_mails

    release = with_approvals(["alice"])
    login = Commit(sha="a" * 40, subject="ABC-12: the login page", author="Grace Hopper")
    release = release.model_copy(
        update={
            "changes": ReleaseChanges(
                since_release=6,
                artifacts=[ArtifactChanges(alias="app", head="a" * 40, commits=[login])],
                work_items=["ABC-12"],
            )
        }
    )
    _, state = policy_and_state(release)
    (request,) = approval_mails(release, "prod", 1, state, ["alice"])
    _, text, html = render(request)
    assert "What you are approving (1 commits since Release 6):" in text
    assert "  - aaaaaaaaaa ABC-12: the login page (Grace Hopper)" in text
    assert "Work items:  ABC-12" in text
    assert "<h3>What you are approving</h3>" in html and "ABC-12: the login page" in html
