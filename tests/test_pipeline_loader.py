"""The pipeline loader: valid YAML becomes a Pipeline, invalid YAML says what and where."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from textwrap import dedent

import pytest

from activities.pipeline_loader import (
    InvalidPipeline,
    PipelineProblem,
    load_pipeline,
    parse_pipeline,
    pipeline_json_schema,
)
from tests.conftest import Stack
from workflows.pipeline import SecretRef

WEBAPP = """\
name: webapp
release_name_format: "Release-{{ number }}"
variables:
  TARGET: /srv/webapp
  DB_PASSWORD: {secret: env:WEBAPP_DB_PASSWORD}
artifacts:
  - alias: app
    type: local
    path: ./drops/webapp
stages:
  - name: dev
    trigger: after_release
    pool: linux
    variables: {PORT: 8001}
    tasks:
      - name: install
        script: |
          mkdir -p "$TARGET/dev"
      - name: smoke test
        shell: python
        script: print("hi")
        timeout: 2m
      - name: clean up
        condition: always
        script: rm -rf "$STAGEFLOW_WORK_DIR/tmp"
  - name: qa
    trigger: {after_stages: [dev]}
    pool: linux
    tasks: [{name: t, script: "true"}]
"""


def write(tmp_path: Path, text: str) -> Path:
    """Write a pipeline file; `text` starts at line 1 after dedenting."""
    path = tmp_path / "webapp.yml"
    path.write_text(dedent(text).lstrip("\n"))
    return path


def problems_of(tmp_path: Path, text: str) -> list[PipelineProblem]:
    path = write(tmp_path, text)
    with pytest.raises(InvalidPipeline) as caught:
        load_pipeline(path)
    return caught.value.problems


def where(problems: list[PipelineProblem]) -> list[tuple[int | None, str]]:
    return [(problem.line, problem.path) for problem in problems]


def test_valid_pipeline_loads_with_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, WEBAPP)

    pipeline, revision = load_pipeline(path)

    assert revision == hashlib.sha256(path.read_bytes()).hexdigest()
    assert pipeline.name == "webapp"
    assert pipeline.stage_names == ["dev", "qa"]
    assert pipeline.variables["DB_PASSWORD"] == SecretRef(secret="env:WEBAPP_DB_PASSWORD")
    assert pipeline.artifacts[0].path == "./drops/webapp"  # left relative to the file
    dev = pipeline.stage("dev")
    assert dev.variables == {"PORT": "8001"}
    assert [task.name for task in dev.all_jobs()[0].tasks] == ["install", "smoke test", "clean up"]
    assert dev.tasks is not None and dev.tasks[1].timeout == timedelta(minutes=2)
    assert pipeline.stage("qa").upstream == ["dev"]


def test_parse_pipeline_reads_text() -> None:
    assert parse_pipeline(WEBAPP).stage_names == ["dev", "qa"]


def test_typo_in_a_field_names_file_line_path_and_the_likely_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            pool: linux
            tasks:
              - name: install
                script: make install
                timout: 2m
        """,
    )
    with pytest.raises(InvalidPipeline) as caught:
        load_pipeline(path)

    assert str(caught.value) == (
        f"{path}:8: stages[0].tasks[0].timout: unknown field 'timout' (did you mean 'timeout'?)"
    )


def test_bad_duration_names_its_path_and_line(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            pool: linux
            tasks:
              - name: install
                script: make install
              - name: smoke
                script: make smoke
                timeout: abc
        """,
    )

    assert where(problems) == [(10, "stages[0].tasks[1].timeout")]
    assert problems[0].message.startswith("'abc' is not a duration")


def test_missing_field_is_reported_at_its_mapping(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            pool: linux
            tasks:
              - name: install
                copy:
                  target: /srv/webapp
        """,
    )

    assert where(problems) == [(7, "stages[0].tasks[0].copy")]
    assert problems[0].message == "missing required field 'sources'"


