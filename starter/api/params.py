"""The shapes of what a request names, shared by the routes: a bad one is a 422 naming
its field, never a database error (a 500) further in."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

# A pipeline's, stage's or person's name: no slash, no control character.
NAME_PATTERN = r"^[^/\x00-\x1f]+$"
# Free text (a comment, a reason): anything but NUL, which PostgreSQL cannot store.
TEXT_PATTERN = r"^[^\x00]*$"
# A release number fits the record's integer column on every database.
MAX_NUMBER = 2**31 - 1

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=NAME_PATTERN)]
PipelineName = Annotated[str, Path(min_length=1, max_length=200, pattern=NAME_PATTERN)]
StageName = Annotated[str, Path(min_length=1, max_length=200, pattern=NAME_PATTERN)]
ReleaseNumber = Annotated[int, Path(ge=1, le=MAX_NUMBER)]
NameQuery = Annotated[str | None, Query(min_length=1, max_length=200, pattern=NAME_PATTERN)]
WordQuery = Annotated[str | None, Query(min_length=1, max_length=40, pattern=NAME_PATTERN)]

# A comment, a reason, a description.
Text = Annotated[str, Field(max_length=2000, pattern=TEXT_PATTERN)]
