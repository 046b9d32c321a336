"""Secrets never leave the agent: every string an agent activity returns, raises or
heartbeats, and every line Stageflow writes in a task's log, has the task's secrets
masked. Unit tests for the masking layer, then one end-to-end test per path a
secret took before (real dev server, control worker and agent processes), each
checking the histories, `release show --json` and the log store."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.failure.v1 import Failure
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.agent import AgentActivities
from activities.log_store import DirectoryLogStore
from activities.logs import LogWriter, SecretMasker
from activities.masking import heartbeat, is_masked, masks_secrets
from tests.conftest import Stack, wait_for
from tests.readable import assert_nowhere
from workflows.agent_api import RunTaskResult, TaskProgress
from workflows.release import ReleaseStatus, StageStatus, TaskStatus

SECRET = "hunter2-very-secret"

# --- the masking layer ----------------------------------------------------------------


def test_mask_hides_a_value_and_its_quoted_forms() -> None:
    masker = SecretMasker(["pa ss/wo'rd\\1"])
    assert masker.mask("GET http://h/?t=pa%20ss%2Fwo%27rd%5C1 answered 500") == (
        "GET http://h/?t=*** answered 500"
    )
    assert masker.mask(repr("/srv/pa ss/wo'rd\\1/x")) == '"/srv/***/x"'
    assert masker.mask("plain pa ss/wo'rd\\1.") == "plain ***."
    assert SecretMasker([]).mask("nothing pa ss") == "nothing pa ss"


def test_log_note_masks_the_tasks_secrets(tmp_path: Path) -> None:
    with LogWriter(tmp_path / "t.log", masker=SecretMasker([SECRET])) as log:
        log.note(f"rendered app.conf.j2 -> /srv/{SECRET}.conf (12 bytes)")
        log.write(b"raw output is the process masker's job\n")
    text = (tmp_path / "t.log").read_text()
    assert "rendered app.conf.j2 -> /srv/***.conf" in text and SECRET not in text


class Steps:
    """Stand-in agent steps: each request is its own secret values."""

    def secret_values(self, request: Any) -> list[str]:
        return list(request)

    @activity.defn(name="returns")
    @masks_secrets
    async def returns(self, request: list[str]) -> RunTaskResult:
        heartbeat(TaskProgress(bytes=1, last_lines=[f"token {request[0]}"], log_path="/l"))
        return RunTaskResult(
            succeeded=False, duration=0, log_path="/l", message=f"GET /?t={request[0]} answered 500"
        )

    @activity.defn(name="raises")
    @masks_secrets
    async def raises(self, request: list[str]) -> None:
        try:
            raise OSError(f"cannot open /srv/{request[0]}")
        except OSError as err:
            raise ApplicationError(
                f"deploy to {request[0]} failed",
                {"dir": f"/srv/{request[0]}"},
                type="TaskFailed",
                non_retryable=True,
            ) from err

    @activity.defn(name="raises_plain")
    @masks_secrets
    async def raises_plain(self, request: list[str]) -> None:
        raise KeyError(request[0])


async def test_result_and_heartbeat_details_are_masked() -> None:
    env = ActivityEnvironment()
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.extend(details)
    result = await env.run(Steps().returns, [SECRET])
    assert result.message == "GET /?t=*** answered 500"
    assert beats == [TaskProgress(bytes=1, last_lines=["token ***"], log_path="/l")]


async def test_a_raised_error_keeps_its_type_and_retry_policy_with_message_details_and_cause_masked() -> (
    None
):
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(Steps().raises, [SECRET])
    err = raised.value
    assert (err.message, err.type, err.non_retryable) == (
        "deploy to *** failed",
        "TaskFailed",
        True,
    )
    assert list(err.details) == [{"dir": "/srv/***"}]
    assert isinstance(err.__cause__, ApplicationError) and err.__cause__.type == "OSError"
    # What Temporal records of it: the failure, its cause chain and stack traces.
    failure = Failure()
    await pydantic_data_converter.encode_failure(err, failure)
    assert "***" in str(failure) and SECRET not in str(failure)
    assert SECRET.encode() not in failure.SerializeToString()

    with pytest.raises(ApplicationError) as plain:
        await ActivityEnvironment().run(Steps().raises_plain, [SECRET])
    assert (plain.value.message, plain.value.type) == ("'***'", "KeyError")
    assert not plain.value.non_retryable


def test_every_agent_activity_is_masked(tmp_path: Path) -> None:
    served = [
        getattr(AgentActivities, name)
        for name in dir(AgentActivities)
        if hasattr(getattr(AgentActivities, name), "__temporal_activity_definition")
    ]
    assert len(served) >= 5
    assert [f.__name__ for f in served if not is_masked(f)] == []


def test_an_agent_masks_the_secrets_its_request_resolves(tmp_path: Path) -> None:
    from temporalio.client import Client

    from workflows.agent_api import JobContext, RunTaskRequest
    from workflows.pipeline import SecretRef, Task

    (tmp_path / "token").write_text("tok-file-secret\n")
    agent = AgentActivities(
        Client.__new__(Client),
        agent_id="a",
        agent_name="a",
        work_dir=tmp_path / "work",
        log_store=DirectoryLogStore(tmp_path / "logs"),
        base_env={"SF_PW": SECRET},
        data_dir=tmp_path,
    )
    context = JobContext(
        pipeline="p", release="R-1", number=1, stage="dev", attempt=1, job="job", lease_id="l"
    )
    request = RunTaskRequest(
        context=context,
        task=Task(name="t", script="true"),
        index=1,
        secrets={
            "PW": SecretRef(secret="env:SF_PW"),
            "TOKEN": SecretRef(secret=f"file:{tmp_path / 'token'}"),
            "GONE": SecretRef(secret="env:SF_NOT_SET"),
        },
    )
    assert sorted(agent.secret_values(request)) == sorted([SECRET, "tok-file-secret"])


# --- end to end: one test per path a secret took ---------------------------------------------


@pytest.fixture
def failing_server() -> Iterator[int]:
    """An HTTP server on 127.0.0.1 that answers every request 500 (a thread of this test)."""

    class Answer500(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"deploy hook broke\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def pipeline_with(stack: Stack, tasks: str, artifacts: str = "") -> Path:
    """A one-stage pipeline with DB_PASSWORD a secret from the agent's environment and
    PLAIN a plain value every test also prints (so the search is shown to find it)."""
    text = f"""
