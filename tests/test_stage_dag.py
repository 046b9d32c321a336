"""The stage DAG: cycles, ancestors, the release target and which stage starts next."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from workflows.release import StageStatus
from workflows.stage_dag import (
    ancestors,
    downstream_of,
    find_cycle,
    stages_to_trigger,
    within_target,
)

# dev -> qa -> prod, with `hotfix` deployed only by hand.
CHAIN: dict[str, str | list[str]] = {
    "dev": "after_release",
    "qa": ["dev"],
    "prod": ["qa"],
    "hotfix": "manual",
}
CHAIN_UPSTREAM = {"dev": [], "qa": ["dev"], "prod": ["qa"], "hotfix": []}

# a -> b, a -> c, (b, c) -> d
DIAMOND: dict[str, str | list[str]] = {
    "a": "after_release",
    "b": ["a"],
    "c": ["a"],
    "d": ["b", "c"],
}
DIAMOND_UPSTREAM = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"]}


def assert_is_cycle_of(path: list[str], upstream: Mapping[str, Sequence[str]]) -> None:
    """`path` starts and ends on the same stage and each step follows an upstream edge."""
    assert len(path) >= 2
    assert path[0] == path[-1]
    for node, parent in zip(path, path[1:], strict=False):
        assert parent in upstream[node], f"{node} -> {parent} is not an edge"


# --- find_cycle --------------------------------------------------------------------


def test_find_cycle_returns_none_for_a_dag() -> None:
    assert find_cycle(DIAMOND_UPSTREAM) is None
    assert find_cycle(CHAIN_UPSTREAM) is None


def test_find_cycle_returns_none_for_no_stages() -> None:
    assert find_cycle({}) is None


def test_find_cycle_finds_a_stage_waiting_on_itself() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_find_cycle_finds_a_two_stage_cycle() -> None:
    upstream = {"a": ["b"], "b": ["a"]}
    path = find_cycle(upstream)
    assert path is not None
    assert_is_cycle_of(path, upstream)
    assert set(path) == {"a", "b"}


def test_find_cycle_returns_only_the_cycle_not_the_path_into_it() -> None:
    upstream = {"x": ["a"], "a": ["b"], "b": ["c"], "c": ["a"]}
    path = find_cycle(upstream)
    assert path is not None
    assert_is_cycle_of(path, upstream)
    assert set(path) == {"a", "b", "c"}


def test_find_cycle_finds_a_cycle_beside_an_acyclic_part() -> None:
    upstream = {"dev": [], "qa": ["dev"], "p": ["q"], "q": ["r"], "r": ["p"]}
    path = find_cycle(upstream)
    assert path is not None
    assert_is_cycle_of(path, upstream)
    assert set(path) == {"p", "q", "r"}


def test_find_cycle_ignores_upstream_names_that_are_not_stages() -> None:
    assert find_cycle({"qa": ["nowhere"]}) is None


def test_find_cycle_does_not_mistake_a_diamond_for_a_cycle() -> None:
    # d reaches a twice (through b and through c): visited, but not on the stack.
    assert find_cycle({"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": []}) is None


# --- ancestors, within_target, downstream_of -----------------------------------------


def test_ancestors_follow_the_chain_transitively() -> None:
    assert ancestors(CHAIN_UPSTREAM, "prod") == {"qa", "dev"}
    assert ancestors(CHAIN_UPSTREAM, "qa") == {"dev"}


def test_ancestors_of_a_root_stage_are_empty() -> None:
    assert ancestors(CHAIN_UPSTREAM, "dev") == set()


def test_ancestors_of_an_unknown_stage_are_empty() -> None:
    assert ancestors(CHAIN_UPSTREAM, "nowhere") == set()


def test_ancestors_of_a_diamond_join_include_both_branches_and_the_root() -> None:
    assert ancestors(DIAMOND_UPSTREAM, "d") == {"a", "b", "c"}


def test_ancestors_do_not_include_the_stage_itself() -> None:
    assert "d" not in ancestors(DIAMOND_UPSTREAM, "d")


def test_within_target_without_until_is_every_stage() -> None:
    assert within_target(CHAIN_UPSTREAM, None) == {"dev", "qa", "prod", "hotfix"}


def test_within_target_is_the_target_and_what_it_waits_on() -> None:
    assert within_target(CHAIN_UPSTREAM, "qa") == {"dev", "qa"}


def test_within_target_excludes_stages_on_another_branch() -> None:
    assert within_target(DIAMOND_UPSTREAM, "b") == {"a", "b"}


def test_downstream_of_is_everything_that_waits_on_the_stage() -> None:
    assert downstream_of(CHAIN_UPSTREAM, "dev") == {"qa", "prod"}
    assert downstream_of(DIAMOND_UPSTREAM, "b") == {"d"}
    assert downstream_of(DIAMOND_UPSTREAM, "d") == set()


# --- stages_to_trigger --------------------------------------------------------------


def test_release_creation_starts_after_release_stages_only() -> None:
    assert stages_to_trigger(CHAIN, {}, set(), None, None) == ["dev"]


def test_release_creation_starts_every_after_release_stage() -> None:
    triggers: dict[str, str | list[str]] = {
        "eu": "after_release",
        "us": "after_release",
        "global": ["eu", "us"],
    }
    assert stages_to_trigger(triggers, {}, set(), None, None) == ["eu", "us"]


def test_succeeded_upstream_triggers_the_next_stage() -> None:
    statuses = {"dev": "succeeded"}
    assert stages_to_trigger(CHAIN, statuses, set(), None, "dev") == ["qa"]


@pytest.mark.parametrize("status", ["failed", "canceled", "partially_succeeded", "in_progress"])
def test_upstream_that_did_not_succeed_triggers_nothing(status: str) -> None:
    assert stages_to_trigger(CHAIN, {"dev": status}, set(), None, "dev") == []


def test_finishing_a_stage_does_not_trigger_stages_that_do_not_wait_on_it() -> None:
    statuses = {"dev": "succeeded", "qa": "succeeded"}
    # qa finished: prod follows, but qa (which waits on dev) is not started again.
    assert stages_to_trigger(CHAIN, statuses, set(), None, "qa") == ["prod"]


def test_manual_stage_is_never_started_automatically() -> None:
    statuses = {"dev": "succeeded", "qa": "succeeded", "prod": "succeeded"}
    assert "hotfix" not in stages_to_trigger(CHAIN, {}, set(), None, None)
    for finished in ("dev", "qa", "prod", "hotfix"):
        assert "hotfix" not in stages_to_trigger(CHAIN, statuses, set(), None, finished)


def test_stage_after_a_manual_stage_follows_its_manual_deployment() -> None:
    triggers: dict[str, str | list[str]] = {"prod": "manual", "verify": ["prod"]}
    assert stages_to_trigger(triggers, {}, set(), None, None) == []
    assert stages_to_trigger(triggers, {"prod": "succeeded"}, set(), None, "prod") == ["verify"]


def test_until_stops_triggering_past_the_target_stage() -> None:
    statuses = {"dev": "succeeded", "qa": "succeeded"}
    assert stages_to_trigger(CHAIN, {"dev": "succeeded"}, set(), "qa", "dev") == ["qa"]
    assert stages_to_trigger(CHAIN, statuses, set(), "qa", "qa") == []


def test_until_keeps_after_release_stages_on_another_branch_from_starting() -> None:
    triggers: dict[str, str | list[str]] = {"eu": "after_release", "us": "after_release"}
    assert stages_to_trigger(triggers, {}, set(), "eu", None) == ["eu"]


def test_until_the_first_stage_starts_only_that_stage() -> None:
    assert stages_to_trigger(CHAIN, {}, set(), "dev", None) == ["dev"]
    assert stages_to_trigger(CHAIN, {"dev": "succeeded"}, set(), "dev", "dev") == []


def test_partial_ok_stage_accepts_a_partially_succeeded_upstream() -> None:
    statuses = {"dev": "partially_succeeded"}
    assert stages_to_trigger(CHAIN, statuses, set(), None, "dev", partial_ok={"qa"}) == ["qa"]


def test_partial_ok_of_one_stage_does_not_apply_to_another() -> None:
    statuses = {"dev": "partially_succeeded"}
    assert stages_to_trigger(CHAIN, statuses, set(), None, "dev", partial_ok={"prod"}) == []


def test_partial_ok_stage_still_rejects_a_failed_upstream() -> None:
    statuses = {"dev": "failed"}
    assert stages_to_trigger(CHAIN, statuses, set(), None, "dev", partial_ok={"qa"}) == []


def test_running_stage_is_not_triggered_again() -> None:
    statuses = {"dev": "succeeded", "qa": "in_progress"}
    assert stages_to_trigger(CHAIN, statuses, {"qa"}, None, "dev") == []


def test_running_after_release_stage_is_not_started_again() -> None:
    assert stages_to_trigger(CHAIN, {}, {"dev"}, None, None) == []


def test_redeploying_an_upstream_stage_triggers_the_downstream_stage_again() -> None:
    # qa already succeeded once; dev is redeployed and succeeds again.
    statuses = {"dev": "succeeded", "qa": "succeeded", "prod": "not_deployed"}
    assert stages_to_trigger(CHAIN, statuses, set(), None, "dev") == ["qa"]


def test_diamond_join_waits_for_the_second_branch() -> None:
    statuses = {"a": "succeeded", "b": "succeeded", "c": "in_progress"}
    assert stages_to_trigger(DIAMOND, statuses, {"c"}, None, "b") == []


def test_diamond_join_starts_when_both_branches_succeeded() -> None:
    statuses = {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert stages_to_trigger(DIAMOND, statuses, set(), None, "c") == ["d"]


def test_diamond_join_does_not_start_when_one_branch_failed() -> None:
    statuses = {"a": "succeeded", "b": "succeeded", "c": "failed"}
    assert stages_to_trigger(DIAMOND, statuses, set(), None, "c") == []
    assert stages_to_trigger(DIAMOND, statuses, set(), None, "b") == []


def test_diamond_root_success_starts_both_branches() -> None:
    assert stages_to_trigger(DIAMOND, {"a": "succeeded"}, set(), None, "a") == ["b", "c"]


def test_stage_statuses_may_be_stage_status_enums() -> None:
    statuses = {"dev": StageStatus.SUCCEEDED}
    assert stages_to_trigger(CHAIN, statuses, set(), None, "dev") == ["qa"]
