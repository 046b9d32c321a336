"""The `stageflow` command line driven as a user does: a subprocess against the dev server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack, wait_for
from worker.devserver import free_port, temporal_binary

pytestmark = pytest.mark.e2e

PIPELINE = """
    name: cli-{suffix}
    variables: {{DIR: {dir}}}
    stages:
      - name: dev
        pool: POOL
        tasks:
          - name: build info
            script: echo "deploying $STAGEFLOW_RELEASE to $STAGEFLOW_STAGE"
      - name: qa
        trigger: {{after_stages: [dev]}}
        pool: POOL
        tasks:
          - name: tests
            script: echo "qa tests passed"
      - name: prod
        trigger: {{after_stages: [qa]}}
        pool: POOL
        tasks:
          - name: ship
            script: |
              if [ -f "$DIR/block-prod" ]; then
                for i in $(seq 1 400); do echo "prod line $i"; sleep 0.02; [ -f "$DIR/release-prod" ] && break; done
              fi
              echo "shipped"
"""


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert result.returncode == code, (
        f"exit {result.returncode} (wanted {code})\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


async def test_create_wait_then_list_show_history_in_table_and_json(stack: Stack) -> None:
    pipeline = stack.write_pipeline(PIPELINE.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    name = f"cli-{stack.suffix}"

    out = ok(
        await asyncio.to_thread(
            stack.cli, "release", "create", str(pipeline), "--wait", "--description", "first cut"
        )
    )
    assert f"created {name} Release-1 ({name}/1)" in out
    assert "succeeded" in out and "dev" in out and "prod" in out

    created = json.loads(
        ok(
            await asyncio.to_thread(
                stack.cli, "--json", "release", "create", str(pipeline), "--until", "dev", "--wait"
            )
        )
    )
    assert (created["pipeline"], created["number"], created["name"]) == (name, 2, "Release-2")
    assert [(s["name"], s["status"], s["attempt"]) for s in created["stages"]] == [
        ("dev", "succeeded", 1),
        ("qa", "not_deployed", 0),
        ("prod", "not_deployed", 0),
    ]

    shown = json.loads(
        ok(await asyncio.to_thread(stack.cli, "--json", "release", "show", f"{name}/1"))
    )
    assert shown["created_by"] == "tester" and shown["description"] == "first cut"
    assert {s["name"]: s["status"] for s in shown["stages"]} == {
        "dev": "succeeded",
        "qa": "succeeded",
        "prod": "succeeded",
    }
    table = ok(await asyncio.to_thread(stack.cli, "release", "show", f"{name}/2"))
    assert "Release-2" in table and f"stageflow deploy {name}/2 qa" in table

    async def listed() -> list[dict[str, object]]:
        rows = json.loads(
            ok(await asyncio.to_thread(stack.cli, "--json", "release", "list", "--pipeline", name))
        )
        return rows if len(rows) == 2 else []

    rows = await wait_for(listed, what="both releases in visibility")
    assert [row["number"] for row in rows] == [2, 1]  # newest first
    listing = ok(await asyncio.to_thread(stack.cli, "release", "list", "--pipeline", name))
    assert f"{name}/1" in listing and f"{name}/2" in listing and "dev:" in listing

    history = json.loads(ok(await asyncio.to_thread(stack.cli, "--json", "history", f"{name}/1")))
    assert history[0]["action"] == "create" and history[0]["actor"] == "tester"
    assert [e["stage"] for e in history if e["action"] == "stage succeeded"] == [
        "dev",
        "qa",
        "prod",
    ]
    assert "stage succeeded" in ok(await asyncio.to_thread(stack.cli, "history", f"{name}/1"))

    logs = ok(await asyncio.to_thread(stack.cli, "logs", f"{name}/1", "--stage", "dev"))
    assert "deploying Release-1 to dev" in logs
    assert "qa tests passed" in ok(
        await asyncio.to_thread(stack.cli, "logs", f"{name}/1", "--task", "tests")
    )


async def test_deploy_redeploy_cancel_abandon_and_follow_logs(stack: Stack) -> None:
    pipeline = stack.write_pipeline(PIPELINE.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    name = f"cli-{stack.suffix}"
    ref = f"{name}/1"
    ok(
        await asyncio.to_thread(
            stack.cli, "release", "create", str(pipeline), "--until", "qa", "--wait"
        )
    )

    out = ok(await asyncio.to_thread(stack.cli, "redeploy", ref, "dev", user="erin"))
    assert f"{ref}: redeploy dev accepted" in out

    (stack.root / "block-prod").touch()
    ok(await asyncio.to_thread(stack.cli, "deploy", ref, "prod", user="erin"))

    async def prod_running() -> bool:
        shown = json.loads(ok(await asyncio.to_thread(stack.cli, "--json", "release", "show", ref)))
        prod = next(s for s in shown["stages"] if s["name"] == "prod")
        return prod["status"] == "in_progress" and any(
            t["status"] == "in_progress" for t in prod["attempts"][-1]["tasks"]
        )

    await wait_for(prod_running, what="prod running")
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "starter.cli",
            "logs",
            ref,
            "--stage",
            "prod",
            "--follow",
            "--no-timestamps",
        ],
        cwd=stack.root,
        env=stack.env(PYTHONPATH=str(ROOT), **stack.signed_in()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    first = await asyncio.to_thread(follower.stdout.readline)
    assert "following" in first
    header = await asyncio.to_thread(follower.stdout.readline)
    assert header.startswith("##[stageflow] task 'ship'"), header
    line = await asyncio.to_thread(follower.stdout.readline)
    # Streamed while the task runs: it only ends once release-prod exists.
    assert line.startswith("prod line"), line
    (stack.root / "release-prod").touch()
    rest, err = await asyncio.to_thread(follower.communicate, timeout=60)
    assert follower.returncode == 0, err
    assert "shipped" in rest

    # A second deploy of a stage that is not running, then cancel it while it runs.
    (stack.root / "release-prod").unlink()
    ok(await asyncio.to_thread(stack.cli, "redeploy", ref, "prod"))
    await wait_for(prod_running, what="prod running again")
    out = ok(await asyncio.to_thread(stack.cli, "cancel", ref, "prod", user="frank"))
    assert f"{ref}: cancel prod accepted (attempt 2)" in out

    async def prod_canceled() -> dict[str, object] | None:
        shown = json.loads(ok(await asyncio.to_thread(stack.cli, "--json", "release", "show", ref)))
        prod = next(s for s in shown["stages"] if s["name"] == "prod")
        return prod if prod["status"] == "canceled" else None

    prod = await wait_for(prod_canceled, what="prod canceled")
    assert prod["attempts"][-1]["message"] == "canceled by frank"  # type: ignore[index]

    out = ok(await asyncio.to_thread(stack.cli, "abandon", ref, "--reason", "superseded"))
    assert "abandon accepted" in out
    refused = await asyncio.to_thread(stack.cli, "deploy", ref, "prod")
    assert refused.returncode == 2
    history = json.loads(ok(await asyncio.to_thread(stack.cli, "--json", "history", ref)))
    actions = [(e["actor"], e["action"], e["stage"], e["outcome"]) for e in history]
    assert ("erin", "redeploy", "dev", "accepted") in actions
    assert ("erin", "deploy", "prod", "accepted") in actions
    assert ("tester", "abandon", None, "accepted") in actions


async def test_error_paths_have_one_line_and_exit_code_2(stack: Stack) -> None:
    pipeline = stack.write_pipeline(PIPELINE.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    name = f"cli-{stack.suffix}"
    ok(
        await asyncio.to_thread(
            stack.cli, "release", "create", str(pipeline), "--until", "dev", "--wait"
        )
    )

    unknown = await asyncio.to_thread(stack.cli, "release", "show", f"{name}/99")
    assert (
        unknown.returncode == 2 and unknown.stderr.strip() == f"error: release {name}/99 not found"
    )
    stage = await asyncio.to_thread(stack.cli, "deploy", f"{name}/1", "staging")
    assert stage.returncode == 2 and "has no stage 'staging'" in stage.stderr
    assert "Traceback" not in stage.stderr
    bad_ref = await asyncio.to_thread(stack.cli, "release", "show", "justaname")
    assert bad_ref.returncode == 2 and "PIPELINE/NUMBER" in bad_ref.stderr

    broken = stack.root / "broken.yml"
    broken.write_text(
        f"name: {name}\nstages:\n  - name: dev\n    pool: p\n    tasks:\n"
        "      - name: t\n        script: 'true'\n        retries: many\n"
    )
    invalid = await asyncio.to_thread(stack.cli, "release", "create", str(broken))
    assert invalid.returncode == 2
    assert f"{broken}:8: stages[0].tasks[0].retries" in invalid.stderr
    assert "Traceback" not in invalid.stderr
    valid = await asyncio.to_thread(stack.cli, "pipeline", "validate", str(pipeline))
    assert valid.returncode == 0 and "is valid" in valid.stdout
    schema = json.loads(ok(await asyncio.to_thread(stack.cli, "pipeline", "schema")))
    assert "stages" in schema["properties"]

    # No API there: one line saying how to start one.
    nowhere = f"http://127.0.0.1:{free_port()}"
    down = await asyncio.to_thread(stack.cli, "deploy", f"{name}/1", "dev", STAGEFLOW_URL=nowhere)
    assert down.returncode == 2 and down.stdout == ""
    assert down.stderr == (
        f"error: cannot reach the API at {nowhere}: start it with `stageflow up` or "
        "`stageflow serve`, or set STAGEFLOW_URL\n"
    )
    # Not signed in, or with a token the API does not know.
    anonymous = await asyncio.to_thread(stack.cli, "release", "list", STAGEFLOW_TOKEN="")
    assert anonymous.returncode == 2
    assert anonymous.stderr.startswith("error: not signed in: run `stageflow login`")
    forged = await asyncio.to_thread(stack.cli, "release", "list", STAGEFLOW_TOKEN="sft_x_y")
    assert forged.returncode == 2 and forged.stderr == (
        f"error: not signed in to {stack.api()} (or the token is revoked/expired): "
        "run `stageflow login`\n"
    )

    # An API that cannot reach Temporal refuses actions in one line, and still reads
    # what was recorded.
    blind = await asyncio.to_thread(stack.start_api, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    action = await asyncio.to_thread(stack.cli, "deploy", f"{name}/1", "dev", STAGEFLOW_URL=blind)
    assert action.returncode == 2 and action.stderr.count("\n") == 1
    assert "cannot reach Temporal at 127.0.0.1:" in action.stderr
    assert "Traceback" not in action.stderr
    shown = await asyncio.to_thread(stack.cli, "release", "show", f"{name}/1", STAGEFLOW_URL=blind)
    assert shown.returncode == 0 and "succeeded" in shown.stdout, shown.stderr


async def test_failed_deployment_exits_1_from_create_wait(stack: Stack) -> None:
    pipeline = stack.write_pipeline(
        f"""
        name: cli-fail-{stack.suffix}
        stages:
          - name: dev
            pool: POOL
            tasks: [{{name: boom, script: "echo about to fail; exit 4"}}]
        """
    )
    await stack.start_worker()
    await stack.start_agent("a1")
    result = await asyncio.to_thread(stack.cli, "release", "create", str(pipeline), "--wait")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout


async def test_web_ui_shows_static_summaries_and_search_attributes(stack: Stack) -> None:
    pipeline = stack.write_pipeline(PIPELINE.format(suffix=stack.suffix, dir=stack.root))
    await stack.start_worker()
    await stack.start_agent("a1")
    name = f"cli-{stack.suffix}"
    ok(
        await asyncio.to_thread(
            stack.cli,
            "release",
            "create",
            str(pipeline),
            "--until",
            "dev",
            "--wait",
            "--description",
            "hotfix",
        )
    )

    def describe(workflow_id: str) -> dict[str, object]:
        result = subprocess.run(
            [
                temporal_binary(),
                "workflow",
                "describe",
                "--address",
                stack.address,
                "--workflow-id",
                workflow_id,
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return json.loads(result.stdout)

    release = await asyncio.to_thread(describe, f"release/{name}/1")
    text = json.dumps(release, ensure_ascii=False)
    assert f"{name} Release-1: hotfix" in text
    for attribute in (
        "StageflowPipeline",
        "StageflowRelease",
        "StageflowStatus",
        "StageflowCreatedBy",
    ):
        assert attribute in text
    stage = await asyncio.to_thread(describe, f"release/{name}/1/dev/1")
    text = json.dumps(stage, ensure_ascii=False)
    assert f"{name} Release-1 → dev, attempt 1" in text
    assert "StageflowStage" in text and "succeeded" in text


def test_cli_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "starter.cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    for command in (
        "pipeline",
        "release",
        "deploy",
        "redeploy",
        "cancel",
        "abandon",
        "logs",
        "history",
        "server",
        "worker",
        "agent",
        "up",
        "login",
        "logout",
        "whoami",
        "token",
        "access",
    ):
        assert command in result.stdout


def test_user_commands_do_not_load_the_temporal_sdk() -> None:
    """A user command is an HTTP client: `release list` loads neither the Temporal SDK,
    the record's SQLAlchemy nor the models' pydantic (its start-up is what bench/api.py
    times), and no command module it may run loads the SDK or SQLAlchemy either."""
    script = (
        "import sys\n"
        "from starter.cli import run\n"
        "def loaded():\n"
        "    heavy = ('temporalio', 'sqlalchemy', 'pydantic')\n"
        "    return sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in heavy})\n"
        "code = run(['release', 'list'])\n"
        "print(code, loaded())\n"
        "import starter.commands, starter.read_commands, starter.log_commands\n"
        "import starter.access_commands\n"
        "print(loaded())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={
            **os.environ,
            "STAGEFLOW_URL": f"http://127.0.0.1:{free_port()}",
            "STAGEFLOW_TOKEN": "sft_x_y",
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.stdout == "2 []\n['pydantic']\n", result.stdout + result.stderr
    assert "cannot reach the API" in result.stderr


def test_pipeline_validate_reports_every_problem_with_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "name: x\nstages:\n  - name: dev\n    pool: p\n    tasks:\n"
        "      - {name: a, script: 'true', timout: 5}\n  - name: dev\n    pool: p\n"
        "    tasks: [{name: b, script: 'true'}]\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "starter.cli", "pipeline", "validate", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"{bad}:6: stages[0].tasks[0].timout: unknown field" in result.stderr