def test_unknown_stage_in_after_stages_is_reported_at_the_stages_key(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        description: deploys the web app
        stages:
          - name: dev
            pool: linux
            tasks: [{name: t, script: "true"}]
          - name: qa
            trigger: {after_stages: [dve]}
            pool: linux
            tasks: [{name: t, script: "true"}]
        """,
    )

    assert where(problems) == [(3, "stages")]
    assert problems[0].message == (
        "stage 'qa' triggers after unknown stage 'dve' (stages: dev, qa)"
    )


def test_trigger_cycle_is_reported_at_the_stages_key(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp

        stages:
          - name: dev
            trigger: {after_stages: [qa]}
            pool: linux
            tasks: [{name: t, script: "true"}]
          - name: qa
            trigger: {after_stages: [dev]}
            pool: linux
            tasks: [{name: t, script: "true"}]
        """,
    )

    assert where(problems) == [(3, "stages")]
    assert problems[0].message.startswith("stage triggers form a cycle: ")


def test_duplicate_stage_names_are_reported_at_the_stages_key(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
          - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
        """,
    )

    assert [str(problem) for problem in problems] == [
        f"{tmp_path / 'webapp.yml'}:2: stages: stage name 'dev' is used twice"
    ]


def test_task_with_script_and_http_is_reported_at_the_task(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            pool: linux
            tasks:
              - name: install
                script: make install
              - name: ping
                script: curl localhost
                http: {url: "http://localhost/health"}
        """,
    )

    assert where(problems) == [(8, "stages[0].tasks[1]")]
    assert problems[0].message == (
        "task 'ping' needs exactly one of script, file, template, copy, http, "
        "manual_intervention (found: script, http)"
    )


def test_stage_without_tasks_or_jobs_is_reported_at_the_stage(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            pool: linux
            tasks: [{name: t, script: "true"}]
          - name: qa
            pool: linux
        """,
    )

    assert where(problems) == [(6, "stages[1]")]
    assert problems[0].message == "a stage needs `pool` and `tasks`, or `jobs`"


def test_bad_secret_ref_is_one_problem_at_the_secret(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        variables:
          TARGET: /srv/webapp
          DB_PASSWORD: {secret: vault:x}
        stages:
          - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
        """,
    )

    assert where(problems) == [(4, "variables.DB_PASSWORD.secret")]
    assert problems[0].message == "'vault:x': a secret is `env:NAME` or `file:PATH`"


def test_variable_of_neither_shape_is_one_problem(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        variables:
          HOSTS: [a, b]
        stages:
          - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
        """,
    )

    assert where(problems) == [(3, "variables.HOSTS")]
    assert problems[0].message == (
        "expected a valid string or a mapping like {secret: ...} (found a list)"
    )


def test_bad_trigger_speaks_of_the_member_its_shape_fits(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            trigger: on_release
            pool: linux
            tasks: [{name: t, script: "true"}]
          - name: qa
            trigger:
              after_stage: [dev]
            pool: linux
            tasks: [{name: t, script: "true"}]
        """,
    )

    assert [(problem.line, problem.path, problem.message) for problem in problems] == [
        (
            4,
            "stages[0].trigger",
            "Input should be 'after_release' or 'manual' (found 'on_release')",
        ),
        (8, "stages[1].trigger", "missing required field 'after_stages'"),
        (
            9,
            "stages[1].trigger.after_stage",
            "unknown field 'after_stage' (did you mean 'after_stages'?)",
        ),
    ]


def test_artifact_type_problems_point_at_the_type(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        artifacts:
          - alias: app
            type: s3
            path: ./drops
          - alias: tools
            path: ./tools
        stages:
          - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
        """,
    )

    assert [(problem.line, problem.path, problem.message) for problem in problems] == [
        (4, "artifacts[0].type", "'s3' is not one of 'local', 'http', 'git'"),
        (6, "artifacts[1]", "missing required field 'type'"),
    ]


def test_copy_task_path_uses_the_yaml_name(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            pool: linux
            tasks:
              - name: drop
                copy: {sources: [app/*], target: /srv, overwite: false}
        """,
    )

    assert where(problems) == [(7, "stages[0].tasks[0].copy.overwite")]
    assert problems[0].message == "unknown field 'overwite' (did you mean 'overwrite'?)"


def test_yaml_syntax_error_is_one_problem_at_its_line(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
           pool: linux
        """,
    )

    assert len(problems) == 1
    assert problems[0].line == 4
    assert problems[0].message.startswith("invalid YAML: ")


def test_duplicate_keys_are_reported_at_the_second_one(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: dev
            pool: linux
            tasks: [{name: t, script: "true"}]
            pool: windows
        """,
    )

    assert where(problems) == [(6, "stages[0].pool")]
    assert problems[0].message == "duplicate key 'pool' (first at line 4)"