name: secret-SUFFIX
variables:
  DB_PASSWORD: {{secret: env:SF_TEST_DB_PASSWORD}}
  PLAIN: plain-SUFFIX
{artifacts}
stages:
  - name: dev
    pool: POOL
    tasks:
      - name: say plain
        script: echo "plain is $PLAIN"
{tasks}
"""
    return stack.write_pipeline(text.replace("SUFFIX", stack.suffix))


async def release_of(stack: Stack, pipeline: Path) -> tuple[Any, ReleaseStatus]:
    await stack.start_worker()
    await stack.start_agent("a1", SF_TEST_DB_PASSWORD=SECRET)
    ref, _ = await stack.create(pipeline)
    return ref, await stack.wait_settled(ref)


def task_run(status: ReleaseStatus, name: str) -> Any:
    latest = status.stage("dev").latest
    assert latest is not None
    return next(run for run in latest.tasks if run.task == name)


@pytest.mark.e2e
async def test_http_error_naming_a_url_with_a_secret_token_is_masked(
    stack: Stack, failing_server: int
) -> None:
    pipeline = pipeline_with(
        stack,
        f"""
      - name: call hook
        http:
          url: "http://127.0.0.1:{failing_server}/deploy?token={{{{ DB_PASSWORD }}}}"
""",
    )
    ref, status = await release_of(stack, pipeline)
    call = task_run(status, "call hook")
    assert call.status == TaskStatus.FAILED
    assert call.message == (
        f"GET http://127.0.0.1:{failing_server}/deploy?token=*** answered 500, expected 200"
    )
    log = stack.log_text(call.log)
    assert f"GET http://127.0.0.1:{failing_server}/deploy?token=*** -> 500" in log
    assert "failed: GET http://127.0.0.1" in log
    await assert_nowhere(stack, ref, status, SECRET, f"plain-{stack.suffix}")


@pytest.mark.e2e
async def test_os_error_naming_a_working_dir_built_from_a_secret_is_masked(
    stack: Stack,
) -> None:
    blocker = stack.root / "blocker"
    blocker.write_text("a file where a directory would go\n")
    pipeline = pipeline_with(
        stack,
        f"""
      - name: in secret dir
        working_dir: "{blocker}/{{{{ DB_PASSWORD }}}}"
        script: echo never runs
""",
    )
    ref, status = await release_of(stack, pipeline)
    run = task_run(status, "in secret dir")
    assert run.status == TaskStatus.FAILED
    assert run.message == f"NotADirectoryError: [Errno 20] Not a directory: '{blocker}/***'"
    assert f"failed: NotADirectoryError: [Errno 20] Not a directory: '{blocker}/***'" in (
        stack.log_text(run.log)
    )
    await assert_nowhere(stack, ref, status, SECRET, f"plain-{stack.suffix}")


DROP = """
artifacts:
  - alias: app
    type: local
    path: ./drop
