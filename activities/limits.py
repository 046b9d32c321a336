"""How big input may be, checked before anything is sent: a refusal names the cause and
the field instead of a server error (or a traceback) seconds or minutes later.

- A pipeline file is at most 1 MB and nests at most 64 levels; with its YAML aliases
  expanded it is at most 4 MB (a few aliases can make a small file stand for
  gigabytes).
- A release request fits in one Temporal payload: the server refuses payloads
  over 2 MB (its blob size limit), and the release's and each stage's workflow
  input carry the same pipeline again, plus a few hundred bytes.
- A release sets only the variables its pipeline declares settable
  (`Pipeline.release_time_problem`).
"""

from __future__ import annotations

import json
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter

from workflows.pipeline_workflow import NewRelease

MB = 1024 * 1024
PIPELINE_FILE_LIMIT = 1 * MB
PIPELINE_DEPTH_LIMIT = 64
PIPELINE_EXPANDED_LIMIT = 4 * MB
PAYLOAD_LIMIT = 2 * MB
# What the release's and the stages' inputs add to the request: number, name, times.
PAYLOAD_HEADROOM = 16 * 1024


class RequestRefused(ValueError):
    """A release request that cannot become a release: one line, exit code 2."""


def megabytes(size: int) -> str:
    """`2.4 MB`, `0.3 MB`: sizes in the unit the limits are given in."""
    return f"{size / MB:.1f} MB"


def check_release_request(request: NewRelease) -> None:
    """Refuse a request before it is sent: a variable the release may not set, or a
    request too big for one Temporal payload (naming the part that makes it big)."""
    for name in request.variables:
        problem = request.pipeline.release_time_problem(name)
        if problem:
            raise RequestRefused(f"--var {name}: {problem}")
    size = payload_size(request)
    if size > PAYLOAD_LIMIT - PAYLOAD_HEADROOM:
        path, part, part_size = _biggest_part(request.model_dump(mode="json", by_alias=True))
        entries = f" ({len(part):,} entries)" if isinstance(part, list | dict) else ""
        raise RequestRefused(
            f"the release request is {megabytes(size)}, more than Temporal's"
            f" {megabytes(PAYLOAD_LIMIT)} payload limit allows: {_field(path)}"
            f" is {megabytes(part_size)}{entries}"
        )


def payload_size(value: Any) -> int:
    """Bytes of `value` as the client sends it (the pydantic data converter's payload)."""
    payloads = pydantic_data_converter.payload_converter.to_payloads([value])
    return sum(payload.ByteSize() for payload in payloads)


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _biggest_part(data: Any) -> tuple[list[str | int], Any, int]:
    """The deepest part holding most of `data`, its value and size: follow the biggest
    child while it is at least half of its parent (a list of many small parts is
    itself the big part)."""
    path: list[str | int] = []
    size = _json_size(data)
    while isinstance(data, dict | list) and data:
        items = data.items() if isinstance(data, dict) else enumerate(data)
        child_size, key, child = max(
            ((_json_size(child), key, child) for key, child in items), key=lambda e: e[0]
        )
        if child_size * 2 < size:
            break
        path.append(key)
        data, size = child, child_size
    return path, data, size


def _field(path: list[str | int]) -> str:
    """A request path in the user's terms: the pipeline file's field, or the option."""
    if not path:
        return "the request"
    head, rest = path[0], path[1:]
    if head == "pipeline":
        return f"{_dotted(rest) or 'the pipeline'} in the pipeline file"
    if head == "variables" and rest:
        return f"--var {rest[0]}"
    if head == "artifacts":
        return "--artifact" if not rest else f"the artifact at artifacts{_dotted(rest[:1])}"
    return f"--{head}" if head in ("description", "until") else _dotted(path)


def _dotted(path: list[str | int]) -> str:
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text
