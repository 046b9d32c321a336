"""Recorded workflow histories replay with today's workflow code.

A change to a workflow that would break running releases fails here; such a
change needs `workflow.patched`. Record new histories with
`STAGEFLOW_RECORD_HISTORIES=1 pytest tests/test_engine_e2e.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from worker.control import SANDBOX, WORKFLOWS

HISTORY_DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(HISTORY_DIR.rglob("*.json"))


def test_histories_are_recorded() -> None:
    kinds = {path.stem.rsplit("-", 1)[1] for path in HISTORIES}
    assert kinds == {"PipelineWorkflow", "ReleaseWorkflow", "StageWorkflow"}


@pytest.mark.parametrize(
    "path", HISTORIES, ids=[str(path.relative_to(HISTORY_DIR)) for path in HISTORIES]
)
async def test_recorded_history_replays(path: Path) -> None:
    data = json.loads(path.read_text())
    history = WorkflowHistory.from_json(data.pop("workflow_id"), data)
    replayer = Replayer(
        workflows=WORKFLOWS, workflow_runner=SANDBOX, data_converter=pydantic_data_converter
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