"""


def make_drop(stack: Stack) -> None:
    folder = stack.root / "drop" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "app.conf.j2").write_text("password={{ DB_PASSWORD }}\n")
    (folder / "VERSION").write_text("1.0.0\n")


@pytest.mark.e2e
async def test_template_and_copy_log_lines_with_a_secret_target_are_masked(
    stack: Stack,
) -> None:
    make_drop(stack)
    pipeline = pipeline_with(
        stack,
        """
      - name: render
        template:
          source: app/app.conf.j2
          target: "out/{{ DB_PASSWORD }}.conf"
      - name: copy
        copy:
          sources: [app/VERSION]
          target: "copies/{{ DB_PASSWORD }}"
""",
        artifacts=DROP,
    )
    ref, status = await release_of(stack, pipeline)
    assert status.stage("dev").status == StageStatus.SUCCEEDED
    rendered = stack.log_text(task_run(status, "render").log)
    assert "rendered app/app.conf.j2 -> " in rendered and "/out/***.conf (" in rendered
    copied = stack.log_text(task_run(status, "copy").log)
    assert "/copies/***/VERSION" in copied and "item(s) to " in copied
    await assert_nowhere(stack, ref, status, SECRET, f"plain-{stack.suffix}")


@pytest.mark.e2e
async def test_result_message_naming_a_secret_path_is_masked(stack: Stack) -> None:
    make_drop(stack)
    pipeline = pipeline_with(
        stack,
        """
      - name: copy
        copy:
          sources: [app/VERSION]
          target: "copies/{{ DB_PASSWORD }}"
      - name: copy again
        copy:
          sources: [app/VERSION]
          target: "copies/{{ DB_PASSWORD }}"
          overwrite: false
""",
        artifacts=DROP,
    )
    ref, status = await release_of(stack, pipeline)
    again = task_run(status, "copy again")
    assert again.status == TaskStatus.FAILED
    assert again.message.startswith("copy: ") and again.message.endswith(
        "/copies/***/VERSION exists and overwrite is false"
    )
    await assert_nowhere(stack, ref, status, SECRET, f"plain-{stack.suffix}")


@pytest.mark.e2e
async def test_heartbeat_details_of_a_running_task_are_masked(stack: Stack) -> None:
    go = stack.root / "go"
    pipeline = pipeline_with(
        stack,
        f"""
      - name: wait
        script: |
          echo "token is $DB_PASSWORD in $STAGEFLOW_WORK_DIR"
          while [ ! -e "{go}" ]; do sleep 0.05; done
""",
    )
    await stack.start_worker()
    await stack.start_agent("a1", SF_TEST_DB_PASSWORD=SECRET)
    ref, _ = await stack.create(pipeline)

    async def progress() -> TaskProgress | None:
        status = await stack.status(ref)
        attempts = status.stage("dev").attempts
        if not attempts:
            return None
        description = await stack.client.get_workflow_handle(attempts[0].workflow_id).describe()
        for pending in description.raw_description.pending_activities:
            if pending.activity_type.name == "run_task" and pending.heartbeat_details.payloads:
                raw = b"".join(p.data for p in pending.heartbeat_details.payloads)
                assert SECRET.encode() not in raw
                (beat,) = await stack.client.data_converter.decode(
                    pending.heartbeat_details.payloads, [TaskProgress]
                )
                if any("token is" in line for line in beat.last_lines):
                    return beat  # type: ignore[no-any-return]
        return None

    beat = await wait_for(progress, timeout=30, what="a heartbeat with the task's output")
    assert any(line.startswith("token is *** in ") for line in beat.last_lines)
    go.touch()
    status = await stack.wait_settled(ref)
    assert status.stage("dev").status == StageStatus.SUCCEEDED
    await assert_nowhere(stack, ref, status, SECRET, f"plain-{stack.suffix}")


@pytest.mark.e2e
async def test_every_path_at_once_leaves_no_secret_in_show_json_histories_or_logs(
    stack: Stack, failing_server: int
) -> None:
    """The paths above in one release, every task going on after a failure."""
    make_drop(stack)
    blocker = stack.root / "blocker"
    blocker.write_text("x\n")
    pipeline = pipeline_with(
        stack,
        f"""
      - name: call hook
        continue_on_error: true
        http:
          url: "http://127.0.0.1:{failing_server}/?token={{{{ DB_PASSWORD }}}}"
      - name: in secret dir
        continue_on_error: true
        working_dir: "{blocker}/{{{{ DB_PASSWORD }}}}"
        script: echo never runs
      - name: render
        continue_on_error: true
        template:
          source: app/app.conf.j2
          target: "out/{{{{ DB_PASSWORD }}}}.conf"
      - name: echo
        script: echo "the password is $DB_PASSWORD"
""",
        artifacts=DROP,
    )
    ref, status = await release_of(stack, pipeline)
    messages = [run.message for run in status.stage("dev").latest.tasks]  # type: ignore[union-attr]
    assert sum("***" in m for m in messages) == 2, messages
    assert "the password is ***" in stack.log_text(task_run(status, "echo").log)
    await assert_nowhere(stack, ref, status, SECRET, f"plain-{stack.suffix}")
