"""Read a pipeline YAML file into a `Pipeline`, or say what is wrong and where.

Every problem names the file, the line and the path inside the document
(`stages[1].tasks[0].timeout`), so the CLI can print one line per problem. YAML
is composed into a node tree first: the nodes know their lines, the plain data
handed to pydantic does not, and the tree is how an error's `loc` finds its line.
"""

from __future__ import annotations

import contextlib
import difflib
import gc
import hashlib
import os
import re
import types
import typing
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.sandbox
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from activities.calendar import CalendarProblem, calendar_problems, cron_problems
from activities.limits import (
    PIPELINE_DEPTH_LIMIT,
    PIPELINE_EXPANDED_LIMIT,
    PIPELINE_FILE_LIMIT,
    megabytes,
)
from workflows import pipeline as pipeline_models
from workflows.pipeline import Pipeline
from workflows.pipeline_workflow import render_release_name

# Names a release name template may use besides the pipeline's variables.
RELEASE_NAME_NAMES = frozenset({"number", "pipeline", "date"})

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Errors whose message names the value already, or where showing it would not help.
_NO_FOUND_SUFFIX = frozenset(
    {
        "value_error",
        "assertion_error",
        "extra_forbidden",
        "missing",
        "model_type",
        "model_attributes_type",
        "dict_type",
        "union_tag_invalid",
        "union_tag_not_found",
    }
)

Loc = Sequence[str | int]


class PipelineProblem(BaseModel):
    """One thing wrong with a pipeline file, with where it is."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int | None = None
    path: str = ""
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class InvalidPipeline(Exception):
    """The pipeline file cannot be used; `problems` says why, one entry each."""

    def __init__(self, problems: list[PipelineProblem]) -> None:
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def load_pipeline(path: str | Path) -> tuple[Pipeline, str]:
    """Read, parse and validate a pipeline file.

    Returns the pipeline and the sha256 hex digest of the file's bytes, which
    is the revision a release records. Raises InvalidPipeline.
    """
    file = str(path)
    try:
        with open(path, "rb") as stream:
            content = stream.read(PIPELINE_FILE_LIMIT + 1)
            size = os.fstat(stream.fileno()).st_size
    except FileNotFoundError:
        raise InvalidPipeline([PipelineProblem(file=file, message="file not found")]) from None
    except OSError as exc:
        problem = PipelineProblem(file=file, message=f"cannot read the file: {exc.strerror}")
        raise InvalidPipeline([problem]) from None
    if len(content) > PIPELINE_FILE_LIMIT:
        message = (
            f"the file is {megabytes(max(size, len(content)))}:"
            f" a pipeline file is at most {megabytes(PIPELINE_FILE_LIMIT)}"
        )
        raise InvalidPipeline([PipelineProblem(file=file, message=message)])
    revision = hashlib.sha256(content).hexdigest()
    # `release create` validates the file before it connects, then again to create the
    # release: the same bytes give the same pipeline (a big one takes a second).
    if _last_loaded is not None and _last_loaded[0] == (file, revision):
        return _last_loaded[1], revision
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = PipelineProblem(file=file, message=f"not UTF-8 text: {exc.reason}")
        raise InvalidPipeline([problem]) from None
    pipeline = parse_pipeline(text, file)
    _remember((file, revision), pipeline)
    return pipeline, revision


_last_loaded: tuple[tuple[str, str], Pipeline] | None = None


def _remember(key: tuple[str, str], pipeline: Pipeline) -> None:
    global _last_loaded
    _last_loaded = (key, pipeline)


def parse_pipeline(text: str, file: str = "<text>") -> Pipeline:
    """Parse and validate pipeline YAML given as text. Raises InvalidPipeline."""
    with _no_garbage_collection():
        return _parse(text, file)


@contextlib.contextmanager
def _no_garbage_collection() -> Iterator[None]:
    """A big pipeline is hundreds of thousands of new objects (nodes, values, models);
    the collector, run again and again while they are built, doubled the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse(text: str, file: str) -> Pipeline:
    try:
        root = yaml.compose(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        raise InvalidPipeline([_yaml_problem(file, exc)]) from None
    except RecursionError:  # the pure-Python parser, where libyaml is missing
        raise InvalidPipeline([_too_deep(file, None)]) from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _NULL_TAG):
        raise InvalidPipeline([PipelineProblem(file=file, message="the file is empty")])
    if not isinstance(root, MappingNode):
        kind = "a list" if isinstance(root, SequenceNode) else f"{root.value!r}"
        message = f"the top level must be a mapping with name, stages, ... (found {kind})"
        raise InvalidPipeline([PipelineProblem(file=file, line=_line(root), message=message)])

    too_big = _size_problem(file, root)
    if too_big is not None:
        raise InvalidPipeline([too_big])
    problems = _duplicate_keys(file, root)
    problems += _derived_fields(file, root)
    try:
        # Constructing flattens `<<` merge keys into the tree, so look for
        # duplicates (above) before and for lines (below) after.
        data = yaml.SafeLoader("").construct_document(root)
    except yaml.YAMLError as exc:
        raise InvalidPipeline([*problems, _yaml_problem(file, exc)]) from None

    pipeline = None
    try:
        pipeline = Pipeline.validate_new(data)
    except ValidationError as exc:
        problems += _validation_problems(file, root, exc.errors(include_url=False))
    except OverflowError as exc:  # timedelta() on a huge or infinite duration
        problems.append(PipelineProblem(file=file, message=f"a value is out of range: {exc}"))
    except RecursionError:  # the trigger check follows a chain of stages recursively
        message = "a chain of stages, each triggered after the next, too long to check"
        problems.append(
            PipelineProblem(
                file=file, line=_key_line(root, ["stages"]), path="stages", message=message
            )
        )
    problems += _release_name_problems(file, root, data, pipeline)
    if pipeline is not None:
        problems += _calendar_problems(file, root, pipeline, datetime.now(UTC))

    if problems or pipeline is None:
        unique = list(dict.fromkeys(problems))
        raise InvalidPipeline(sorted(unique, key=lambda problem: problem.line or 0))
    return pipeline


