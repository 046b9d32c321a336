"""`PIPELINE/NUMBER`: how people name a release, on the command line and in the API.

Its own module, importing nothing heavy, so the command line can parse a release
reference without loading the Temporal SDK (starter/releases.py re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class ReleaseRef:
    pipeline: str
    number: int

    @classmethod
    def parse(cls, text: str) -> ReleaseRef:
        pipeline, _, number = text.rpartition("/")
        if not pipeline or not number.isdigit():
            raise ValueError(
                f"{text!r} is not a release reference: use PIPELINE/NUMBER, e.g. webapp/42"
            )
        return cls(pipeline, int(number))

    @property
    def workflow_id(self) -> str:
        from workflows.names import release_workflow_id  # the SDK, for processes that use it

        return release_workflow_id(self.pipeline, self.number)

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.number}"


def release_ref(text: str) -> ReleaseRef:
    """`PIPELINE/NUMBER`, or a ValueError saying how to write one (exit 2)."""
    return ReleaseRef.parse(text)


def release_path(ref: ReleaseRef, *rest: str) -> str:
    """The API path of a release (and of what is below it: `stages`, a stage, ...)."""
    parts = [quote(ref.pipeline, safe=""), str(ref.number), *(quote(p, safe="") for p in rest)]
    return "/releases/" + "/".join(parts)
