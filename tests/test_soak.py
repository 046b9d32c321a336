"""The soak (`python -m bench.soak`): a short run in the suite asserts that every
invariant held, and the checks themselves are pinned on made-up evidence, so a
violation cannot pass unseen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from activities.pipeline_loader import load_pipeline
from bench.soak_invariants import (
    CreateRecord,
    Kill,
    Verdict,
    approvals_kept,
    end_states,
    never_concurrent,
    numbers_unique,
    visible_tries,
)
from bench.soak_ledger import Ledger, Run
from bench.soak_pipeline import STAGES, TASK_SCRIPT, SoakPipeline, write_pipeline
from workflows.approval_policy import ApprovalState, DecisionRecord
from workflows.audit import AuditEvent
from workflows.release import (
    AgentSession,
    ReleaseStatus,
    StageAttempt,
    StageStatus,
    StageView,
    TaskRun,
    TaskStatus,
)

ROOT = Path(__file__).resolve().parent.parent
SHORT_SOAK_SECONDS = 150


def ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def run(run_id: str, start: float, end: float | None, **fields: object) -> Run:
    values: dict[str, object] = dict(
        release=1, stage="build", task="compile", attempt=1, task_try=1, pid=100, agent="agent-1"
    )
    values.update(fields)
    return Run(run_id=run_id, start=start, end=end, **values)  # type: ignore[arg-type]


def release(stages: list[StageView], number: int = 1, description: str = "") -> ReleaseStatus:
    return ReleaseStatus(
        pipeline="soak",
        number=number,
        name=f"Soak-{number}",
        state="active",
        status="succeeded",
        created_by="soak",
        created_at=ts(0),
        description=description,
        stages=stages,
    )


def attempt(
    status: StageStatus,
    tasks: list[TaskRun] | None = None,
    agents: list[AgentSession] | None = None,
    approvals: list[ApprovalState] | None = None,
) -> StageAttempt:
    return StageAttempt(
        attempt=1,
        status=status,
        workflow_id="release/soak/1/build/1",
        triggered_by="soak",
        reason="after_release",
        started_at=ts(0),
        tasks=tasks or [],
        agents=agents or [],
        approvals=approvals or [],
    )


def build_view(logs: list[str], sessions: list[AgentSession]) -> StageView:
    task = TaskRun(job="job", task="compile", status=TaskStatus.SUCCEEDED, tries=1, logs=logs)
    return StageView(
        name="build",
        status=StageStatus.SUCCEEDED,
        attempts=[attempt(StageStatus.SUCCEEDED, [task], sessions)],
    )


def session(agent: str, try_number: int, leased: float, ended: float | None = None) -> AgentSession:
    return AgentSession(
        job="job",
        try_number=try_number,
        agent=agent,
        leased_at=ts(leased),
        ended_at=ts(ended) if ended is not None else None,
    )


# --- the ledger and "never concurrently" ----------------------------------------------


def test_task_script_writes_a_start_and_an_end_line_the_ledger_reads(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    script = tmp_path / "task.sh"
    script.write_text(TASK_SCRIPT)
    env = {
        **os.environ,
        "SOAK_LEDGER": str(ledger),
        "SOAK_SHORT_MS": "1",
        "SOAK_LONG_MS": "0",
        "SOAK_VERY_LONG_MS": "0",
        "STAGEFLOW_RELEASE_NUMBER": "3",
        "STAGEFLOW_STAGE": "qa",
        "STAGEFLOW_TASK": "smoke",
        "STAGEFLOW_ATTEMPT": "1",
        "STAGEFLOW_TRY": "2",
        "STAGEFLOW_AGENT": "agent-9",
    }
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    read = Ledger(ledger)
    read.read_new()
    (only,) = read.runs.values()
    assert (only.release, only.stage, only.task, only.attempt, only.task_try) == (
        3,
        "qa",
        "smoke",
        1,
        2,
    )
    assert only.agent == "agent-9" and only.end is not None and only.end >= only.start
    assert f"soak-run {only.run_id} on agent-9" in done.stdout
    assert read.bad_lines == []


def test_soak_pipeline_is_valid_and_has_approvals_before_and_after(tmp_path: Path) -> None:
    written = write_pipeline(tmp_path, "soak-test", "pool-x", tmp_path / "ledger.txt")
    pipeline, _ = load_pipeline(written.path)
    assert pipeline.stage_names == [name for name, _, _ in STAGES]
    prod = pipeline.stage("prod")
    assert prod.pre_deployment and prod.pre_deployment.approvals
    assert prod.post_deployment and prod.post_deployment.approvals
    assert SoakPipeline.upstream("prod") == ["test", "qa"]


def test_two_runs_of_one_task_at_once_are_a_violation() -> None:
    check = never_concurrent([run("a", 10.0, 15.0), run("b", 14.0, 16.0, agent="agent-2")])
    assert not check.held
    assert "release 1 build/compile" in check.violations[0]
    assert "run b" in check.violations[0] and "run a" in check.violations[0]


def test_a_killed_run_still_seen_alive_overlaps_the_next_one() -> None:
    killed = run("a", 10.0, None, last_alive=20.0, gone_at=20.1)
    check = never_concurrent([killed, run("b", 18.0, 19.0)])
    assert not check.held


def test_runs_one_after_another_or_of_other_tasks_hold() -> None:
    check = never_concurrent(
        [
            run("a", 10.0, 12.0),
            run("b", 12.5, 13.0),
            run("c", 10.0, 13.0, task="package"),
            run("d", 11.0, None, last_alive=11.0, gone_at=11.2, release=2),
        ]
    )
    assert check.held, check.violations


# --- "every run is a visible try with its log" ------------------------------------------


def test_runs_matched_to_their_shown_tries_and_printed_logs_hold() -> None:
    keys = ["soak/1/build/1/job/01-compile.log", "soak/1/build/1/job/01-compile.job2.log"]
    status = release([build_view(keys, [session("agent-1", 1, 5, 12), session("agent-2", 2, 20)])])
    first, second = run("a", 10.0, 11.0), run("b", 25.0, 26.0, agent="agent-2")
    logs = {keys[0]: "soak-run a on agent-1\n", keys[1]: "soak-run b on agent-2\n"}
    check = visible_tries(
        [first, second], {1: status}, logs.get, {1: "soak-run a\nsoak-run b\n"}, []
    )
    assert check.held, check.violations


def test_a_run_under_a_try_that_ran_already_is_a_violation() -> None:
    # The server lost sight of the run; the same try ran again on the same agent.
    key = "soak/1/build/1/job/01-compile.log"
    status = release([build_view([key], [session("agent-1", 1, 5)])])
    runs = [run("a", 10.0, 11.0), run("b", 30.0, 31.0)]
    check = visible_tries(
        runs, {1: status}, {key: "soak-run a\nsoak-run b\n"}.get, {1: "soak-run a soak-run b"}, []
    )
    assert not check.held
    assert "ran 2 times as one try" in check.violations[0]


def test_a_run_the_release_does_not_show_is_a_violation() -> None:
    key = "soak/1/build/1/job/01-compile.log"
    status = release([build_view([key], [session("agent-1", 1, 5, 12)])])
    unseen = [
        run("a", 10.0, 11.0, agent="agent-3"),  # no session of its agent
        run("b", 13.0, 14.0),  # after its session ended, and its log does not show it
        run("c", 10.5, 11.0, task_try=2),  # no such try listed
    ]
    check = visible_tries(unseen, {1: status}, {key: ""}.get, {1: ""}, [])
    assert len(check.violations) == 3, check.violations
    by_run = {v.split(" (try key")[0].rsplit(" ", 1)[-1]: v for v in check.violations}
    assert "no session of agent-3" in by_run["a"]
    assert "after the release ended its session" in by_run["b"]
    assert "not among the tries shown" in by_run["c"]


def test_a_run_begun_as_its_try_was_given_up_is_a_note_when_that_log_shows_it() -> None:
    key = "soak/1/build/1/job/01-compile.log"
    status = release([build_view([key], [session("agent-1", 1, 5, 12)])])
    late = run("b", 12.05, None, last_alive=12.2, gone_at=12.3)
    check = visible_tries([late], {1: status}, {key: "soak-run b\n"}.get, {1: "soak-run b"}, [])
    assert check.held, check.violations
    assert "0.050s after the release ended its session" in check.notes[0]


def test_a_finished_run_missing_from_its_log_is_a_violation_unless_its_agent_died() -> None:
    key = "soak/1/build/1/job/01-compile.log"
    status = release([build_view([key], [session("agent-1", 1, 5)])])
    finished = run("a", 10.0, 11.0)
    check = visible_tries([finished], {1: status}, {key: "nothing\n"}.get, {1: ""}, [])
    assert not check.held and "does not show it" in check.violations[0]
    killed = Kill("agent", "agent-1", 1, 10.5, 1.0)
    check = visible_tries([finished], {1: status}, {key: "nothing\n"}.get, {1: ""}, [killed])
    assert check.held, check.violations


def test_a_log_that_stageflow_logs_does_not_print_is_a_violation() -> None:
    key = "soak/1/build/1/job/01-compile.log"
    status = release([build_view([key], [session("agent-1", 1, 5)])])
    check = visible_tries(
        [run("a", 10.0, 11.0)], {1: status}, {key: "soak-run a\n"}.get, {1: "no logs yet"}, []
    )
    assert not check.held and "does not print" in check.violations[0]


# --- end states, approvals, numbers ------------------------------------------------------


def upstream(stage: str) -> list[str]:
    return {"test": ["build"]}.get(stage, [])


def test_a_stage_left_in_progress_or_untriggered_is_a_violation() -> None:
    stuck = release([StageView(name="build", status=StageStatus.IN_PROGRESS)])
    lost = release(
        [
            StageView(name="build", status=StageStatus.SUCCEEDED),
            StageView(name="test", status=StageStatus.NOT_DEPLOYED),
        ],
        number=2,
    )
    fine = release(
        [
            StageView(name="build", status=StageStatus.FAILED),
            StageView(name="test", status=StageStatus.NOT_DEPLOYED),
        ],
        number=3,
    )
    check = end_states([1, 2, 3, 4], {1: stuck, 2: lost, 3: fine}, upstream, "")
    assert len(check.violations) == 3, check.violations
    assert "in_progress" in check.violations[0]
    assert "trigger was lost" in check.violations[1]
    assert "could not be read" in check.violations[2]


def approved_prod(status: StageStatus, approval: str) -> ReleaseStatus:
    state = ApprovalState(
        phase="pre",
        policy="any",
        approvers=["alice"],
        status=approval,  # type: ignore[arg-type]
        decisions=[
            DecisionRecord(
                time=ts(1), by="alice", action="approve", outcome="accepted", request_id="r1"
            )
        ],
    )
    return release(
        [StageView(name="prod", status=status, attempts=[attempt(status, approvals=[state])])]
    )


def test_an_accepted_approval_missing_from_history_or_not_passed_is_a_violation() -> None:
    verdict = Verdict(1, "prod", "pre", "alice", "approve", 1.0, "accepted", "r1")
    kept = AuditEvent(time=ts(1), actor="alice", action="approve", stage="prod", request_id="r1")
    good = approvals_kept(
        [verdict], {1: approved_prod(StageStatus.SUCCEEDED, "approved")}, {1: [kept]}
    )
    assert good.held, good.violations
    lost = approvals_kept([verdict], {1: approved_prod(StageStatus.SUCCEEDED, "approved")}, {1: []})
    assert not lost.held and "not in the release's history" in lost.violations[0]
    stuck = approvals_kept(
        [verdict], {1: approved_prod(StageStatus.WAITING_FOR_APPROVAL, "pending")}, {1: [kept]}
    )
    assert not stuck.held and "pending" in stuck.violations[0]


def test_one_number_for_two_requests_or_two_releases_for_one_request_is_a_violation() -> None:
    creates = [
        CreateRecord("req-1", 0.0, number=1),
        CreateRecord("req-2", 0.0, number=1),
        CreateRecord("req-3", 0.0, number=2),
    ]
    descriptions = {1: "soak request req-1", 2: "soak request req-3", 3: "soak request req-3"}
    check = numbers_unique(creates, descriptions, 3)
    assert any("answer to 2 requests" in v for v in check.violations), check.violations
    assert any("req-3 made 2 releases" in v for v in check.violations), check.violations
    fine = numbers_unique(creates[:1] + creates[2:], descriptions, 3)
    assert any("req-3 made 2 releases" in v for v in fine.violations)
    assert numbers_unique(creates[:1], {1: "soak request req-1"}, 1).held


# --- the short soak ------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(SHORT_SOAK_SECONDS + 55)
def test_short_soak_keeps_every_promise_under_kill_9(tmp_path: Path) -> None:
    record_path = tmp_path / "soak.json"
    command = [
        sys.executable,
        "-m",
        "bench.soak",
        "--kills",
        "6",
        "--releases",
        "5",
        "--seed",
        "11",
        "--max-minutes",
        str(SHORT_SOAK_SECONDS / 60),
        "--pause-min",
        "1",
        "--pause-max",
        "4",
        "--max-down",
        "2",
        "--max-server-down",
        "6",
        "--settle-seconds",
        "60",
        "--task-scale",
        "0.5",
        "--work-dir",
        str(tmp_path / "soak"),
        "--json",
        str(record_path),
    ]
    driver = subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = driver.communicate(timeout=SHORT_SOAK_SECONDS + 20)
    except subprocess.TimeoutExpired:
        # SIGTERM: the driver stops every process it started before it exits.
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=25)
        pytest.fail(f"the short soak ran over {SHORT_SOAK_SECONDS}s:\n{output[-4000:]}")
    print(output[-6000:])
    assert record_path.exists(), output[-4000:]
    record = json.loads(record_path.read_text())
    assert record["errors"] == [], record["errors"]
    assert record["kills"]["total"] >= 6
    assert set(record["kills"]["by_kind"]) == {"server", "worker", "agent"}
    # A create that fails (`release create` gives up on a transport error while the
    # server restarts) is reported, not an invariant; the soak needs releases to run.
    releases = record["releases"]
    assert releases["created"] + len(releases["create_errors"]) == 5
    assert releases["created"] >= 3, releases["create_errors"]
    assert record["runs"]["total"] > 0
    assert record["duration_seconds"] <= SHORT_SOAK_SECONDS
    broken = {
        name: result["violations"]
        for name, result in record["invariants"].items()
        if not result["held"]
    }
    assert broken == {}, json.dumps(broken, indent=2)
    assert record["held"] and driver.returncode == 0