def pipeline_json_schema() -> dict[str, Any]:
    """The JSON Schema of a pipeline file, for editors and `stageflow schema`."""
    schema = Pipeline.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "Stageflow pipeline",
    }


# --- YAML ---------------------------------------------------------------------------

# libyaml where it is installed: several times faster on a big file, and it refuses
# nesting over 1000 levels instead of overflowing Python's stack.
_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _size_problem(file: str, root: Node) -> PipelineProblem | None:
    """Refuse, before constructing anything, a tree nested deeper than the limit, or one
    whose aliases expand it past the limit (one walk, each node once, no recursion: the
    tree may be what is wrong)."""
    # id(node) -> (depth, expanded size: the characters of its scalars, plus one per node)
    done: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    todo: list[tuple[Node, list[Node] | None]] = [(root, None)]
    while todo:
        node, children = todo[-1]
        key = id(node)
        if children is None:
            if key in done:
                todo.pop()
                continue
            if key in on_path:
                message = "an alias refers to a value that holds it"
                return PipelineProblem(file=file, line=_line(node), message=message)
            if isinstance(node, ScalarNode):
                done[key] = (1, len(node.value) + 1)
                todo.pop()
                continue
            children = (
                [part for pair in node.value for part in pair]
                if isinstance(node, MappingNode)
                else list(node.value)
            )
            on_path.add(key)
            todo[-1] = (node, children)
            todo += [(child, None) for child in children if id(child) not in done]
            continue
        todo.pop()
        on_path.discard(key)
        depth, size = 0, 1
        for child in children:
            child_depth, child_size = done[id(child)]
            depth = max(depth, child_depth)
            size += child_size
        done[key] = (depth + 1, size)
        if depth + 1 > PIPELINE_DEPTH_LIMIT:
            return _too_deep(file, None, _line(node))
        if size > PIPELINE_EXPANDED_LIMIT:
            return PipelineProblem(
                file=file,
                line=_line(node),
                message=f"with its aliases expanded the document is more than"
                f" {megabytes(PIPELINE_EXPANDED_LIMIT)}"
                f" (a pipeline file is at most {megabytes(PIPELINE_FILE_LIMIT)})",
            )
    return None


def _too_deep(file: str, path: str | None, line: int | None = None) -> PipelineProblem:
    return PipelineProblem(
        file=file,
        line=line,
        path=path or "",
        message=f"nested too deeply (a pipeline nests at most {PIPELINE_DEPTH_LIMIT} levels)",
    )


def _derived_fields(file: str, root: MappingNode) -> list[PipelineProblem]:
    """Fields the model fills itself are not written in YAML."""
    found = _child(root, "settable_variables")
    if found is None or found[0] is None:
        return []
    return [
        PipelineProblem(
            file=file,
            line=_line(found[0]),
            path="settable_variables",
            message="unknown field 'settable_variables': mark a variable"
            " `NAME: {value: ..., settable: true}` under `variables`",
        )
    ]


