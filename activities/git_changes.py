"""Read from git what a release's git artifacts bring: their branches and their commits.

`workflows/changes.py` holds the models and the rules (which work items a message
names); this module is the I/O beside them. Git runs as an argv list (never a
shell), with a timeout and without a terminal prompt, and every failure is an
ArtifactError naming the artifact's alias.

A remote repository is read from a bare mirror clone kept in a cache folder, one
per URL, fetched only when it lacks a commit asked about: listing the commits of a
release then costs a fetch of what is new, not a clone of the whole history.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from activities.artifact_sources import ArtifactError, is_remote_repository
from workflows.changes import MAX_COMMITS, ArtifactChanges, Commit

GIT_TIMEOUT_SECONDS = 120
# A first mirror clone copies the whole history: allow it longer than a log.
MIRROR_TIMEOUT_SECONDS = 600

_HEADS = "refs/heads/"
# With -z each commit ends in a NUL; the fields inside it are NUL-separated too. Git
# refuses NUL in messages and author names, so no field can contain the separator.
_LOG_FORMAT = "--format=%H%x00%an%x00%B"
_LOG_FIELDS = 3


def branch_heads(
    alias: str, repository: str, include: list[str], exclude: list[str]
) -> dict[str, str]:
    """The branches of a repository (a path or a URL) chosen by globs, each → its commit.

    A branch is chosen when its short name (`release/1.0`, not `refs/heads/release/1.0`)
    matches any `include` glob, or `include` is empty, and no `exclude` glob. Globs are
    fnmatch's, case-sensitive, and `*` matches `/` too: `release/*` matches
    `release/1.0/hotfix`. Reads only; raises ArtifactError naming the alias.
    """
    _refuse_option(alias, repository, "repository")
    listing = _git(alias, ["ls-remote", "--heads", "--", repository])
    heads = {}
    for line in listing.splitlines():
        sha, _, ref = line.partition("\t")
        if not ref.startswith(_HEADS):
            continue
        name = ref.removeprefix(_HEADS)
        chosen = not include or any(fnmatch.fnmatchcase(name, glob) for glob in include)
        if chosen and not any(fnmatch.fnmatchcase(name, glob) for glob in exclude):
            heads[name] = sha
    return heads


def commits_between(
    alias: str,
    repository: str,
    base: str | None,
    head: str,
    cache_dir: Path,
    limit: int = MAX_COMMITS,
) -> ArtifactChanges:
    """The commits reachable from `head` and not from `base`, newest first, at most `limit`.

    With `base` None (a first release), the history of `head`. A `base` the repository
    does not know (its history was rewritten) gives the history of `head` too, and the
    result's `base` is then None, since the commits are not those since `base`. An
    unknown `head` is an ArtifactError naming the alias.

    A local repository is read in place. A remote one (a URL) is read from a bare
    mirror clone in `cache_dir/<sha256 of the URL>.git`, cloned the first time and
    fetched when it lacks `head` or `base`. Idempotent: the mirror only ever gains
    what the remote has, and it appears whole or not at all.
    """
    _refuse_option(alias, head, "commit")
    if base is not None:
        _refuse_option(alias, base, "commit")
    if is_remote_repository(repository):
        where = _mirror(alias, repository, [head] if base is None else [head, base], cache_dir)
    else:
        where = repository
        if not Path(where).is_dir():
            raise ArtifactError(f"artifact {alias!r}: repository {where} does not exist")
    if not _knows(alias, where, head):
        raise ArtifactError(f"artifact {alias!r}: commit {head!r} is not in {repository}")
    if base is not None and not _knows(alias, where, base):
        base = None
    revisions = [head] if base is None else [f"{base}..{head}"]
    commits = _log(alias, where, revisions, limit + 1)
    return ArtifactChanges(
        alias=alias,
        base=base,
        head=head,
        commits=commits[:limit],
        truncated=len(commits) > limit,
    )


def _mirror(alias: str, url: str, wanted: list[str], cache_dir: Path) -> str:
    """The path of the URL's mirror clone, holding `wanted` if the remote has them."""
    _refuse_option(alias, url, "repository")
    mirror = cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()}.git"
    if mirror.is_dir():
        if not all(_knows(alias, str(mirror), revision) for revision in wanted):
            _git(
                alias,
                ["-C", str(mirror), "fetch", "--prune", "--quiet"],
                timeout=MIRROR_TIMEOUT_SECONDS,
            )
        return str(mirror)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Clone beside the mirror and rename it into place, so that an interrupted clone
    # never passes for a mirror and two clones at once leave one.
    staging = tempfile.mkdtemp(dir=cache_dir, prefix=".cloning-")
    try:
        _git(
            alias,
            ["clone", "--mirror", "--quiet", "--", url, staging],
            timeout=MIRROR_TIMEOUT_SECONDS,
        )
        try:
            os.rename(staging, mirror)
        except OSError:
            if not mirror.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(mirror)


def _knows(alias: str, repository: str, revision: str) -> bool:
    """Whether `revision` names a commit in the repository."""
    args = ["-C", repository, "rev-parse", "--verify", "--quiet", "--end-of-options"]
    return run_git(alias, [*args, f"{revision}^{{commit}}"]).returncode == 0


def _log(alias: str, repository: str, revisions: list[str], count: int) -> list[Commit]:
    args = [
        *("-C", repository, "log", "-z", _LOG_FORMAT, "--encoding=UTF-8"),
        *("--no-show-signature", f"--max-count={count}", "--end-of-options"),
    ]
    output = _git(alias, [*args, *revisions, "--"])
    fields = output.split("\0")
    if fields and not fields[-1]:
        fields.pop()  # after the last commit's NUL
    if len(fields) % _LOG_FIELDS:
        raise ArtifactError(f"artifact {alias!r}: cannot read `git log` of {repository}")
    commits = []
    for start in range(0, len(fields), _LOG_FIELDS):
        sha, author, message = fields[start : start + _LOG_FIELDS]
        message = message.rstrip("\n")
        subject = message.split("\n", 1)[0]
        commits.append(Commit(sha=sha, subject=subject, author=author, message=message))
    return commits


def _refuse_option(alias: str, value: str, what: str) -> None:
    # Git would read a value starting with '-' as an option.
    if value.startswith("-"):
        raise ArtifactError(f"artifact {alias!r}: {value!r} is not a {what}")


def _git(alias: str, args: list[str], timeout: float = GIT_TIMEOUT_SECONDS) -> str:
    """Git's stdout, or ArtifactError with the command and git's last words."""
    done = run_git(alias, args, timeout)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise ArtifactError(
            f"artifact {alias!r}: `git {' '.join(args)}` failed"
            + (f": {detail[-1]}" if detail else "")
        )
    return done.stdout


def run_git(
    alias: str, args: list[str], timeout: float = GIT_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """Git with an argv list (never a shell), no prompt, a timeout; ArtifactError when git
    is missing or too slow, the finished process otherwise (its exit code is yours)."""
    try:
        return subprocess.run(
            ["git", *args],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            # Fail rather than wait for a password nobody will type.
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except FileNotFoundError as error:
        raise ArtifactError(f"artifact {alias!r}: git is not installed") from error
    except subprocess.TimeoutExpired as error:
        raise ArtifactError(
            f"artifact {alias!r}: `git {' '.join(args)}` timed out after {timeout:g}s"
        ) from error
