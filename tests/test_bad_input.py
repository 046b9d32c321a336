"""Bad input is refused before anything runs (issue 11), each case from its repro, run as a
user runs it: `stageflow` as a subprocess, exit code 2, one line naming the cause and the
field, quickly, and no workflow started. Also: a task name with dots runs and its log reads;
a mail that cannot be built fails once and the deployment goes on; Core's warnings go to
stderr, so `--json` output stays JSON while the server restarts."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.limits import RequestRefused, check_release_request
from activities.notify import Notifier, SmtpSettings
from starter.releases import ReleaseNotFound, ReleaseRef
from tests.conftest import ROOT, Stack, wait_for
from worker.devserver import free_port, start_dev_server, stop_process, wait_for_server
from workflows.control_api import NotificationRequest, Recipient, ReleaseSummary
from workflows.names import pipeline_workflow_id, stage_workflow_id
from workflows.pipeline import Pipeline
from workflows.pipeline_workflow import NewRelease, PipelineState, PipelineWorkflow
from workflows.release import StageStatus

pytestmark = pytest.mark.e2e

# The goal is 2 s; the bound is loose for a loaded machine.
QUICK = 10.0


def stage_yaml(tasks: str = "[{name: t, script: 'true'}]") -> str:
    return f"stages:\n  - name: dev\n    pool: POOL\n    tasks: {tasks}\n"


async def refused(stack: Stack, *args: str) -> str:
    """Run `stageflow ARGS`; it must exit 2 within QUICK seconds with one line on stderr
    (the API it goes through started and the person made before the clock starts)."""
    await asyncio.to_thread(stack.signed_in)
    started = time.monotonic()
    result = await asyncio.to_thread(stack.cli, *args, timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert took < QUICK, f"refused after {took:.1f}s: {lines[0]}"
    print(f"refused in {took:.2f}s: {lines[0][:200]}")
    return lines[0]


async def never_started(client: Client, pipeline: str) -> None:
    """Nothing was sent: the pipeline's workflow (created with the first release) is absent."""
    with pytest.raises(RPCError) as caught:
        await client.get_workflow_handle(pipeline_workflow_id(pipeline)).describe()
    assert caught.value.status == RPCStatusCode.NOT_FOUND


# --- names that become parts of paths -------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("a..b-{suffix}", stage_yaml(), "name: 'a..b-"),
        ("names-{suffix}", stage_yaml().replace("name: dev", "name: dev..x"), "stages[0].name"),
        ("names-{suffix}", stage_yaml().replace("name: dev", "name: .dev"), "stages[0].name"),
        ("names-{suffix}", stage_yaml().replace("name: dev", "name: dev/x"), "stages[0].name"),
        (
            "names-{suffix}",
            "stages:\n  - name: dev\n    jobs:\n      - name: a..b\n        pool: POOL\n"
            "        tasks: [{name: t, script: 'true'}]\n",
            "stages[0].jobs[0].name",
        ),
    ],
)
async def test_a_name_with_dot_dot_a_slash_or_a_leading_dot_is_refused(
    api_only: Stack, name: str, body: str, field: str
) -> None:
    name = name.format(suffix=api_only.suffix)
    pipeline = api_only.write_pipeline(f"name: {name}\n{body}")

    line = await refused(api_only, "release", "create", str(pipeline))

    assert field in line and "is not a valid name" in line and "'..'" in line
    await never_started(api_only.client, name)


async def test_a_task_name_with_dots_runs_and_its_log_reads(stack: Stack) -> None:
    name = f"dots-{stack.suffix}"
    pipeline = stack.write_pipeline(
        f"name: {name}\n" + stage_yaml("[{name: upgrade 1.2..1.3, script: 'echo upgraded'}]")
    )
    await stack.start_worker()
    await stack.start_agent("a1")

    created = await asyncio.to_thread(stack.cli, "release", "create", str(pipeline), "--wait")
    assert created.returncode == 0, created.stdout + created.stderr

    logs = await asyncio.to_thread(stack.cli, "logs", f"{name}/1", "--task", "upgrade 1.2..1.3")
    assert logs.returncode == 0, logs.stderr
    assert "task 'upgrade 1.2..1.3'" in logs.stdout and "upgraded" in logs.stdout


# --- variables -----------------------------------------------------------------------------