def _yaml_problem(file: str, exc: yaml.YAMLError) -> PipelineProblem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return PipelineProblem(file=file, message=f"invalid YAML: {exc}")
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else None
    parts = []
    if exc.context:
        context_line = exc.context_mark.line + 1 if exc.context_mark is not None else None
        at = f" at line {context_line}" if context_line not in (None, line) else ""
        parts.append(f"{exc.context}{at}")
    if exc.problem:
        parts.append(exc.problem)
    return PipelineProblem(file=file, line=line, message="invalid YAML: " + ", ".join(parts))


def _duplicate_keys(file: str, root: Node) -> list[PipelineProblem]:
    """PyYAML keeps the last of two equal keys without a word; we say so."""
    problems: list[PipelineProblem] = []
    seen: set[int] = set()  # aliases share nodes and may even form loops

    def walk(node: Node, path: list[str | int]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, [*path, index])
        elif isinstance(node, MappingNode):
            first_lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if isinstance(key, ScalarNode) and key.tag != _MERGE_TAG:
                    name = (key.tag, key.value)
                    if name in first_lines:
                        problems.append(
                            PipelineProblem(
                                file=file,
                                line=_line(key),
                                path=_format_path([*path, key.value]),
                                message=f"duplicate key {key.value!r}"
                                f" (first at line {first_lines[name]})",
                            )
                        )
                    else:
                        first_lines[name] = _line(key)
                    walk(value, [*path, key.value])
                else:
                    walk(value, path)

    walk(root, [])
    return problems


def _child(node: Node, item: str | int) -> tuple[Node | None, Node] | None:
    """The (key node, value node) that `item` names inside `node`, if it is there."""
    if isinstance(node, MappingNode):
        for key, value in reversed(node.value):  # the last of equal keys wins
            if isinstance(key, ScalarNode) and key.value == str(item):
                return key, value
    elif isinstance(node, SequenceNode) and isinstance(item, int):
        if 0 <= item < len(node.value):
            return None, node.value[item]
    return None


def _format_path(items: Sequence[str | int]) -> str:
    text = ""
    for item in items:
        if isinstance(item, int):
            text += f"[{item}]"
        elif _PLAIN_KEY.match(item):
            text += f".{item}" if text else item
        else:
            text += f"[{item!r}]"
    return text


# --- pydantic errors ------------------------------------------------------------------


class _Located:
    """A pydantic error placed in the YAML tree.

    pydantic's `loc` mixes the document's keys and indexes with names it adds
    for unions (`SecretRef`, `str`, `local`, `literal[...]`); only the keys and
    indexes found in the tree make the path.
    """

    def __init__(self, error: ErrorDetails, root: Node) -> None:
        self.error = error
        self.items: list[str | int] = []
        self.node = root
        self.line = _line(root)
        # Where a union was tried, and which of its members this error is about.
        self.union_items: tuple[str | int, ...] | None = None
        self.union_node: Node = root
        self.union_line = self.line
        self.member: str | None = None
        self.member_position = -1
        loc = error["loc"]
        for position, item in enumerate(loc):
            found = _child(self.node, item)
            if found is not None:
                key, self.node = found
                # A mapping's key as written (`8080`, not an index), a list's index.
                self.items.append(key.value if key is not None else item)
                self.line = _line(key if key is not None else self.node)
            elif self.member is None and _names_union_member(error, position):
                self.union_items = tuple(self.items)
                self.union_node, self.union_line = self.node, self.line
                self.member, self.member_position = str(item), position

    @property
    def path(self) -> str:
        return _format_path(self.items)


def _names_union_member(error: ErrorDetails, position: int) -> bool:
    """Whether a loc item missing from the document is pydantic's name for a union member.

    The other missing items are the field a `missing` error is about, and the
    `[key]` pydantic adds when a mapping's key is wrong.
    """
    loc = error["loc"]
    if position == len(loc) - 1 and error["type"] == "missing":
        return False
    return loc[position] != "[key]"


def _validation_problems(
    file: str, root: Node, errors: list[ErrorDetails]
) -> list[PipelineProblem]:
    located = [_Located(error, root) for error in errors]
    unions: dict[tuple[str | int, ...], list[_Located]] = {}
    for entry in located:
        if entry.union_items is not None:
            unions.setdefault(entry.union_items, []).append(entry)

    problems: list[PipelineProblem] = []
    done: set[tuple[str | int, ...]] = set()
    for entry in located:
        group = unions.get(entry.union_items) if entry.union_items is not None else None
        if group is None or len({other.member for other in group}) < 2:
            problems.append(_problem(file, root, entry))
        elif entry.union_items not in done:
            assert entry.union_items is not None
            done.add(entry.union_items)
            problems += _union_problems(file, root, group)
    return problems


