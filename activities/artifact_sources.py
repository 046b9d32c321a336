"""What the CLI (pinning an artifact) and the agent (fetching it) agree on about its source.

`activities/artifact_pinning.py` pins a release's artifacts to versions; `activities/artifacts.py`
fetches what was pinned into an agent's cache. Both read the same archive names and
git repository addresses and fail with the same error, defined here so that neither
imports the other (layers import downward only). Pure: no I/O.
"""

from __future__ import annotations

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")


class ArtifactError(ValueError):
    """An artifact cannot be resolved or fetched as defined; retrying will not help."""


def archive_version(name: str) -> str | None:
    """`1.2.0.tar.gz` → `1.2.0`; None when the name is not a known archive."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def is_remote_repository(repository: str) -> bool:
    """Git's own rule: `scheme://…` or scp-like `host:path` (a colon before any slash)."""
    if "://" in repository:
        return True
    colon, slash = repository.find(":"), repository.find("/")
    return colon > 0 and (slash < 0 or colon < slash)