@pytest.mark.parametrize(
    ("release_name_format", "message"),
    [
        ("Release-{{ numbr }}", "unknown name 'numbr' in the template"),
        ("Release-{{ number", "not a valid template: "),
    ],
)
def test_invalid_release_name_format_is_reported_at_its_line(
    tmp_path: Path, release_name_format: str, message: str
) -> None:
    problems = problems_of(
        tmp_path,
        f"""
        name: webapp
        variables: {{TARGET: /srv}}
        release_name_format: "{release_name_format}"
        stages:
          - {{name: dev, pool: linux, tasks: [{{name: t, script: "true"}}]}}
        """,
    )

    assert where(problems) == [(3, "release_name_format")]
    assert problems[0].message.startswith(message)


def test_release_name_format_may_use_variables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        name: webapp
        variables: {TARGET: /srv}
        release_name_format: "{{ pipeline }}-{{ TARGET }}-{{ date }}-{{ number }}"
        stages:
          - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
        """,
    )

    assert load_pipeline(path)[0].release_name_format.startswith("{{ pipeline }}")


def test_several_problems_are_all_reported_in_line_order(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: web app
        release_name_format: "{{ build }}"
        stages:
          - name: dev
            pool: linux
            pool: linux
            tasks:
              - name: install
                script: make install
                timeout: soon
              - name: smoke
                scirpt: make smoke
        """,
    )

    assert where(problems) == [
        (1, "name"),
        (2, "release_name_format"),
        (6, "stages[0].pool"),
        (10, "stages[0].tasks[0].timeout"),
        (12, "stages[0].tasks[1].scirpt"),
    ]
    assert "did you mean 'script'?" in problems[-1].message


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("", None, "the file is empty"),
        ("# nothing yet\n", None, "the file is empty"),
        ("- name: dev\n", 1, "the top level must be a mapping"),
    ],
)
def test_file_that_is_not_a_pipeline_is_one_problem(
    tmp_path: Path, text: str, line: int | None, message: str
) -> None:
    problems = problems_of(tmp_path, text)

    assert len(problems) == 1
    assert problems[0].line == line
    assert problems[0].message.startswith(message)


def test_missing_file_is_one_problem_without_a_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidPipeline) as caught:
        load_pipeline(tmp_path / "nope.yml")

    assert str(caught.value) == f"{tmp_path / 'nope.yml'}: file not found"
    assert caught.value.problems[0].line is None


def test_json_schema_describes_the_yaml_names() -> None:
    schema = pipeline_json_schema()

    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["title"] == "Stageflow pipeline"
    assert "copy" in schema["$defs"]["Task"]["properties"]
    assert "copy_" not in schema["$defs"]["Task"]["properties"]


# --- schedules and freezes: refused here rather than at deploy time --------------------

FROZEN_PROD = """\
name: webapp
stages:
  - name: dev
    pool: linux
    tasks: [{name: t, script: "true"}]
    freezes: [{cron: "0 18 * * fri", duration: 62h}]
  - name: qa
    pool: linux
    tasks: [{name: t, script: "true"}]
  - name: prod
    pool: linux
    tasks: [{name: t, script: "true"}]
    freezes:
      - {cron: "0 0 * * *", duration: 24h}
"""


def test_freezes_that_cover_all_time_are_refused_at_the_freezes(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, FROZEN_PROD)

    assert [str(problem) for problem in problems] == [
        f"{tmp_path / 'webapp.yml'}:13: stages[2].freezes: "
        "the freezes cover all time: a deployment could never start"
    ]


