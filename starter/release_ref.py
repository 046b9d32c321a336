"""`PIPELINE/NUMBER`: how people name a release, on the command line and in the API.

Its own module, importing nothing heavy, so the command line can parse a release
reference without loading the Temporal SDK (starter/releases.py re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass


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
