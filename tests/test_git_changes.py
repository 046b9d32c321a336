"""What a release's git artifacts bring: branches by glob, commits between two pins.

Real repositories made in tmp_path; a "remote" is the same repository given as a
file:// URL, read through the mirror cache.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from activities.artifact_sources import ArtifactError
from activities.git_changes import branch_heads, commits_between
from workflows.changes import work_items_in

# No global git config on a fresh machine: name the committer on every command.
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}

WORK_ITEMS = [r"(?<![\w&/])#\d+\b", r"\b[A-Z][A-Z0-9]+-\d+\b"]


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        env=GIT_ENV,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def commit(repo: Path, message: str, author: str = "Ada Lovelace") -> str:
    git(
        repo,
        "commit",
        "--quiet",
        "--allow-empty",
        f"--author={author} <dev@example.com>",
        "-m",
        message,
    )
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    git(path, "init", "--quiet", "-b", "main")
    return path


@pytest.fixture
def history(repo: Path) -> list[str]:
    """Five commits on main, oldest first."""
    return [commit(repo, f"change {n}") for n in range(1, 6)]


def test_branch_heads_keeps_included_globs_and_drops_excluded_ones(repo: Path) -> None:
    first = commit(repo, "first")
    for branch in ("release/1.0", "release/2.0/hotfix", "release/old-0.9", "feature/x"):
        git(repo, "branch", branch)
    second = commit(repo, "second")
    git(repo, "branch", "release/3.0")

    heads = branch_heads("webapp", str(repo), ["main", "release/*"], ["release/old-*"])

    assert heads == {
        "main": second,
        "release/1.0": first,
        "release/2.0/hotfix": first,
        "release/3.0": second,
    }


def test_branch_heads_with_no_include_globs_lists_every_branch(repo: Path) -> None:
    sha = commit(repo, "first")
    git(repo, "branch", "feature/x")

    assert branch_heads("webapp", str(repo), [], []) == {"feature/x": sha, "main": sha}
    assert branch_heads("webapp", str(repo), [], ["feature/*"]) == {"main": sha}


def test_branch_heads_of_a_missing_repository_names_the_alias(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="'webapp'"):
        branch_heads("webapp", str(tmp_path / "nowhere"), [], [])
    with pytest.raises(ArtifactError, match="is not a repository"):
        branch_heads("webapp", "--upload-pack=touch /tmp/x", [], [])


def test_commits_between_lists_what_head_brings_over_base_newest_first(
    repo: Path, history: list[str], tmp_path: Path
) -> None:
    changes = commits_between("webapp", str(repo), history[1], history[4], tmp_path / "cache")

    assert changes.alias == "webapp"
    assert (changes.base, changes.head) == (history[1], history[4])
    assert [c.sha for c in changes.commits] == [history[4], history[3], history[2]]
    assert [c.subject for c in changes.commits] == ["change 5", "change 4", "change 3"]
    assert not changes.truncated


def test_commits_between_without_base_is_the_history_of_head(
    repo: Path, history: list[str], tmp_path: Path
) -> None:
    changes = commits_between("webapp", str(repo), None, history[2], tmp_path / "cache")

    assert [c.sha for c in changes.commits] == history[2::-1]
    assert changes.base is None
    assert not changes.truncated


def test_commits_beyond_the_limit_are_left_out_and_flagged(
    repo: Path, history: list[str], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"

    changes = commits_between("webapp", str(repo), None, history[4], cache, limit=2)
    exact = commits_between("webapp", str(repo), history[2], history[4], cache, limit=2)

    assert [c.sha for c in changes.commits] == [history[4], history[3]]
    assert changes.truncated
    assert [c.sha for c in exact.commits] == [history[4], history[3]]
    assert not exact.truncated


def test_commits_carry_their_author_and_whole_message(repo: Path, tmp_path: Path) -> None:
    base = commit(repo, "start")
    # Separators git's own output might use, a blank line and a trailer: all kept.
    message = "ABC-123: login\n\nsee #12\n\x1e tab\there | pipe\n\nSigned-off-by: Grace"
    head = commit(repo, message, author="Grace Hopper")

    changes = commits_between("webapp", str(repo), base, head, tmp_path / "cache")

    [only] = changes.commits
    assert only.sha == head and len(only.sha) == 40
    assert only.subject == "ABC-123: login"
    assert only.author == "Grace Hopper"
    assert only.message == message


def test_an_unknown_base_falls_back_to_the_history_of_head(
    repo: Path, history: list[str], tmp_path: Path
) -> None:
    gone = "0123456789abcdef0123456789abcdef01234567"  # history rewritten: base is gone

    changes = commits_between("webapp", str(repo), gone, history[4], tmp_path / "cache", limit=3)

    assert [c.sha for c in changes.commits] == [history[4], history[3], history[2]]
    assert changes.truncated
    assert changes.base is None


def test_an_unknown_head_is_an_error_naming_the_alias(
    repo: Path, history: list[str], tmp_path: Path
) -> None:
    gone = "0123456789abcdef0123456789abcdef01234567"

    with pytest.raises(ArtifactError, match=f"'webapp'.*{gone}"):
        commits_between("webapp", str(repo), history[0], gone, tmp_path / "cache")
    with pytest.raises(ArtifactError, match="'webapp'.*does not exist"):
        commits_between("webapp", str(tmp_path / "nowhere"), None, "HEAD", tmp_path / "cache")
    with pytest.raises(ArtifactError, match="'webapp'.*is not a commit"):
        commits_between("webapp", str(repo), "--all", history[0], tmp_path / "cache")


def test_a_remote_repository_is_read_through_a_mirror_that_fetches_what_is_new(
    repo: Path, history: list[str], tmp_path: Path
) -> None:
    url = repo.as_uri()
    cache = tmp_path / "cache"

    first = commits_between("webapp", url, history[3], history[4], cache)
    [mirror] = cache.iterdir()
    newer = commit(repo, "change 6")
    second = commits_between("webapp", url, history[4], newer, cache)

    assert mirror.name.endswith(".git") and len(mirror.name) == 64 + len(".git")
    assert git(mirror, "rev-parse", "--is-bare-repository") == "true"
    assert [c.sha for c in first.commits] == [history[4]]
    assert [c.subject for c in second.commits] == ["change 6"]
    assert list(cache.iterdir()) == [mirror]
    assert branch_heads("webapp", url, ["main"], []) == {"main": newer}


def test_a_head_the_remote_lacks_is_an_error_naming_the_alias(
    repo: Path, history: list[str], tmp_path: Path
) -> None:
    gone = "0123456789abcdef0123456789abcdef01234567"

    with pytest.raises(ArtifactError, match=f"'webapp'.*{gone}"):
        commits_between("webapp", repo.as_uri(), None, gone, tmp_path / "cache")


def test_work_items_are_named_once_in_the_order_first_named() -> None:
    messages = ["Fixes #12", "ABC-123: login", "see ABC-123 again", "a&#38; b/#7 and #12, XY9-4"]

    assert work_items_in(messages, WORK_ITEMS) == ["#12", "ABC-123", "XY9-4"]