def test_weekly_freezes_in_a_time_zone_that_cover_the_week_are_refused(tmp_path: Path) -> None:
    # Friday 18:00 to Monday 08:00 is 62h, and 63h the weekend the clocks go back.
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: prod
            pool: linux
            tasks: [{name: t, script: "true"}]
            freezes:
              - {cron: "0 8 * * mon-fri", duration: 10h, timezone: Europe/Berlin}
              - {cron: "0 18 * * mon-thu", duration: 14h, timezone: Europe/Berlin}
              - {cron: "0 18 * * fri", duration: 63h, timezone: Europe/Berlin}
        """,
    )

    assert [(problem.line, problem.path, problem.message) for problem in problems] == [
        (6, "stages[0].freezes", "the freezes cover all time: a deployment could never start")
    ]


def test_a_schedule_whose_every_window_is_frozen_is_refused_at_the_schedule(
    tmp_path: Path,
) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: prod
            pool: linux
            tasks: [{name: t, script: "true"}]
            schedule: {days: [mon, tue, wed, thu, fri], time: "03:00", timezone: Europe/Berlin}
            freezes: [{cron: "0 0 * * mon-fri", duration: 6h, timezone: Europe/Berlin}]
        """,
    )

    assert [(problem.line, problem.path, problem.message) for problem in problems] == [
        (
            6,
            "stages[0].schedule",
            "every window of the schedule lies inside a freeze: a deployment could never start",
        )
    ]


