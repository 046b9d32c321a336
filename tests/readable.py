"""What someone reading a release can read: its workflow histories with every payload
decoded as far as plain base64 goes (as `temporal workflow show` would print them),
`stageflow release show --json`, and the log store's files."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHistory

from starter.releases import ReleaseRef
from tests.conftest import Stack
from workflows.release import ReleaseStatus


def history_text(history: WorkflowHistory) -> str:
    """The history's JSON, plus every base64 string in it decoded (payload data and
    metadata are base64 in proto JSON, so a bare `in history.to_json()` sees nothing)."""
    pieces = [history.to_json()]

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and len(value) >= 4:
            try:
                pieces.append(base64.b64decode(value, validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                pass

    walk(history.to_json_dict())
    return "\n".join(pieces)


def workflow_ids(status: ReleaseStatus) -> list[str]:
    """The pipeline's, the release's and every stage deployment's workflow."""
    ids = [f"pipeline/{status.pipeline}", f"release/{status.pipeline}/{status.number}"]
    return ids + [a.workflow_id for view in status.stages for a in view.attempts]


async def histories_text(client: Client, status: ReleaseStatus) -> str:
    histories = [await client.get_workflow_handle(i).fetch_history() for i in workflow_ids(status)]
    return "\n".join(history_text(h) for h in histories)


def log_store_bytes(data_dir: Path) -> bytes:
    """Every file of the log store (logs and their indexes), one after the other."""
    return b"\n".join(p.read_bytes() for p in sorted((data_dir / "logs").rglob("*")) if p.is_file())


async def shown_json(stack: Stack, ref: ReleaseRef, **env: str) -> dict[str, Any]:
    """`stageflow --json release show REF`, parsed."""
    shown = await asyncio.to_thread(stack.cli, "--json", "release", "show", str(ref), **env)
    assert shown.returncode in (0, 1), shown.stderr
    parsed: dict[str, Any] = json.loads(shown.stdout)
    return parsed


async def assert_nowhere(
    stack: Stack, ref: ReleaseRef, status: ReleaseStatus, secret: str, seen: str
) -> None:
    """`secret` is in no history, not in `release show --json`, not in the log store;
    `seen` (a plain value the same release used) is, in each: the search can find."""
    histories = await histories_text(stack.client, status)
    shown = json.dumps(await shown_json(stack, ref))
    logs = log_store_bytes(stack.data_dir)
    assert seen in histories and seen.encode() in logs
    assert secret not in histories, "a secret in a workflow history"
    assert secret not in shown, "a secret in release show --json"
    assert secret.encode() not in logs, "a secret in the log store"
