"""Triggers: what a firing saw, and which of its candidates become releases.

A trigger (an artifact watched, or a schedule) fires from a Temporal Schedule as a
TriggerWorkflow, whose activity (activities/triggers.py) looks at what the trigger
watches and sends the PipelineWorkflow a `TriggerFiring`: what it saw per label (a
branch; "" for a drop folder or a schedule) and, for each label that changed, a
candidate release. The PipelineWorkflow decides here, atomically, against what
that trigger saw before and the releases every trigger made:

- the first look of an artifact trigger only notes what is there (a baseline): a
  release comes with the next version, not with what was there before;
- a label whose value the trigger saw before brings nothing new;
- a candidate whose key (the definition and the pinned versions) made a release
  already, by this trigger or another, is that release: two triggers that fire for
  the same version make one release.

Pure: no I/O, no Temporal calls.
"""

from __future__ import annotations

from pydantic import Field

from workflows.pipeline import Model
from workflows.release_requests import CreatedRelease, NewRelease

# Remember this many release keys, so a version seen again much later is still known.
REMEMBERED_KEYS = 500


class TriggerInput(Model):
    """A TriggerWorkflow's input: which trigger of which pipeline fires."""

    pipeline: str
    trigger: str


class FireRequest(Model):
    """`fire_trigger`: look at what the trigger watches and make what is new a release."""

    pipeline: str
    trigger: str
    firing_id: str = Field(description="this firing's workflow id: retried, the same")


class TriggerCandidate(Model):
    label: str = Field(description="the branch, or '' for a drop folder or a schedule")
    key: str = Field(description="the definition and the pinned versions, hashed")
    release: NewRelease


class TriggerFiring(Model):
    """`fire_trigger` update: what one firing saw and what it would release."""

    trigger: str
    observed: dict[str, str] = Field(description="label → what is there now")
    candidates: list[TriggerCandidate] = []
    baseline: bool = Field(False, description="a first look only notes what is there")


class TriggerOutcome(Model):
    """What a firing did: the releases it made, and why the other candidates made none."""

    pipeline: str
    trigger: str
    created: list[CreatedRelease] = []
    skipped: list[str] = []
    baseline: bool = False

    @property
    def summary(self) -> str:
        if self.baseline:
            return "first look: noted what is there"
        made = ", ".join(created.name for created in self.created)
        return "; ".join(filter(None, [f"made {made}" if made else "", *self.skipped])) or (
            "nothing new"
        )


def decide(
    seen: dict[str, str] | None, keys: dict[str, int], firing: TriggerFiring
) -> tuple[list[TriggerCandidate], list[str], dict[str, str]]:
    """The candidates to release, why the others are not, and what the trigger has seen
    after this firing."""
    after = {**(seen or {}), **firing.observed}
    if seen is None and firing.baseline:
        return [], [], after
    chosen, skipped = [], []
    for candidate in firing.candidates:
        where = f" ({candidate.label})" if candidate.label else ""
        if (
            seen is not None
            and candidate.label in firing.observed
            and seen.get(candidate.label) == firing.observed[candidate.label]
        ):
            skipped.append(f"nothing new{where}")
        elif candidate.key in keys:
            number = keys[candidate.key]
            made = f"release {number}" if number else "a release being made"
            skipped.append(f"{made} has these versions{where}")
        else:
            chosen.append(candidate)
    return chosen, skipped, after


def remember_key(keys: dict[str, int], key: str, number: int) -> None:
    keys[key] = number
    while len(keys) > REMEMBERED_KEYS:
        keys.pop(next(iter(keys)))
