"""Pipeline models: durations, stages, tasks, variables, the DAG checks and release helpers.

The YAML loader's line numbers are tested in test_pipeline_loader.py; these tests
build the models directly.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from workflows.pipeline import (
    MAX_DURATION,
    Job,
    Pipeline,
    SecretRef,
    Stage,
    Task,
    format_duration,
    parse_duration,
)
from workflows.release import (
    ReleaseSpec,
    StageStatus,
    StageView,
    merged_variables,
    release_status_of,
    split_secrets,
)

SCRIPT = {"name": "deploy", "script": "true"}


def stage(name: str, trigger: Any = "after_release", **extra: Any) -> dict[str, Any]:
    return {"name": name, "trigger": trigger, "pool": "linux", "tasks": [SCRIPT], **extra}


def after(*stages: str) -> dict[str, Any]:
    return {"after_stages": list(stages)}


def pipeline(*stages: dict[str, Any], **extra: Any) -> Pipeline:
    return Pipeline.model_validate({"name": "webapp", "stages": list(stages), **extra})


# --- parse_duration / format_duration ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("1w", timedelta(weeks=1)),
        ("250ms", timedelta(milliseconds=250)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("1h 30m", timedelta(hours=1, minutes=30)),
        ("1.5h", timedelta(minutes=90)),
        ("90", timedelta(seconds=90)),
        (" 90 ", timedelta(seconds=90)),
        ("0", timedelta(0)),
    ],
)
def test_parse_duration_reads_duration_text(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [(90, timedelta(seconds=90)), (1.5, timedelta(seconds=1.5)), (0, timedelta(0))],
)
def test_parse_duration_reads_a_number_as_seconds(number: float, expected: timedelta) -> None:
    assert parse_duration(number) == expected


def test_parse_duration_passes_a_timedelta_through() -> None:
    assert parse_duration(timedelta(minutes=3)) == timedelta(minutes=3)


@pytest.mark.parametrize("text", ["abc", "", "5x", "m5", "1h30", "30 minutes", "-5s", "1e3"])
def test_parse_duration_rejects_text_that_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [-5, -0.5, "-5"])
def test_parse_duration_rejects_negative_durations(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_duration_rejects_booleans(value: bool) -> None:
    with pytest.raises(ValueError, match="a duration is a number of seconds"):
        parse_duration(value)


@pytest.mark.parametrize(
    "value",
    [
        MAX_DURATION.total_seconds() + 1,
        10**30,
        "3651d",
        "99999w",
        "9" * 400,
        "9" * 400 + "s",
        math.inf,
        math.nan,
    ],
)
def test_parse_duration_rejects_huge_values(value: Any) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_duration(value)


def test_parse_duration_accepts_the_maximum() -> None:
    assert parse_duration("3650d") == MAX_DURATION


def test_iso_8601_durations_are_held_to_the_same_range() -> None:
    with pytest.raises(ValidationError, match="out of range"):
        Task(name="t", script="true", timeout="P99999D")


def test_iso_8601_duration_written_by_pydantic_reads_back() -> None:
    task = Task(name="t", script="true", timeout="PT30M")
    assert task.timeout == timedelta(minutes=30)


@pytest.mark.parametrize(
    "text", ["45s", "5m", "2h", "2d", "1h30m", "1d1h1m1s", "3650d", "0s", "0.5s"]
)
def test_format_duration_round_trips_through_parse_duration(text: str) -> None:
    assert format_duration(parse_duration(text)) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(seconds=90), "1m30s"),
        (timedelta(weeks=1), "7d"),
        (timedelta(hours=25), "1d1h"),
        (timedelta(milliseconds=250), "0.25s"),
    ],
)
def test_format_duration_writes_the_largest_units(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_duration_fields_accept_text_and_numbers() -> None:
    task = Task(name="t", script="true", timeout="1h30m")
    assert task.timeout == timedelta(hours=1, minutes=30)
    assert Task(name="t", script="true", timeout=45).timeout == timedelta(seconds=45)


def test_duration_field_error_names_the_bad_value() -> None:
    with pytest.raises(ValidationError, match="'soon' is not a duration"):
        Task(name="t", script="true", timeout="soon")


# --- stages and jobs ----------------------------------------------------------------


def test_stage_with_pool_and_tasks_is_one_job_named_job() -> None:
    plain = Stage.model_validate(stage("dev"))
    [job] = plain.all_jobs()
    assert job.name == "job"
    assert job.pool == "linux"
    assert [task.name for task in job.tasks] == ["deploy"]


def test_stage_with_jobs_returns_them_in_order() -> None:
    multi = Stage.model_validate(
        {
            "name": "prod",
            "jobs": [
                {"name": "web", "pool": "linux", "tasks": [SCRIPT]},
                {"name": "db", "pool": "dbhosts", "tasks": [SCRIPT]},
            ],
        }
    )
    assert [(job.name, job.pool) for job in multi.all_jobs()] == [
        ("web", "linux"),
        ("db", "dbhosts"),
    ]


def test_stage_with_both_jobs_and_tasks_is_rejected() -> None:
    with pytest.raises(ValidationError, match="either `jobs` or `pool` with `tasks`"):
        Stage.model_validate(
            {
                "name": "dev",
                "tasks": [SCRIPT],
                "jobs": [{"name": "web", "pool": "linux", "tasks": [SCRIPT]}],
            }
        )


def test_stage_with_both_jobs_and_pool_is_rejected() -> None:
    with pytest.raises(ValidationError, match="either `jobs` or `pool` with `tasks`"):
        Stage.model_validate(
            {"name": "dev", "pool": "linux", "jobs": [{"pool": "linux", "tasks": [SCRIPT]}]}
        )


@pytest.mark.parametrize(
    "fields",
    [{}, {"pool": "linux"}, {"tasks": [SCRIPT]}],
    ids=["nothing", "pool-only", "tasks-only"],
)
def test_stage_needs_pool_and_tasks_or_jobs(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="needs `pool` and `tasks`, or `jobs`"):
        Stage.model_validate({"name": "dev", **fields})


def test_stage_with_empty_tasks_is_rejected() -> None:
    with pytest.raises(ValidationError, match="`tasks` is empty"):
        Stage.model_validate({"name": "dev", "pool": "linux", "tasks": []})


def test_stage_with_empty_jobs_is_rejected() -> None:
    with pytest.raises(ValidationError, match="`jobs` is empty"):
        Stage.model_validate({"name": "dev", "jobs": []})


def test_duplicate_job_names_in_a_stage_are_rejected() -> None:
    with pytest.raises(ValidationError, match="job names must be unique"):
        Stage.model_validate(
            {
                "name": "dev",
                "jobs": [
                    {"name": "web", "pool": "a", "tasks": [SCRIPT]},
                    {"name": "web", "pool": "b", "tasks": [SCRIPT]},
                ],
            }
        )


def test_duplicate_task_names_in_a_job_are_rejected() -> None:
    with pytest.raises(ValidationError, match="task name 'deploy' is used twice in job 'job'"):
        Stage.model_validate(stage("dev", tasks=[SCRIPT, SCRIPT]))


def test_duplicate_task_names_in_an_explicit_job_name_the_job() -> None:
    with pytest.raises(ValidationError, match="used twice in job 'web'"):
        Stage.model_validate(
            {"name": "dev", "jobs": [{"name": "web", "pool": "a", "tasks": [SCRIPT, SCRIPT]}]}
        )


def test_same_task_name_in_two_jobs_is_allowed() -> None:
    two = Stage.model_validate(
        {
            "name": "dev",
            "jobs": [
                {"name": "web", "pool": "a", "tasks": [SCRIPT]},
                {"name": "db", "pool": "b", "tasks": [SCRIPT]},
            ],
        }
    )
    assert len(two.all_jobs()) == 2


def test_job_needs_at_least_one_task() -> None:
    with pytest.raises(ValidationError):
        Job(pool="linux", tasks=[])


def test_unknown_field_is_rejected_with_its_name() -> None:
    with pytest.raises(ValidationError, match="scirpt"):
        Task.model_validate({"name": "t", "scirpt": "true"})


def test_stage_trigger_text_reads_like_the_yaml() -> None:
    assert Stage.model_validate(stage("dev")).trigger_text == "after release"
    assert Stage.model_validate(stage("prod", "manual")).trigger_text == "manual"
    assert Stage.model_validate(stage("qa", after("dev", "ci"))).trigger_text == "after dev, ci"


def test_stage_upstream_lists_after_stages_only() -> None:
    assert Stage.model_validate(stage("qa", after("dev"))).upstream == ["dev"]
    assert Stage.model_validate(stage("prod", "manual")).upstream == []


# --- variables and secrets ------------------------------------------------------------


@pytest.mark.parametrize("name", ["1ST", "MY-VAR", "my var", "", "A.B", "é"])
@pytest.mark.parametrize("where", ["pipeline", "stage", "task"])
def test_invalid_variable_names_are_rejected(name: str, where: str) -> None:
    with pytest.raises(ValidationError, match="is not a valid variable name"):
        if where == "pipeline":
            pipeline(stage("dev"), variables={name: "x"})
        elif where == "stage":
            Stage.model_validate(stage("dev", variables={name: "x"}))
        else:
            Task.model_validate({**SCRIPT, "env": {name: "x"}})


@pytest.mark.parametrize("name", ["TARGET", "_private", "db_password2", "a"])
def test_valid_variable_names_are_accepted(name: str) -> None:
    assert name in pipeline(stage("dev"), variables={name: "x"}).variables


def test_yaml_scalars_become_variable_text() -> None:
    plain = Stage.model_validate(stage("dev", variables={"PORT": 8001, "DEBUG": True, "R": 1.5}))
    assert plain.variables == {"PORT": "8001", "DEBUG": "true", "R": "1.5"}


@pytest.mark.parametrize(
    ("ref", "kind", "location"),
    [
        ("env:DB_PASSWORD", "env", "DB_PASSWORD"),
        ("file:/etc/stageflow/token", "file", "/etc/stageflow/token"),
        ("file:C:/keys/a:b", "file", "C:/keys/a:b"),
    ],
)
def test_secret_ref_has_a_kind_and_a_location(ref: str, kind: str, location: str) -> None:
    secret = SecretRef(secret=ref)
    assert (secret.kind, secret.location) == (kind, location)


@pytest.mark.parametrize("ref", ["vault:db", "env:", "file:", "DB_PASSWORD", "", "ENV:X"])
def test_secret_ref_rejects_unknown_sources(ref: str) -> None:
    with pytest.raises(ValidationError, match="a secret is `env:NAME` or `file:PATH`"):
        SecretRef(secret=ref)


def test_variable_given_as_a_secret_mapping_becomes_a_secret_ref() -> None:
    plain = pipeline(stage("dev"), variables={"DB": {"secret": "env:DB_PASSWORD"}, "A": "b"})
    assert plain.variables["DB"] == SecretRef(secret="env:DB_PASSWORD")
    assert plain.variables["A"] == "b"


def test_variable_with_a_bad_secret_source_is_rejected() -> None:
    with pytest.raises(ValidationError):
        pipeline(stage("dev"), variables={"DB": {"secret": "vault:db"}})


# --- tasks ----------------------------------------------------------------------------

KIND_SPECS: dict[str, Any] = {
    "script": "echo hi",
    "file": "app/deploy.sh",
    "template": {"source": "app/config.j2", "target": "config.ini"},
    "copy": {"sources": ["app/*.jar"], "target": "lib"},
    "http": {"url": "https://example.test/health"},
}


@pytest.mark.parametrize("kind", list(KIND_SPECS))
def test_task_with_exactly_one_kind_is_accepted(kind: str) -> None:
    task = Task.model_validate({"name": "t", kind: KIND_SPECS[kind]})
    assert task.kind == kind
    assert task.spec_of(kind) is not None


def test_task_without_a_kind_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"needs exactly one of .* \(found: none\)"):
        Task.model_validate({"name": "t"})


@pytest.mark.parametrize(
    ("first", "second"), [("script", "file"), ("script", "copy"), ("template", "http")]
)
def test_task_with_two_kinds_is_rejected(first: str, second: str) -> None:
    fields = {"name": "t", first: KIND_SPECS[first], second: KIND_SPECS[second]}
    with pytest.raises(ValidationError, match=f"found: {first}, {second}"):
        Task.model_validate(fields)


def test_copy_task_survives_a_json_round_trip() -> None:
    task = Task.model_validate({"name": "jars", "copy": KIND_SPECS["copy"]})
    text = task.model_dump_json()
    assert '"copy":' in text and '"copy_"' not in text
    again = Task.model_validate_json(text)
    assert again == task
    assert again.kind == "copy"
    assert again.copy_ is not None and again.copy_.sources == ["app/*.jar"]


def test_copy_task_inside_a_pipeline_survives_a_json_round_trip() -> None:
    # The pipeline travels inside ReleaseSpec as JSON; nested tasks must use the alias too.
    plain = pipeline(stage("dev", tasks=[{"name": "jars", "copy": KIND_SPECS["copy"]}]))
    text = plain.model_dump_json()
    assert '"copy_"' not in text
    assert Pipeline.model_validate_json(text) == plain


def test_task_durations_survive_a_json_round_trip() -> None:
    task = Task(name="t", script="true", timeout="1h30m")
    assert Task.model_validate_json(task.model_dump_json()).timeout == timedelta(minutes=90)


@pytest.mark.parametrize("retries", [-1, 11])
def test_task_retries_are_bounded(retries: int) -> None:
    with pytest.raises(ValidationError):
        Task(name="t", script="true", retries=retries)


# --- pipeline DAG checks --------------------------------------------------------------


def test_pipeline_with_a_valid_dag_is_accepted() -> None:
    plain = pipeline(
        stage("dev"),
        stage("qa", after("dev")),
        stage("perf", after("dev")),
        stage("prod", after("qa", "perf")),
        stage("hotfix", "manual"),
    )
    assert plain.stage_names == ["dev", "qa", "perf", "prod", "hotfix"]
    assert plain.stage("prod").upstream == ["qa", "perf"]


def test_pipeline_stage_lookup_of_an_unknown_stage_raises_key_error() -> None:
    with pytest.raises(KeyError):
        pipeline(stage("dev")).stage("prod")


def test_stage_after_an_unknown_stage_is_rejected() -> None:
    with pytest.raises(ValidationError, match="'qa' triggers after unknown stage 'dve'"):
        pipeline(stage("dev"), stage("qa", after("dve")))


def test_stage_after_itself_is_rejected() -> None:
    with pytest.raises(ValidationError, match="'qa' triggers after itself"):
        pipeline(stage("dev"), stage("qa", after("dev", "qa")))


def test_stage_trigger_cycle_is_rejected_with_its_path() -> None:
    with pytest.raises(ValidationError, match="form a cycle") as raised:
        pipeline(
            stage("dev"), stage("a", after("c")), stage("b", after("a")), stage("c", after("b"))
        )
    path = raised.value.errors()[0]["msg"].split("form a cycle: ")[1].split(" -> ")
    assert path[0] == path[-1]
    assert set(path) == {"a", "b", "c"}


def test_duplicate_stage_names_are_rejected() -> None:
    with pytest.raises(ValidationError, match="stage name 'dev' is used twice"):
        pipeline(stage("dev"), stage("dev", "manual"))


def test_duplicate_artifact_aliases_are_rejected() -> None:
    artifacts = [
        {"alias": "app", "type": "local", "path": "./drops"},
        {"alias": "app", "type": "git", "repository": "https://example.test/app.git"},
    ]
    with pytest.raises(ValidationError, match="artifact alias 'app' is used twice"):
        pipeline(stage("dev"), artifacts=artifacts)


def test_pipeline_needs_at_least_one_stage() -> None:
    with pytest.raises(ValidationError):
        Pipeline.model_validate({"name": "webapp", "stages": []})


def new(*stages: dict[str, Any], **extra: Any) -> Pipeline:
    """A pipeline validated as a new one is (`pipeline validate`, `release create`)."""
    return Pipeline.validate_new({"name": "webapp", "stages": list(stages), **extra})


# --- names that become parts of paths --------------------------------------------------


@pytest.mark.parametrize("name", ["a..b", "..", "a/b", ".hidden", "/abs", "x..", "a b", ""])
@pytest.mark.parametrize("where", ["pipeline", "stage", "job", "pool", "artifact alias"])
def test_names_that_could_leave_their_folder_are_refused(name: str, where: str) -> None:
    artifact = {"alias": "app", "type": "local", "path": "./drops"}
    given = {
        "pipeline": lambda: new(stage("dev"), name=name),
        "stage": lambda: new(stage(name)),
        "job": lambda: new(
            {"name": "dev", "jobs": [{"name": name, "pool": "linux", "tasks": [SCRIPT]}]}
        ),
        "pool": lambda: new({**stage("dev"), "pool": name}),
        "artifact alias": lambda: new(stage("dev"), artifacts=[{**artifact, "alias": name}]),
    }
    with pytest.raises(ValidationError, match="is not a valid name"):
        given[where]()


@pytest.mark.parametrize("name", ["webapp", "web.app", "v1.2-rc_3", "a.b.c", "x."])
def test_names_with_single_dots_are_valid(name: str) -> None:
    assert new(stage(name), name=name).stages[0].name == name


def test_task_names_are_free_text_even_with_dots_and_slashes() -> None:
    task = {"name": "upgrade 1.2..1.3 / db", "script": "true"}
    assert new(stage("dev", tasks=[task])).stages[0].all_jobs()[0].tasks[0].name == task["name"]


def test_a_release_recorded_before_the_new_rules_still_decodes() -> None:
    # Histories hold pipelines validated by older rules: a worker upgrade must not
    # make a running release undecodable.
    old = Pipeline.model_validate(
        {"name": "a..b", "variables": {"PYTHONPATH": "/opt/lib"}, "stages": [stage("dev")]}
    )
    assert Pipeline.model_validate_json(old.model_dump_json()).name == "a..b"


# --- variables that change how a task's shell or programs start ---------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("BASH_ENV", "BASH_ENV is read by the task's shell at start: not allowed as a variable"),
        ("ENV", "ENV is read by the task's shell at start"),
        ("SHELLOPTS", "read by the task's shell"),
        ("BASHOPTS", "read by the task's shell"),
        ("PS4", "read by the task's shell"),
        ("PROMPT_COMMAND", "read by the task's shell"),
        ("IFS", "read by the task's shell"),
        ("CDPATH", "read by the task's shell"),
        ("GLOBIGNORE", "read by the task's shell"),
        ("LD_PRELOAD", "LD_PRELOAD is read by the dynamic loader"),
        ("LD_LIBRARY_PATH", "read by the dynamic loader"),
        ("PYTHONPATH", "PYTHONPATH is read by Python at start"),
        ("PYTHONSTARTUP", "read by Python"),
        ("PYTHONHOME", "read by Python"),
        ("PERL5LIB", "read by Perl"),
        ("PERL5OPT", "read by Perl"),
        ("RUBYOPT", "read by Ruby"),
        ("NODE_OPTIONS", "read by Node.js"),
        ("STAGEFLOW_STAGE", "STAGEFLOW_STAGE is one of the names the agent sets for every task"),
        ("STAGEFLOW_WORK_DIR", "the agent sets"),
    ],
)
@pytest.mark.parametrize("where", ["pipeline", "stage", "task env", "release time"])
def test_variables_read_by_shells_and_loaders_are_refused_everywhere(
    name: str, reason: str, where: str
) -> None:
    if where == "release time":
        settable = new(stage("dev"), variables={"V": {"value": "1", "settable": True}})
        problem = settable.release_time_problem(name)
        assert problem is not None and reason in problem
        return
    with pytest.raises(ValidationError, match=re.escape(reason)):
        if where == "pipeline":
            new(stage("dev"), variables={name: "x"})
        elif where == "stage":
            new(stage("dev", variables={name: "x"}))
        else:
            new(stage("dev", tasks=[{**SCRIPT, "env": {name: "x"}}]))


@pytest.mark.parametrize("name", ["PATH", "ENVIRONMENT", "HOME_DIR", "LDAP_HOST", "MY_LD_PATH"])
def test_ordinary_names_that_look_alike_are_valid(name: str) -> None:
    assert name in new(stage("dev"), variables={name: "x"}).variables


# --- variables a release may set ---------------------------------------------------------


def test_a_variable_declared_settable_keeps_its_value_and_is_listed_settable() -> None:
    plain = new(
        stage("dev"),
        variables={
            "VERSION": {"value": 1.0, "settable": True},
            "CHANNEL": {"settable": True},
            "MODE": {"value": "fast"},
            "TARGET": "/srv",
        },
    )
    assert plain.variables == {"VERSION": "1.0", "CHANNEL": "", "MODE": "fast", "TARGET": "/srv"}
    assert plain.settable_variables == ["VERSION", "CHANNEL"]
    assert Pipeline.model_validate_json(plain.model_dump_json()) == plain


def test_only_declared_settable_variables_may_be_set_at_release_time() -> None:
    plain = new(
        stage("dev"),
        variables={"VERSION": {"value": "1.0", "settable": True}, "MODE": "fast"},
    )
    assert plain.release_time_problem("VERSION") is None
    assert plain.release_time_problem("MODE") == (
        "'MODE' is not settable at release time: declare it"
        " `MODE: {value: ..., settable: true}` (settable: VERSION)"
    )
    assert plain.release_time_problem("EXTRA") == (
        "'EXTRA' is not a variable of pipeline webapp (settable: VERSION)"
    )


def test_a_pipeline_without_settable_variables_takes_no_release_time_values() -> None:
    problem = new(stage("dev"), variables={"A": "1"}).release_time_problem("A")
    assert problem is not None and "(settable: none)" in problem


def test_secrets_and_stage_variables_are_not_settable() -> None:
    with pytest.raises(ValidationError, match="only pipeline variables are settable"):
        new(stage("dev", variables={"PORT": {"value": "80", "settable": True}}))
    with pytest.raises(ValidationError, match="unknown field 'settable'|Extra inputs"):
        new(stage("dev"), variables={"T": {"secret": "env:T", "settable": True}})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"value": "1", "setable": True}, "unknown field 'setable'"),
        ({"value": "1", "settable": "yes"}, "`settable` is true or false (found 'yes')"),
    ],
)
def test_a_misspelt_settable_form_is_refused(value: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        new(stage("dev"), variables={"VERSION": value})


# --- thousands of stages ------------------------------------------------------------------


def test_ten_thousand_stages_validate_in_linear_time() -> None:
    stages = [stage(f"s{index}") for index in range(10_000)]
    started = time.perf_counter()
    assert len(new(*stages).stages) == 10_000
    # It took 1.7 s in `_consistent` alone when each name was counted in the whole list.
    assert time.perf_counter() - started < 5


# --- release helpers -----------------------------------------------------------------


def release_spec(plain: Pipeline, variables: dict[str, str] | None = None) -> ReleaseSpec:
    return ReleaseSpec(
        pipeline=plain,
        number=1,
        name="Release-1",
        variables=variables or {},
        created_by="alice",
        created_at=datetime(2024, 3, 7, tzinfo=UTC),
        revision="0" * 64,
    )


def test_merged_variables_let_stage_override_pipeline_and_release_override_both() -> None:
    plain = pipeline(
        stage("dev", variables={"PORT": "8001", "LEVEL": "stage"}),
        variables={"TARGET": "/srv/app", "PORT": "80", "LEVEL": "pipeline"},
    )
    spec = release_spec(plain, variables={"LEVEL": "release", "EXTRA": "1"})
    assert merged_variables(spec, plain.stage("dev")) == {
        "TARGET": "/srv/app",
        "PORT": "8001",
        "LEVEL": "release",
        "EXTRA": "1",
    }


def test_merged_variables_of_another_stage_do_not_see_this_stages_variables() -> None:
    plain = pipeline(
        stage("dev", variables={"PORT": "8001"}),
        stage("qa", after("dev")),
        variables={"PORT": "80"},
    )
    assert merged_variables(release_spec(plain), plain.stage("qa")) == {"PORT": "80"}


def test_release_time_value_replaces_a_secret_of_the_same_name() -> None:
    plain = pipeline(stage("dev"), variables={"TOKEN": {"secret": "env:TOKEN"}})
    merged = merged_variables(release_spec(plain, {"TOKEN": "plain"}), plain.stage("dev"))
    assert merged == {"TOKEN": "plain"}


def test_split_secrets_separates_plain_values_from_secret_refs() -> None:
    secret = SecretRef(secret="file:/run/token")
    plain, secrets = split_secrets({"A": "1", "TOKEN": secret, "B": "two"})
    assert plain == {"A": "1", "B": "two"}
    assert secrets == {"TOKEN": secret}


def test_split_secrets_of_nothing_is_two_empty_dicts() -> None:
    assert split_secrets({}) == ({}, {})


def views(*statuses: StageStatus) -> list[StageView]:
    return [StageView(name=f"s{i}", status=status) for i, status in enumerate(statuses)]


S = StageStatus


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), "not_deployed"),
        ((S.NOT_DEPLOYED, S.NOT_DEPLOYED), "not_deployed"),
        ((S.SUCCEEDED, S.SUCCEEDED), "succeeded"),
        ((S.SUCCEEDED, S.NOT_DEPLOYED), "partially_deployed"),
        ((S.SUCCEEDED, S.PARTIALLY_SUCCEEDED), "partially_succeeded"),
        ((S.PARTIALLY_SUCCEEDED, S.CANCELED), "canceled"),
        ((S.CANCELED, S.FAILED), "failed"),
        ((S.FAILED, S.IN_PROGRESS), "in_progress"),
        ((S.FAILED, S.QUEUED), "in_progress"),
        ((S.SUCCEEDED, S.IN_PROGRESS), "in_progress"),
    ],
)
def test_release_status_of_an_active_release_sums_up_its_stages(
    statuses: tuple[StageStatus, ...], expected: str
) -> None:
    assert release_status_of(views(*statuses), "active") == expected


@pytest.mark.parametrize("state", ["abandoned", "closed"])
def test_release_status_of_an_inactive_release_is_its_state(state: str) -> None:
    assert release_status_of(views(S.IN_PROGRESS, S.FAILED), state) == state
