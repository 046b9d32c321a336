"""Every activity a workflow calls is served, under its reference's name, by the
worker that polls the reference's queue — so a renamed or unregistered activity
fails here, not as a deployment stuck in "scheduled"."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import cast

from temporalio.activity import _Definition
from temporalio.client import Client

from activities.agent import AgentActivities
from activities.log_store import DirectoryLogStore
from activities.notify import Notifier, SmtpSettings
from activities.record import default_database_url, open_database
from activities.record.recorder import Recorder
from activities.record.retention import Retention
from activities.triggers import Triggers
from activities.workflow_checks import Lookout
from worker.agent import pool_activities, step_activities
from worker.control import control_activities
from workflows import activity_refs
from workflows.activity_refs import ALL, ActivityRef

ROOT = Path(__file__).resolve().parent.parent


def served_names(tmp_path: Path) -> dict[str, set[str]]:
    # Building the activity objects needs no connection: the client is only stored.
    client = Client.__new__(Client)
    agent = AgentActivities(
        client,
        agent_id="a",
        agent_name="a",
        work_dir=tmp_path / "work",
        log_store=DirectoryLogStore(tmp_path / "logs"),
        base_env={},
        data_dir=tmp_path,
    )
    notifier = Notifier(SmtpSettings(), tmp_path / "outbox")
    url = default_database_url(tmp_path)
    database = open_database(url)  # an engine only: nothing connects

    def names(functions: list) -> set[str]:  # type: ignore[type-arg]
        return {_Definition.must_from_callable(fn).name for fn in functions}

    return {
        "control": names(
            control_activities(
                notifier,
                Recorder(url),
                Retention(database, None),
                Lookout(cast(Client, None)),  # its activity is not run here
                Triggers(cast(Client, None), database, tmp_path, "stageflow"),
            )
        ),
        "pool": names(pool_activities(agent)),
        "agent": names(step_activities(agent)),
    }


def test_every_reference_is_served_on_its_queue(tmp_path: Path) -> None:
    served = served_names(tmp_path)
    missing = [f"{ref.name} ({ref.queue})" for ref in ALL if ref.name not in served[ref.queue]]
    assert missing == []


def test_every_served_activity_has_a_reference(tmp_path: Path) -> None:
    referenced = {(ref.queue, ref.name) for ref in ALL}
    served = {(queue, name) for queue, names in served_names(tmp_path).items() for name in names}
    assert served - referenced == set()


def test_the_table_lists_every_reference_it_defines() -> None:
    defined = [v for v in vars(activity_refs).values() if isinstance(v, ActivityRef)]
    assert sorted(r.name for r in defined) == sorted(r.name for r in ALL)


def test_workflows_call_activities_by_reference_not_by_string() -> None:
    """No `workflow.execute_activity("name", ...)` / `start_activity("name", ...)` outside
    the table: a string name is a typo waiting to happen."""
    found = []
    for path in sorted((ROOT / "workflows").glob("*.py")):
        if path.name == "activity_refs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute_activity", "start_activity")
            ):
                found.append(f"{path.name}:{node.lineno}")
    assert found == []