SETTABLE = """
    name: vars-{suffix}
    variables:
      VERSION: {{value: "1.0", settable: true}}
      MODE: fast
    stages:
      - name: dev
        pool: POOL
        tasks: [{{name: show, script: 'echo "version=$VERSION mode=$MODE"; test ! -e {marker}'}}]
"""


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ("BASH_ENV={evil}", "--var BASH_ENV: BASH_ENV is read by the task's shell at start"),
        ("LD_PRELOAD=/tmp/x.so", "--var LD_PRELOAD: LD_PRELOAD is read by the dynamic loader"),
        ("PYTHONSTARTUP={evil}", "--var PYTHONSTARTUP: PYTHONSTARTUP is read by Python at start"),
        ("STAGEFLOW_STAGE=prod", "--var STAGEFLOW_STAGE: STAGEFLOW_STAGE is one of the names"),
        ("EXTRA=1", "--var EXTRA: 'EXTRA' is not a variable of pipeline vars-"),
        ("MODE=slow", "--var MODE: 'MODE' is not settable at release time"),
    ],
)
async def test_a_release_time_variable_the_pipeline_does_not_declare_settable_is_refused(
    api_only: Stack, var: str, message: str
) -> None:
    marker = api_only.root / "evil-ran"
    evil = api_only.root / "evil.sh"
    evil.write_text(f"touch {marker}\n")
    pipeline = api_only.write_pipeline(SETTABLE.format(suffix=api_only.suffix, marker=marker))

    line = await refused(
        api_only, "release", "create", str(pipeline), "--var", var.format(evil=evil)
    )

    assert line.startswith(f"error: {message}"), line
    await never_started(api_only.client, f"vars-{api_only.suffix}")
    assert not marker.exists()


async def test_a_variable_declared_settable_takes_its_release_time_value(stack: Stack) -> None:
    pipeline = stack.write_pipeline(
        SETTABLE.format(suffix=stack.suffix, marker=stack.root / "evil-ran")
    )
    await stack.start_worker()
    await stack.start_agent("a1")

    created = await asyncio.to_thread(
        stack.cli, "release", "create", str(pipeline), "--var", "VERSION=2.0", "--wait"
    )

    assert created.returncode == 0, created.stdout + created.stderr
    logs = await asyncio.to_thread(stack.cli, "logs", f"vars-{stack.suffix}/1")
    assert "version=2.0 mode=fast" in logs.stdout


async def test_a_pipeline_variable_read_at_start_is_refused_at_its_line(api_only: Stack) -> None:
    name = f"envvar-{api_only.suffix}"
    pipeline = api_only.write_pipeline(
        f"name: {name}\nvariables: {{BASH_ENV: /tmp/x}}\n{stage_yaml()}"
    )

    line = await refused(api_only, "release", "create", str(pipeline))

    assert line == (
        f"error: {pipeline}:2: variables.BASH_ENV: BASH_ENV is read by the task's shell"
        " at start: not allowed as a variable"
    )
    await never_started(api_only.client, name)


# --- release names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release_name_format", "message"),
    [
        ("R{{ number }}\\nX", "renders 'R1\\nX' for release 1: a release name is one line"),
        ("R{{ number // 0 }}", "cannot be rendered for release 1: integer division or modulo"),
    ],
)
async def test_a_release_name_format_that_renders_badly_is_refused(
    api_only: Stack, release_name_format: str, message: str
) -> None:
    name = f"names-{api_only.suffix}"
    pipeline = api_only.write_pipeline(
        f'name: {name}\nrelease_name_format: "{release_name_format}"\n{stage_yaml()}'
    )

    line = await refused(api_only, "release", "create", str(pipeline))

    assert line.startswith(f"error: {pipeline}:2: release_name_format: {message}"), line
    await never_started(api_only.client, name)


async def test_a_mail_that_cannot_be_built_fails_once_and_the_deployment_goes_on(
    stack: Stack,
) -> None:
    # A release recorded before names were checked: its name holds a line break, so the
    # approval mail's Subject header cannot be written.
    name = f"mail-{stack.suffix}"
    pipeline = Pipeline.model_validate(
        {
            "name": name,
            "release_name_format": "R{{ number }}\nBcc: mallory@example.test",
            "users": {"alice": {"email": "alice@example.test"}},
            "stages": [
                {
                    "name": "prod",
                    "pool": stack.pool(),
                    "pre_deployment": {"approvals": {"approvers": ["alice"]}},
                    "tasks": [{"name": "ship", "script": "echo shipped"}],
                }
            ],
        }
    )
    await stack.start_worker()
    await stack.start_agent("a1")
    await stack.client.execute_update_with_start_workflow(
        PipelineWorkflow.create_release,
        NewRelease(pipeline=pipeline, revision="0" * 64, created_by="tester", request_id="r1"),
        start_workflow_operation=WithStartWorkflowOperation(
            PipelineWorkflow.run,
            PipelineState(name=name),
            id=pipeline_workflow_id(name),
            task_queue=stack.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        ),
    )
    ref = ReleaseRef(name, 1)
    deployment = stack.client.get_workflow_handle(stage_workflow_id(name, 1, "prod", 1))

    async def mail_failed() -> list[str]:
        failures = []
        try:
            async for event in deployment.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
                    failures.append(event.activity_task_failed_event_attributes.failure.message)
        except RPCError:  # the deployment has not started yet
            return []
        return failures

    failures = await wait_for(mail_failed, what="the approval mail to fail")
    assert len(failures) == 1 and "cannot be built" in failures[0], failures
    events = [event async for event in deployment.fetch_history_events()]
    mails = {
        event.event_id
        for event in events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and event.activity_task_scheduled_event_attributes.activity_type.name == "send_notification"
    }
    attempts = [
        event.activity_task_started_event_attributes.attempt
        for event in events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and event.activity_task_started_event_attributes.scheduled_event_id in mails
    ]
    assert attempts == [1]  # not retried
    assert not list((stack.data_dir / "outbox").glob("*.eml"))

    approved = await asyncio.to_thread(stack.cli, "approve", str(ref), "prod", user="alice")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    status = await stack.wait_settled(ref)
    assert status.stage("prod").status == StageStatus.SUCCEEDED


