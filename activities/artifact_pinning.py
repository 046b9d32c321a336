"""Pin every artifact of a pipeline to one version when a release is created.

Runs where a release is created (the API, or a trigger's activity), before the
release workflow starts, so the release
snapshot names concrete versions: a drop folder's `latest` becomes `1.10.0`, a
git ref becomes a commit. Agents later fetch exactly what is pinned here
(see `activities/artifacts.py`). Nothing is downloaded here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from activities.artifact_sources import (
    ARCHIVE_SUFFIXES,
    ArtifactError,
    archive_version,
    is_remote_repository,
)
from activities.git_changes import run_git
from workflows.pipeline import Artifact, GitArtifact, HttpArtifact, LocalArtifact
from workflows.release import ResolvedArtifact

LATEST = "latest"
GIT_TIMEOUT_SECONDS = 120

_FULL_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def resolve_artifacts(
    artifacts: list[Artifact], pipeline_file: Path, overrides: dict[str, str]
) -> list[ResolvedArtifact]:
    """Pin each artifact to a concrete version, `overrides` (alias → version) first.

    Relative paths (drop folders, local repositories) are relative to the
    directory of `pipeline_file`. Raises ArtifactError naming the alias.
    """
    aliases = [artifact.alias for artifact in artifacts]
    for alias in overrides:
        if alias not in aliases:
            known = ", ".join(aliases) or "none"
            raise ArtifactError(f"no artifact {alias!r} in the pipeline (artifacts: {known})")
    base = pipeline_file.resolve().parent
    resolved = []
    for artifact in artifacts:
        override = overrides.get(artifact.alias)
        if isinstance(artifact, LocalArtifact):
            resolved.append(_resolve_local(artifact, base, override))
        elif isinstance(artifact, HttpArtifact):
            resolved.append(_resolve_http(artifact, override))
        else:
            resolved.append(_resolve_git(artifact, base, override))
    return resolved


# --- local drop folders ---------------------------------------------------------------


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural order: digit runs compare as numbers, so 1.10.0 > 1.9.2 > 1.9."""
    return tuple(
        (1, int(run), "") if run.isdigit() else (0, 0, run)
        for run in re.findall(r"\d+|\D+", version)
    )


def drop_versions(drop: Path) -> dict[str, list[Path]]:
    """The versions in a drop folder: sub-folders and archives, hidden entries skipped.

    A version maps to more than one path when, say, both `1.0/` and `1.0.zip` exist.
    """
    versions: dict[str, list[Path]] = {}
    for entry in os.scandir(drop):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            version: str | None = entry.name
        elif entry.is_file():
            version = archive_version(entry.name)
        else:
            version = None
        if version is not None:
            versions.setdefault(version, []).append(Path(entry.path))
    return versions


def _resolve_local(artifact: LocalArtifact, base: Path, override: str | None) -> ResolvedArtifact:
    alias = artifact.alias
    drop = (base / artifact.path).resolve()
    if not drop.is_dir():
        raise ArtifactError(f"artifact {alias!r}: drop folder {drop} does not exist")
    versions = drop_versions(drop)
    if not versions:
        raise ArtifactError(
            f"artifact {alias!r}: drop folder {drop} has no versions"
            f" (sub-folders or {', '.join(ARCHIVE_SUFFIXES)} archives)"
        )
    wanted = override or artifact.version
    if wanted == LATEST:
        version = max(
            versions,
            key=lambda v: (version_key(v), max(p.stat().st_mtime_ns for p in versions[v]), v),
        )
    elif wanted in versions:
        version = wanted
    else:
        available = sorted(versions, key=version_key, reverse=True)
        raise ArtifactError(
            f"artifact {alias!r} has no version {wanted!r} in {drop}"
            f" (available: {', '.join(available)})"
        )
    paths = versions[version]
    if len(paths) > 1:
        names = ", ".join(sorted(p.name for p in paths))
        raise ArtifactError(
            f"artifact {alias!r}: version {version!r} is ambiguous in {drop} ({names})"
        )
    return ResolvedArtifact(
        alias=alias, type="local", version=version, source=str(drop), location=str(paths[0])
    )


# --- http -----------------------------------------------------------------------------


def _resolve_http(artifact: HttpArtifact, override: str | None) -> ResolvedArtifact:
    alias = artifact.alias
    version = override or artifact.version
    if not version:
        raise ArtifactError(
            f"artifact {alias!r} (http) has no version: set `version:` in the pipeline"
            " or give one when creating the release"
        )
    env = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
    try:
        url = env.from_string(artifact.url).render(version=version)
    except jinja2.TemplateError as error:
        raise ArtifactError(f"artifact {alias!r}: url {artifact.url!r}: {error}") from error
    return ResolvedArtifact(
        alias=alias,
        type="http",
        version=version,
        source=url,
        sha256=artifact.sha256,
        extract=artifact.extract,
    )


# --- git ------------------------------------------------------------------------------


def _resolve_git(artifact: GitArtifact, base: Path, override: str | None) -> ResolvedArtifact:
    alias = artifact.alias
    ref = override or artifact.ref
    if ref.startswith("-"):
        raise ArtifactError(f"artifact {alias!r}: {ref!r} is not a git ref")
    if is_remote_repository(artifact.repository):
        source = artifact.repository
        commit = _remote_commit(alias, source, ref)
    else:
        path = (base / artifact.repository).resolve()
        if not path.exists():
            raise ArtifactError(f"artifact {alias!r}: repository {path} does not exist")
        source = str(path)
        args = ["-C", source, "rev-parse", "--verify", "--quiet", "--end-of-options"]
        commit = _git(alias, [*args, f"{ref}^{{commit}}"])
        if not commit:
            raise ArtifactError(f"artifact {alias!r}: ref {ref!r} does not resolve in {source}")
    return ResolvedArtifact(alias=alias, type="git", version=ref, source=source, commit=commit)


def _remote_commit(alias: str, repository: str, ref: str) -> str:
    if _FULL_SHA.match(ref.lower()):
        # ls-remote lists refs, not commits; a full sha pins itself.
        return ref.lower()
    if repository.startswith("-"):
        raise ArtifactError(f"artifact {alias!r}: {repository!r} is not a repository")
    listing = _git(alias, ["ls-remote", repository, ref, f"{ref}^{{}}"])
    found = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    # A peeled annotated tag (`^{}`) names the commit; the tag itself names the tag object.
    candidates = (
        f"{ref}^{{}}",
        ref,
        f"refs/heads/{ref}",
        f"refs/tags/{ref}^{{}}",
        f"refs/tags/{ref}",
    )
    for name in candidates:
        if name in found:
            return found[name]
    raise ArtifactError(
        f"artifact {alias!r}: ref {ref!r} does not resolve in {repository}"
        " (a branch, a tag, HEAD or a full commit sha)"
    )


def _git(alias: str, args: list[str]) -> str:
    """Git's stdout stripped, or ArtifactError. A command that fails quietly (rev-parse
    --quiet of an unknown ref) gives ""."""
    done = run_git(alias, args, GIT_TIMEOUT_SECONDS)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        if detail:
            raise ArtifactError(f"artifact {alias!r}: `git {' '.join(args)}` failed: {detail[-1]}")
        return ""
    return done.stdout.strip()