def test_bad_cron_and_unknown_time_zone_are_refused_at_their_fields(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        stages:
          - name: prod
            pool: linux
            tasks: [{name: t, script: "true"}]
            freezes:
              - cron: "61 * * * *"
                duration: 1h
              - {cron: "0 0 * * *", duration: 1h, timezone: Mars/Olympus_Mons}
        """,
    )

    assert [(problem.line, problem.path, problem.message) for problem in problems] == [
        (
            7,
            "stages[0].freezes[0].cron",
            "cron '61 * * * *': minute field '61': 61 is out of range 0-59",
        ),
        (9, "stages[0].freezes[1].timezone", "unknown time zone 'Mars/Olympus_Mons'"),
    ]


def test_freezes_that_leave_a_start_are_valid(tmp_path: Path) -> None:
    pipeline, _ = load_pipeline(write(tmp_path, FROZEN_PROD.replace("24h", "23h")))

    assert pipeline.stages[2].freezes[0].duration == timedelta(hours=23)


@pytest.mark.parametrize("command", [["pipeline", "validate"], ["release", "create"]])
def test_cli_exits_2_when_the_freezes_cover_all_time(stack: Stack, command: list[str]) -> None:
    path = write(stack.root, FROZEN_PROD)

    # `pipeline validate` reads the file itself; `release create` has the API refuse it
    # (422), before any workflow starts, with the same line.
    result = stack.cli(*command, str(path), timeout=60)

    assert result.returncode == 2
    assert result.stderr == (
        f"error: {path}:13: stages[2].freezes: "
        "the freezes cover all time: a deployment could never start\n"
    )


# --- input too big or too deep: refused before anything is built -------------------------

ONE_STAGE = "stages:\n  - {name: dev, pool: linux, tasks: [{name: t, script: 'true'}]}\n"


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    path.write_text("name: big\nvariables:\n  BIG: " + "y" * 2_500_000 + "\n" + ONE_STAGE)

    with pytest.raises(InvalidPipeline) as caught:
        load_pipeline(path)

    assert str(caught.value) == f"{path}: the file is 2.4 MB: a pipeline file is at most 1.0 MB"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[" * 20_000, "invalid YAML: "),  # the parser's own limit
        ("[" * 20_000 + "]" * 20_000, "invalid YAML: "),
        ("[" * 100 + "]" * 100, "nested too deeply (a pipeline nests at most 64 levels)"),
    ],
)
def test_deep_nesting_is_one_problem_not_a_recursion_error(value: str, message: str) -> None:
    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline(f"name: x\nstages: {value}\n")

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].message.startswith(message)


def test_aliases_that_expand_past_the_limit_are_refused() -> None:
    text = "name: x\na0: &a0 [" + ",".join(["xxxxxxxxxx"] * 10) + "]\n"
    for level in range(1, 8):
        text += f"a{level}: &a{level} [" + ",".join([f"*a{level - 1}"] * 10) + "]\n"
    text += "stages: *a7\n"

    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline(text)

    assert [problem.message for problem in caught.value.problems] == [
        "with its aliases expanded the document is more than 4.0 MB"
        " (a pipeline file is at most 1.0 MB)"
    ]


def test_an_alias_inside_its_own_value_is_refused() -> None:
    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline("name: x\nstages: &s [*s]\n")

    assert [problem.message for problem in caught.value.problems] == [
        "an alias refers to a value that holds it"
    ]


def test_a_long_trigger_chain_listed_last_first_validates() -> None:
    # Listed last stage first, the cycle check follows the whole chain (without recursion).
    lines = ["name: chain", "stages:"]
    for index in reversed(range(2000)):
        trigger = f", trigger: {{after_stages: [s{index - 1}]}}" if index else ""
        lines.append(
            f"  - {{name: s{index}, pool: linux, tasks: [{{name: t, script: x}}]{trigger}}}"
        )

    pipeline = parse_pipeline("\n".join(lines) + "\n")

    assert len(pipeline.stages) == 2000
    assert pipeline.stage("s1999").upstream == ["s1998"]


# --- release names are rendered at validation ---------------------------------------------


@pytest.mark.parametrize(
    ("release_name_format", "message"),
    [
        (
            "R{{ number // 0 }}",
            "cannot be rendered for release 1: integer division or modulo by zero",
        ),
        (
            "R{{ number }}\\nX",
            "renders 'R1\\nX' for release 1: a release name is one line of printable text",
        ),
        ("R{{ number }}\\tX", "renders 'R1\\tX' for release 1: a release name is one line"),
        ("{{ '' }}", "renders an empty name for release 1"),
        ("{{ 'x' * 300 }}", "renders 300 characters for release 1: a release name is at most 200"),
        ("R{{ 10 // (number - 10) }}", "cannot be rendered for release 10: integer division"),
        ("{{ date.__class__ }}", "cannot be rendered for release 1: "),
    ],
)
def test_a_release_name_format_that_renders_badly_is_refused_at_its_line(
    release_name_format: str, message: str
) -> None:
    with pytest.raises(InvalidPipeline) as caught:
        parse_pipeline(f'name: webapp\nrelease_name_format: "{release_name_format}"\n{ONE_STAGE}')

    assert [(problem.line, problem.path) for problem in caught.value.problems] == [
        (2, "release_name_format")
    ]
    assert caught.value.problems[0].message.startswith(message)


def test_a_release_name_may_use_the_number_date_pipeline_and_variables() -> None:
    text = (
        'name: webapp\nvariables: {MAJOR: 2}\nrelease_name_format: "v{{ MAJOR }}.{{ number }}'
        " {{ pipeline }} {{ date.strftime('%Y-%m-%d') }}\"\n" + ONE_STAGE
    )
    assert parse_pipeline(text).release_name_format.startswith("v{{ MAJOR }}")


# --- names and variables --------------------------------------------------------------------


def test_dot_dot_names_and_read_at_start_variables_name_their_fields(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: a..b
        variables: {BASH_ENV: /tmp/evil.sh}
        stages:
          - name: dev
            jobs:
              - name: x..y
                pool: linux
                tasks: [{name: upgrade 1.2..1.3, script: "true", env: {LD_PRELOAD: x.so}}]
        """,
    )

    assert [
        (problem.line, problem.path, problem.message.split(":")[0]) for problem in problems
    ] == [
        (1, "name", "'a..b' is not a valid name"),
        (2, "variables.BASH_ENV", "BASH_ENV is read by the task's shell at start"),
        (6, "stages[0].jobs[0].name", "'x..y' is not a valid name"),
        (
            8,
            "stages[0].jobs[0].tasks[0].env.LD_PRELOAD",
            "LD_PRELOAD is read by the dynamic loader of every program the task starts",
        ),
    ]


def test_settable_variables_are_declared_at_the_variable_not_as_a_list(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        """
        name: webapp
        variables:
          VERSION: "1.0"
        settable_variables: [VERSION]
        stages:
          - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
        """,
    )

    assert where(problems) == [(4, "settable_variables")]
    assert "`NAME: {value: ..., settable: true}`" in problems[0].message


def test_a_settable_variable_loads_with_its_value(tmp_path: Path) -> None:
    pipeline, _ = load_pipeline(
        write(
            tmp_path,
            """
            name: webapp
            variables:
              VERSION: {value: "1.0", settable: true}
            stages:
              - {name: dev, pool: linux, tasks: [{name: t, script: "true"}]}
            """,
        )
    )

    assert (pipeline.variables, pipeline.settable_variables) == ({"VERSION": "1.0"}, ["VERSION"])