async def test_a_mail_with_a_line_break_in_a_header_is_not_retried(tmp_path: Path) -> None:
    request = NotificationRequest(
        kind="approval_pending",
        recipients=[Recipient(user="alice", email="alice@example.test")],
        release=ReleaseSummary(
            pipeline="webapp", number=7, name="R7\nBcc: mallory@example.test", created_by="c"
        ),
        stage="prod",
        attempt=1,
        phase="pre",
    )
    notifier = Notifier(SmtpSettings(), tmp_path / "outbox")

    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(notifier.send_notification, request)

    assert caught.value.type == "MailNotBuilt" and caught.value.non_retryable
    assert caught.value.message == (
        "the approval_pending mail for webapp/7 prod cannot be built: ValueError:"
        " Header values may not contain linefeed or carriage return characters"
    )
    assert not (tmp_path / "outbox").exists() or not list((tmp_path / "outbox").iterdir())


# --- size and depth ---------------------------------------------------------------------------


async def test_deeply_nested_yaml_is_one_line_not_a_recursion_error(api_only: Stack) -> None:
    pipeline = api_only.write_pipeline("name: x\nstages: " + "[" * 20_000 + "\n")

    line = await refused(api_only, "release", "create", str(pipeline))

    assert line.startswith(f"error: {pipeline}:2: invalid YAML: ")


async def test_a_five_megabyte_pipeline_of_ten_thousand_stages_is_refused_by_its_size(
    api_only: Stack,
) -> None:
    name = f"big-{api_only.suffix}"
    script = "echo " + "x" * 480
    stages = "".join(
        f"  - name: s{index}\n    pool: POOL\n    tasks: [{{name: t, script: '{script}'}}]\n"
        for index in range(10_000)
    )
    pipeline = api_only.write_pipeline(f"name: {name}\nstages:\n{stages}")

    line = await refused(api_only, "release", "create", str(pipeline))

    size = pipeline.stat().st_size / 1024 / 1024
    assert line == (
        f"error: {pipeline}: the file is {size:.1f} MB: a pipeline file is at most 1.0 MB"
    )
    await never_started(api_only.client, name)


async def test_ten_thousand_stages_in_a_small_file_are_refused_by_the_payload_limit(
    api_only: Stack,
) -> None:
    name = f"many-{api_only.suffix}"
    stages = "".join(
        f"  - {{name: s{index}, pool: POOL, tasks: [{{name: t, script: x}}]}}\n"
        for index in range(10_000)
    )
    pipeline = api_only.write_pipeline(f"name: {name}\nstages:\n{stages}")
    valid = await asyncio.to_thread(api_only.cli, "pipeline", "validate", str(pipeline))
    assert valid.returncode == 0, valid.stderr

    line = await refused(api_only, "release", "create", str(pipeline))

    assert re.match(r"error: the release request is 4\.\d MB, more than Temporal's 2\.0 MB", line)
    assert re.search(r"stages in the pipeline file is 4\.\d MB \(10,000 entries\)$", line)
    await never_started(api_only.client, name)


async def test_a_two_and_a_half_megabyte_variable_is_refused_before_anything_is_sent(
    api_only: Stack,
) -> None:
    name = f"bigvar-{api_only.suffix}"
    direct = api_only.write_pipeline(
        f"name: {name}\nvariables:\n  BIG: {'y' * 2_500_000}\n{stage_yaml()}", "direct.yml"
    )
    # Under the file limit, aliases repeat one 0.9 MB value three times in the request.
    aliased = api_only.write_pipeline(
        f"name: {name}\nvariables:\n  A: &big {'y' * 900_000}\n  B: *big\n  C: *big\n"
        + stage_yaml(),
        "aliased.yml",
    )

    line = await refused(api_only, "release", "create", str(direct))
    assert line == f"error: {direct}: the file is 2.4 MB: a pipeline file is at most 1.0 MB"
    line = await refused(api_only, "release", "create", str(aliased))
    assert line == (
        "error: the release request is 2.6 MB, more than Temporal's 2.0 MB payload limit"
        " allows: variables in the pipeline file is 2.6 MB (3 entries)"
    )
    await never_started(api_only.client, name)