def _union_problems(file: str, root: Node, group: list[_Located]) -> list[PipelineProblem]:
    """One union value failed every member: speak of the member its shape fits."""
    first = group[0]
    node = first.union_node
    fitting = [entry for entry in group if _member_shape(entry.member) == _node_shape(node)]
    if fitting and len({entry.member for entry in fitting}) == 1:
        return [_problem(file, root, entry) for entry in fitting]
    members = list(dict.fromkeys(entry.member for entry in group))
    expected = " or ".join(_describe_member(member, group) for member in members)
    return [
        PipelineProblem(
            file=file,
            line=first.union_line,
            path=_format_path(first.union_items or ()),
            message=f"expected {expected} (found {_describe_node(node)})",
        )
    ]


def _model_named(name: str | None) -> type[BaseModel] | None:
    model = getattr(pipeline_models, name or "", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def _member_shape(member: str | None) -> str:
    if _model_named(member) is not None or (member or "").startswith("dict["):
        return "mapping"
    if (member or "").startswith(("list[", "tuple[", "set[")):
        return "sequence"
    return "scalar"


def _node_shape(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    return "sequence" if isinstance(node, SequenceNode) else "scalar"


def _describe_node(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL_TAG:
        return "nothing"
    return repr(node.value) if node.tag == "tag:yaml.org,2002:str" else node.value


def _describe_member(member: str | None, group: list[_Located]) -> str:
    model = _model_named(member)
    if model is not None:
        required = [
            field.alias or name for name, field in model.model_fields.items() if field.is_required()
        ]
        return "a mapping like {" + ", ".join(f"{name}: ..." for name in required) + "}"
    for entry in group:
        # The member's own complaint about the value as a whole, e.g. "a valid string".
        if entry.member == member and len(entry.error["loc"]) == entry.member_position + 1:
            return entry.error["msg"].removeprefix("Input should be ")
    return member or "something else"


def _problem(file: str, root: Node, entry: _Located) -> PipelineProblem:
    error = entry.error
    kind = error["type"]
    loc = error["loc"]
    ctx = error.get("ctx") or {}
    path, line = entry.path, entry.line
    message = error["msg"]
    if kind == "extra_forbidden":
        name = str(loc[-1])
        message = f"unknown field {name!r}"
        model = _model_at(loc)
        if model is not None:
            known = [field.alias or field_name for field_name, field in model.model_fields.items()]
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                message += f" (did you mean {close[0]!r}?)"
    elif kind == "missing":
        message = f"missing required field {str(loc[-1])!r}"
    elif kind == "union_tag_not_found":
        discriminator = str(ctx.get("discriminator", "")).strip("'")
        message = f"missing required field {discriminator!r}"
    elif kind == "union_tag_invalid":
        discriminator = str(ctx.get("discriminator", "")).strip("'")
        found = _child(entry.node, discriminator)
        if found is not None and found[0] is not None:
            path = _format_path([*entry.items, discriminator])
            line = _line(found[0])
        message = f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a mapping (found {_describe_node(entry.node)})"
    elif kind in ("value_error", "assertion_error"):
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind not in _NO_FOUND_SUFFIX and "input" in error:
        value = error["input"]
        if value is None:
            message += " (found nothing)"
        elif isinstance(value, str | int | float | bool):
            message += f" (found {value!r})"

    if not entry.items and kind == "value_error":
        # Whole-pipeline checks: point at the list they are about.
        for key, word in (
            ("triggers", r"\btrigger\b"),
            ("stages", r"\bstage"),
            ("artifacts", r"\bartifact"),
        ):
            if re.search(word, message):
                found = _child(root, key)
                if found is not None and found[0] is not None:
                    path, line = key, _line(found[0])
                break
    return PipelineProblem(file=file, line=line, path=path, message=message)


# --- which model a loc is in (for "did you mean") -----------------------------------------


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model that should have held the field `loc[-1]`, following pydantic's loc."""
    candidates: list[Any] = [Pipeline]
    for item in loc[:-1]:
        candidates = [
            step for tp in candidates for member in _members(tp) for step in _step(member, item)
        ]
    models = {member for tp in candidates for member in _members(tp) if _is_model(member)}
    return models.pop() if len(models) == 1 else None


def _members(tp: Any) -> list[Any]:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(tp) for member in _members(arg)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tp: Any, item: str | int) -> list[Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_model(tp) and isinstance(item, str):
        if item == tp.__name__:  # the member's name in a union
            return [tp]
        for name, field in tp.model_fields.items():
            if item in (name, field.alias):
                return [field.annotation]
        for field in tp.model_fields.values():  # a discriminated union's tag
            if typing.get_origin(field.annotation) is typing.Literal:
                if item in typing.get_args(field.annotation):
                    return [tp]
    if origin in (list, tuple, set) and isinstance(item, int) and args:
        return [args[0]]
    if origin is dict and isinstance(item, str) and len(args) == 2:
        return [args[1]]
    return []


# --- schedules and freezes -------------------------------------------------------------


def _calendar_problems(
    file: str, root: Node, pipeline: Pipeline, now: datetime
) -> list[PipelineProblem]:
    """What the `plan_start` activity would refuse at deploy time, said now with its path:
    a bad cron or zone, freezes that cover all time, a schedule always inside freezes."""
    found: list[tuple[list[str | int], CalendarProblem]] = []
    for index, stage in enumerate(pipeline.stages):
        for problem in calendar_problems(stage.schedule, stage.freezes, now):
            found.append((["stages", index], problem))
    for index, trigger in enumerate(pipeline.triggers):
        if isinstance(trigger, pipeline_models.ScheduleTrigger):
            for problem in cron_problems(trigger.schedule.cron, trigger.schedule.timezone):
                found.append((["triggers", index, "schedule"], problem))
    problems = []
    for where, problem in found:
        items = [*where, *problem.path]
        problems.append(
            PipelineProblem(
                file=file,
                line=_key_line(root, items),
                path=_format_path(items),
                message=problem.message,
            )
        )
    return problems


def _key_line(root: Node, items: Sequence[str | int]) -> int | None:
    """The line of the key (or list item) at `items`, or of the deepest part found."""
    node, line = root, None
    for item in items:
        found = _child(node, item)
        if found is None:
            break
        key, node = found
        line = _line(key if key is not None else node)
    return line


# --- release name ---------------------------------------------------------------------


def _release_name_problems(
    file: str, root: Node, data: dict[str, Any], pipeline: Pipeline | None
) -> list[PipelineProblem]:
    template = data.get("release_name_format")
    if not isinstance(template, str):
        return []  # absent (the default is fine) or already a validation error
    found = _child(root, "release_name_format")
    line = _line(found[0]) if found is not None and found[0] is not None else None

    def problem(message: str) -> list[PipelineProblem]:
        return [PipelineProblem(file=file, line=line, path="release_name_format", message=message)]

    try:
        parsed = jinja2.sandbox.SandboxedEnvironment().parse(template)
    except jinja2.TemplateSyntaxError as exc:
        return problem(f"not a valid template: {exc.message}")
    variables = data.get("variables")
    known = RELEASE_NAME_NAMES | set(variables if isinstance(variables, dict) else ())
    unknown = sorted(jinja2.meta.find_undeclared_variables(parsed) - known)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        return problem(
            f"unknown name{'s' if len(unknown) > 1 else ''} {names} in the template"
            f" (known: {', '.join(sorted(known, key=str))})"
        )
    if pipeline is None:
        return []  # rendered once the rest is valid
    found_problem = release_name_problem(pipeline, datetime.now(UTC))
    return problem(found_problem) if found_problem else []


# Release numbers the name format is tried with; the workflow renders the same function.
SAMPLE_NUMBERS = (1, 2, 10, 12345)
RELEASE_NAME_LIMIT = 200


def release_name_problem(pipeline: Pipeline, now: datetime) -> str | None:
    """What is wrong with the names `release_name_format` renders, tried on sample
    numbers: an error while rendering, or a name that is not one line of printable text
    (it goes into mail subjects, search attributes and the Web UI)."""
    for number in SAMPLE_NUMBERS:
        try:
            name = render_release_name(pipeline, number, now)
        except Exception as exc:  # the template's own error: division by zero, a filter, ...
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            return f"cannot be rendered for release {number}: {reason}"
        shown = repr(name if len(name) <= 60 else name[:60] + "…")
        if not name:
            return f"renders an empty name for release {number}"
        if not name.isprintable():
            return (
                f"renders {shown} for release {number}: a release name is one line of"
                " printable text"
            )
        if len(name) > RELEASE_NAME_LIMIT:
            return (
                f"renders {len(name)} characters for release {number}: a release name"
                f" is at most {RELEASE_NAME_LIMIT}"
            )
    return None
