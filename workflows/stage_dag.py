"""The stage DAG: which stage a release deploys next. Pure functions, no Temporal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# Statuses that count as "this stage is deployed" for a downstream trigger.
TRIGGERING_STATUSES = frozenset({"succeeded"})


def find_cycle(upstream: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as a path `[a, b, a]`, or None when the graph is a DAG.

    Depth first without recursion, so a chain of thousands of stages is no problem."""
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    for root in upstream:
        if state.get(root) is not None:
            continue
        path: list[str] = [root]
        parents = [iter(upstream.get(root, ()))]
        state[root] = 1
        while path:
            parent = next(parents[-1], None)
            if parent is None:
                state[path.pop()] = 2
                parents.pop()
            elif state.get(parent) == 1:
                return path[path.index(parent) :] + [parent]
            elif parent in upstream and state.get(parent) is None:
                state[parent] = 1
                path.append(parent)
                parents.append(iter(upstream.get(parent, ())))
    return None


def ancestors(upstream: Mapping[str, Sequence[str]], stage: str) -> set[str]:
    """Every stage that `stage` waits on, directly or not."""
    seen: set[str] = set()
    todo = list(upstream.get(stage, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(upstream.get(name, ()))
    return seen


def within_target(upstream: Mapping[str, Sequence[str]], until: str | None) -> set[str]:
    """Stages a release may deploy on its own when limited to `until` (and before it)."""
    if until is None:
        return set(upstream)
    return {until} | ancestors(upstream, until)


def stages_to_trigger(
    triggers: Mapping[str, str | Sequence[str]],
    statuses: Mapping[str, str],
    running: set[str],
    until: str | None,
    finished: str | None,
    partial_ok: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """The stages to start automatically now.

    `triggers[name]` is "after_release", "manual" or a list of upstream stages.
    Called with `finished=None` when the release is created (after_release
    stages start), and with the stage whose deployment just ended otherwise: a
    stage whose upstream stages all succeeded starts, unless it is running or
    past the release's target stage. Redeploying an upstream stage triggers the
    downstream ones again, as in Azure Pipelines. Stages in `partial_ok` also
    accept a partially succeeded upstream stage.
    """
    upstream = {
        name: list(trigger) if not isinstance(trigger, str) else []
        for name, trigger in triggers.items()
    }
    allowed = within_target(upstream, until)
    ready = []
    for name, trigger in triggers.items():
        if name not in allowed or name in running:
            continue
        if finished is None:
            if trigger == "after_release":
                ready.append(name)
        elif not isinstance(trigger, str) and finished in trigger:
            accepted = TRIGGERING_STATUSES | (
                {"partially_succeeded"} if name in partial_ok else set()
            )
            if all(statuses.get(parent) in accepted for parent in trigger):
                ready.append(name)
    return ready


def downstream_of(upstream: Mapping[str, Sequence[str]], stage: str) -> set[str]:
    """Every stage that waits on `stage`, directly or not."""
    return {name for name in upstream if stage in ancestors(upstream, name)}
