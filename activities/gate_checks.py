"""Gate checks: one evaluation of one health check. Idempotent (they only look).

`check_http` runs on the control worker; `run_check` (a script) runs on an agent
of the check's pool, polled from the same `pool/<pool>` queue as leases.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import httpx
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from temporalio import activity

from workflows.activity_refs import CHECK_HTTP, RUN_CHECK
from workflows.control_api import CheckRequest, CheckResult

MISSING = object()


def _render(text: str, variables: dict[str, str]) -> str:
    if "{{" not in text and "{%" not in text:
        return text
    return SandboxedEnvironment(undefined=StrictUndefined).from_string(text).render(variables)


def json_path(document: Any, path: str) -> Any:
    """`status`, `checks.0.state`: dotted keys and list indexes; MISSING when absent."""
    current = document
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


@activity.defn(name=CHECK_HTTP.name)
async def check_http(request: CheckRequest) -> CheckResult:
    """GET (or POST/HEAD) the URL; healthy when the status and the JSON expectation hold."""
    spec = request.check.http
    assert spec is not None
    url = _render(spec.url, request.variables)
    expected = spec.expect_status if isinstance(spec.expect_status, list) else [spec.expect_status]
    try:
        async with httpx.AsyncClient(timeout=spec.timeout.total_seconds()) as client:
            response = await client.request(spec.method, url)
    except httpx.HTTPError as err:
        return CheckResult(healthy=False, reason=f"{url}: {type(err).__name__}: {err}")
    if response.status_code not in expected:
        return CheckResult(
            healthy=False,
            reason=f"{url} answered {response.status_code}, expected "
            + " or ".join(map(str, expected)),
        )
    if spec.expect_json is not None:
        try:
            value = json_path(response.json(), spec.expect_json.path)
        except json.JSONDecodeError:
            return CheckResult(healthy=False, reason=f"{url}: the body is not JSON")
        if value is MISSING:
            return CheckResult(
                healthy=False, reason=f"{url}: no {spec.expect_json.path!r} in the JSON"
            )
        if value != spec.expect_json.equals:
            return CheckResult(
                healthy=False,
                reason=f"{url}: {spec.expect_json.path} is {value!r}, expected "
                f"{spec.expect_json.equals!r}",
            )
    return CheckResult(healthy=True, reason=f"{url} answered {response.status_code}")


@activity.defn(name=RUN_CHECK.name)
async def run_check(request: CheckRequest) -> CheckResult:
    """Run the check's command with bash; exit code 0 is healthy. The process group is
    killed on timeout."""
    spec = request.check.script
    assert spec is not None
    env = {**os.environ, **request.variables}
    process = await asyncio.create_subprocess_exec(
        "bash",
        "--noprofile",
        "--norc",
        "-c",
        spec.run,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), spec.timeout.total_seconds())
    except (TimeoutError, asyncio.CancelledError):
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        await process.wait()
        return CheckResult(healthy=False, reason=f"timed out after {spec.timeout}")
    tail = output.decode(errors="replace").strip().splitlines()[-1:] if output else []
    last = f": {tail[0][:200]}" if tail else ""
    return CheckResult(
        healthy=process.returncode == 0, reason=f"exit code {process.returncode}{last}"
    )


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except ProcessLookupError:
        pass
