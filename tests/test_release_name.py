"""Release names from `release_name_format`: a sandboxed, strict Jinja2 template."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from workflows.pipeline import Pipeline
from workflows.pipeline_workflow import render_release_name

NOW = datetime(2024, 3, 7, 9, 5, 30)


def pipeline(release_name_format: str, **variables: Any) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "webapp",
            "release_name_format": release_name_format,
            "variables": variables,
            "stages": [
                {"name": "dev", "pool": "linux", "tasks": [{"name": "t", "script": "true"}]}
            ],
        }
    )


def test_default_format_is_release_dash_number() -> None:
    plain = Pipeline.model_validate(
        {
            "name": "webapp",
            "stages": [{"name": "dev", "pool": "l", "tasks": [{"name": "t", "script": "x"}]}],
        }
    )
    assert render_release_name(plain, 12, NOW) == "Release-12"


def test_name_contains_the_release_number() -> None:
    assert render_release_name(pipeline("Release-{{ number }}"), 7, NOW) == "Release-7"


def test_number_can_be_formatted_with_a_filter() -> None:
    assert render_release_name(pipeline("R{{ '%04d' | format(number) }}"), 7, NOW) == "R0007"


def test_name_contains_the_pipeline_name() -> None:
    assert render_release_name(pipeline("{{ pipeline }}-{{ number }}"), 3, NOW) == "webapp-3"


def test_date_is_the_creation_time_and_can_be_formatted() -> None:
    fmt = "{{ date.strftime('%Y%m%d') }}.{{ number }}"
    assert render_release_name(pipeline(fmt), 2, NOW) == "20240307.2"


def test_date_attributes_are_available() -> None:
    fmt = "{{ date.year }}.{{ date.month }}.{{ number }}"
    assert render_release_name(pipeline(fmt), 4, NOW) == "2024.3.4"


def test_plain_variables_can_be_used_in_the_name() -> None:
    fmt = "v{{ MAJOR }}.{{ number }}-{{ CHANNEL | upper }}"
    assert render_release_name(pipeline(fmt, MAJOR=2, CHANNEL="beta"), 9, NOW) == "v2.9-BETA"


def test_variable_values_are_data_not_templates() -> None:
    plain = pipeline("{{ GREETING }}", GREETING="{{ 7*7 }}")
    assert render_release_name(plain, 1, NOW) == "{{ 7*7 }}"


def test_release_number_wins_over_a_variable_called_number() -> None:
    assert render_release_name(pipeline("R{{ number }}", number="x"), 5, NOW) == "R5"


def test_secret_variables_are_not_available_to_the_name() -> None:
    plain = pipeline("{{ TOKEN }}", TOKEN={"secret": "env:TOKEN"})
    with pytest.raises(UndefinedError):
        render_release_name(plain, 1, NOW)


def test_unknown_name_in_the_format_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(UndefinedError, match="VERSION"):
        render_release_name(pipeline("Release-{{ VERSION }}"), 1, NOW)


def test_format_cannot_reach_python_internals() -> None:
    with pytest.raises(SecurityError):
        render_release_name(pipeline("{{ date.__class__.__mro__ }}"), 1, NOW)


def test_broken_format_is_a_template_syntax_error() -> None:
    with pytest.raises(TemplateSyntaxError):
        render_release_name(pipeline("Release-{{ number "), 1, NOW)


def test_surrounding_whitespace_is_trimmed() -> None:
    assert render_release_name(pipeline("  Release-{{ number }}\n"), 8, NOW) == "Release-8"