def test_a_release_time_value_over_the_payload_limit_is_named() -> None:
    pipeline = Pipeline.validate_new(
        {
            "name": "webapp",
            "variables": {"BIG": {"settable": True}},
            "stages": [{"name": "dev", "pool": "l", "tasks": [{"name": "t", "script": "x"}]}],
        }
    )
    request = NewRelease(
        pipeline=pipeline,
        revision="0" * 64,
        variables={"BIG": "y" * 2_500_000},
        created_by="tester",
        request_id="r",
    )

    with pytest.raises(RequestRefused) as caught:
        check_release_request(request)

    assert str(caught.value) == (
        "the release request is 2.4 MB, more than Temporal's 2.0 MB payload limit allows:"
        " --var BIG is 2.4 MB"
    )


# --- a Temporal restart under a waiting command ------------------------------------------------


async def test_json_stays_json_while_the_server_restarts(tmp_path: Path) -> None:
    """`release create --wait --json` polls the API through a Temporal restart: the API
    answers from the record meanwhile, the CLI's stdout is one JSON document and its
    stderr stays empty (the SDK's retry warnings are the API's, in its own log)."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    server_dir = tmp_path / "temporal"
    server = start_dev_server(server_dir, port, headless=True)
    try:
        await wait_for_server(address, timeout=60, process=server)
        client = await Client.connect(address, data_converter=pydantic_data_converter)
        stack = Stack(client=client, address=address, root=tmp_path)
        try:
            await stack.start_worker()
            await stack.start_agent("a1")
            go = tmp_path / "go"
            name = f"restart-{stack.suffix}"
            wait = f"while [ ! -e {go} ]; do sleep 0.1; done; echo done"
            pipeline = stack.write_pipeline(
                f"name: {name}\n" + stage_yaml(f"[{{name: wait, script: '{wait}'}}]")
            )
            errors = tmp_path / "cli.err"
            with open(errors, "w") as stderr:
                cli = subprocess.Popen(
                    [sys.executable, "-m", "starter.cli", "--json", "release", "create"]
                    + [str(pipeline), "--wait"],
                    cwd=tmp_path,
                    env=stack.env(PYTHONPATH=str(ROOT), **stack.signed_in()),
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                )
            try:

                async def task_running() -> bool:
                    try:
                        status = await stack.status(ReleaseRef(name, 1))
                    except ReleaseNotFound:
                        return False
                    attempt = status.stage("dev").latest
                    return attempt is not None and any(
                        task.status == "in_progress" for task in attempt.tasks
                    )

                await wait_for(task_running, what="the task to run")
                api_log = tmp_path / "api-0.log"

                def polls() -> int:
                    return api_log.read_text().count(f"GET /api/v1/releases/{name}/1 ")

                stop_process(server)
                before = polls()

                async def polled_meanwhile() -> bool:  # the API answered with Temporal away
                    return polls() >= before + 2

                await wait_for(polled_meanwhile, timeout=30, what="polls while Temporal is down")
                server = start_dev_server(server_dir, port, headless=True)
                await wait_for_server(address, timeout=60, process=server)
                go.touch()
                out, _ = await asyncio.to_thread(cli.communicate, timeout=120)
            finally:
                if cli.poll() is None:
                    cli.kill()
                    cli.wait()
            err = errors.read_text()
            assert cli.returncode == 0, out + err
            shown = json.loads(out)  # one JSON document, nothing else on stdout
            assert shown["pipeline"] == name and shown["stages"][0]["status"] == "succeeded"
            assert err == "" and "WARN" not in out
        finally:
            stack.stop_all()
    finally:
        stop_process(server)


@pytest.mark.parametrize("url", ["stageflow.example.com", "ftp://example.com", "https://x/?a=1"])
def test_a_public_url_that_is_not_an_http_url_stops_a_worker_before_it_starts(
    url: str, tmp_path: Path
) -> None:
    """STAGEFLOW_PUBLIC_URL is where mails link the releases' pages: a bad one is named
    at start, exit 2, not found out in the first mail."""
    result = subprocess.run(
        [sys.executable, "-m", "starter.cli", "worker"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "STAGEFLOW_DATA_DIR": str(tmp_path / "data"),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "STAGEFLOW_PUBLIC_URL": url,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (
        f"error: STAGEFLOW_PUBLIC_URL: {url!r} is not an http(s) URL like "
        "https://stageflow.example.com\n"
    )
