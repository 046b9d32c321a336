"""What Stageflow promises under faults, checked on what a soak saw. Pure: no I/O.

Each check takes the ledger's runs, the releases as they ended (`release show`),
the driver's own records (creates, decisions, kills) and returns an `Invariant`
with the evidence of every violation. README: a step runs "once, or again as a
visible try; never concurrently".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.soak_ledger import Run, overlaps
from workflows.audit import AuditEvent
from workflows.release import ReleaseStatus, StageAttempt, StageStatus, TaskRun

# What follows a task's key stem in its log keys: `.job2` (the job moved to another
# agent), `.try2` (the task's retry); the same rule `stageflow logs` reads them by.
TRY_SUFFIX = re.compile(r"(?:\.job(\d+))?(?:\.try(\d+))?\.log$")


@dataclass
class Invariant:
    name: str
    promise: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # allowed, but worth knowing

    @property
    def held(self) -> bool:
        return not self.violations

    def as_json(self) -> dict[str, object]:
        return {
            "promise": self.promise,
            "held": self.held,
            "checked": self.checked,
            "violations": self.violations,
            "notes": self.notes,
        }


@dataclass
class CreateRecord:
    """One `release create` the driver sent: its request tag, and the answer."""

    tag: str  # in the release's description, so the release says which request made it
    sent_at: float
    number: int | None = None
    error: str | None = None


@dataclass
class Verdict:
    """One decision the driver sent on a stage, and the verdict it got back."""

    release: int
    stage: str
    phase: str
    user: str
    action: str  # approve or reject
    at: float
    outcome: str  # accepted, refused, or no answer
    request_id: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class Kill:
    kind: str  # server, worker, agent
    name: str
    pid: int
    at: float
    down_seconds: float
    restart_seconds: float | None = None


def end_states(
    numbers: list[int],
    statuses: dict[int, ReleaseStatus],
    upstream: Callable[[str], list[str]],
    deadline_note: str,
) -> Invariant:
    """Every release ends: each stage succeeded, failed, rejected or canceled, or was
    never triggered because a stage it waits for did not succeed."""
    check = Invariant(
        "every_release_ends",
        "every release reaches an end state (no stage left in progress) " + deadline_note,
    )
    for number in numbers:
        check.checked += 1
        status = statuses.get(number)
        if status is None:
            check.violations.append(f"release {number}: could not be read at the end")
            continue
        by_name = {view.name: view for view in status.stages}
        for view in status.stages:
            if view.status.is_final:
                continue
            after = upstream(view.name)
            triggered = all(
                by_name[name].status == StageStatus.SUCCEEDED for name in after if name in by_name
            )
            if view.status == StageStatus.NOT_DEPLOYED and not (after and triggered):
                continue
            latest = view.latest
            check.violations.append(
                f"release {number} stage {view.name}: {view.status.value}"
                + (
                    f" although {', '.join(after)} succeeded (its trigger was lost)"
                    if view.status == StageStatus.NOT_DEPLOYED
                    else ""
                )
                + (f" (attempt {latest.attempt}: {latest.message})" if latest else "")
            )
    return check


def never_concurrent(runs: list[Run]) -> Invariant:
    """No task key (release, stage, task) ran twice at the same time."""
    check = Invariant(
        "no_task_key_ran_twice_at_once",
        "no two runs of one (release, stage, task) overlap in time (from the ledger)",
        checked=len(runs),
    )
    for first, second in overlaps(runs):
        release, stage, task = first.key
        check.violations.append(
            f"release {release} {stage}/{task}: {second.describe()} began "
            f"{first.ended_at_least - second.start:.2f}s before the end of {first.describe()}"
        )
    return check


def visible_tries(
    runs: list[Run],
    statuses: dict[int, ReleaseStatus],
    log_text: Callable[[str], str | None],
    printed_logs: dict[int, str],
    agent_kills: list[Kill],
) -> Invariant:
    """Every run is a try the release shows, with its log; no try ran twice.

    A run is matched to the agent session (job try) the release shows for its agent
    and job that began last before it, then to the log key of that job try and the
    run's task try. Its log must hold the run's id — unless its agent was killed
    during the run (the output may not have reached the log) — and `stageflow logs`
    must print it.
    """
    check = Invariant(
        "every_run_is_a_visible_try",
        "each run in the ledger is a try that `release show` lists, with its log, "
        "which `stageflow logs` prints; no try ran twice",
        checked=len(runs),
    )
    claimed: dict[tuple[int, str, str, int, int, int], list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.start):
        where = f"release {run.release} {run.stage}/{run.task}: {run.describe()}"
        found = _task_run(statuses.get(run.release), run)
        if isinstance(found, str):
            check.violations.append(f"{where}: {found}")
            continue
        attempt, task_run = found
        sessions = [
            s
            for s in attempt.agents
            if s.agent == run.agent
            and s.job == task_run.job
            and s.leased_at.timestamp() <= run.start
        ]
        if not sessions:
            shown = ", ".join(f"{s.agent} job try {s.try_number}" for s in attempt.agents)
            check.violations.append(
                f"{where}: the release shows no session of {run.agent} before it "
                f"(sessions: {shown or 'none'})"
            )
            continue
        session = max(sessions, key=lambda s: s.leased_at)
        late = ""
        if session.ended_at is not None and run.start > session.ended_at.timestamp():
            late = (
                f"started {run.start - session.ended_at.timestamp():.3f}s after the release "
                f"ended its session (job try {session.try_number}"
                + (", lost)" if session.lost else ")")
            )
        key = _log_key(task_run, session.try_number, run.task_try)
        if key is None:
            check.violations.append(
                f"{where}: job try {session.try_number} try {run.task_try} is not among the "
                f"tries shown (logs: {task_run.logs or 'none'})"
            )
            continue
        claimed.setdefault(
            (run.release, run.stage, run.task, run.attempt, session.try_number, run.task_try), []
        ).append(run)
        text = log_text(key)
        if text is None:
            check.violations.append(f"{where}: its try's log {key} is not in the log store")
            continue
        mark = f"soak-run {run.run_id}"
        if mark in text:
            if mark not in printed_logs.get(run.release, ""):
                check.violations.append(f"{where}: `stageflow logs` does not print {key}")
            elif late:
                check.notes.append(f"{where}: {late}; that try's log {key} shows it")
        elif late:
            check.violations.append(f"{where}: {late}, and its log {key} does not show it")
        elif run.end is not None and not _agent_killed_during(run, agent_kills):
            check.violations.append(
                f"{where}: ran to its end but its try's log {key} does not show it"
            )
    for (release, stage, task, attempt_no, job_try, task_try), twice in claimed.items():
        if len(twice) > 1:
            check.violations.append(
                f"release {release} {stage}/{task} attempt {attempt_no} job try {job_try} "
                f"try {task_try} ran {len(twice)} times as one try: "
                + "; ".join(run.describe() for run in twice)
            )
    return check


def _task_run(status: ReleaseStatus | None, run: Run) -> tuple[StageAttempt, TaskRun] | str:
    if status is None:
        return "its release could not be read"
    try:
        view = status.stage(run.stage)
    except KeyError:
        return "the release has no such stage"
    attempt = next((a for a in view.attempts if a.attempt == run.attempt), None)
    if attempt is None:
        return f"the release shows no attempt {run.attempt} of the stage"
    task_run = next((t for t in attempt.tasks if t.task == run.task), None)
    if task_run is None:
        return "the attempt shows no such task"
    return attempt, task_run


def _log_key(task_run: TaskRun, job_try: int, task_try: int) -> str | None:
    for key in task_run.logs:
        match = TRY_SUFFIX.search(key)
        if match and tuple(int(n) if n else 1 for n in match.groups()) == (job_try, task_try):
            return key
    return None


def _agent_killed_during(run: Run, kills: list[Kill]) -> bool:
    until = run.end if run.end is not None else float("inf")
    return any(k.name == run.agent and run.start <= k.at <= until for k in kills)


def approvals_kept(
    verdicts: list[Verdict],
    statuses: dict[int, ReleaseStatus],
    histories: dict[int, list[AuditEvent]],
) -> Invariant:
    """Every decision answered "accepted" is in the release's history, and the stage
    went past it: an approval approved and the stage on to its end, a rejection
    rejecting the stage."""
    accepted = [v for v in verdicts if v.outcome == "accepted"]
    check = Invariant(
        "no_approval_lost",
        "every decision the driver got an 'accepted' verdict for is in the release's "
        "history, and the stage went past it",
        checked=len(accepted),
    )
    for verdict in accepted:
        where = (
            f"release {verdict.release} {verdict.stage}: {verdict.action} ({verdict.phase}) "
            f"by {verdict.user} accepted at {verdict.at:.3f} (request {verdict.request_id})"
        )
        history = histories.get(verdict.release)
        if history is None:
            check.violations.append(f"{where}: the release's history could not be read")
            continue
        if not any(e.request_id == verdict.request_id and e.outcome == "accepted" for e in history):
            check.violations.append(f"{where}: not in the release's history")
        status = statuses.get(verdict.release)
        view = next((v for v in status.stages if v.name == verdict.stage), None) if status else None
        attempt = view.attempts[0] if view and view.attempts else None
        approval = attempt.approval(verdict.phase) if attempt else None
        if attempt is None or approval is None or view is None:
            check.violations.append(f"{where}: the stage shows no such approval at the end")
            continue
        if verdict.action == "reject":
            if approval.status != "rejected" or view.status != StageStatus.REJECTED:
                check.violations.append(
                    f"{where}: approval {approval.status}, stage {view.status.value}"
                )
        elif approval.status != "approved" and not (
            approval.status == "rejected" and view.status == StageStatus.REJECTED
        ):
            check.violations.append(f"{where}: the approval is {approval.status} at the end")
        elif view.status in (StageStatus.WAITING_FOR_APPROVAL,) or not view.status.is_final:
            check.violations.append(f"{where}: the stage is still {view.status.value}")
    return check


def numbers_unique(
    creates: list[CreateRecord],
    descriptions: dict[int, str],
    last_number: int | None,
) -> Invariant:
    """Each release number maps to one create request, and each request to one number."""
    check = Invariant(
        "no_release_number_reused",
        "each release number belongs to one create request (its tag in the description), "
        "each answered request got a number of its own",
        checked=len(creates),
    )
    answered: dict[int, list[str]] = {}
    for create in creates:
        if create.number is not None:
            answered.setdefault(create.number, []).append(create.tag)
    for number, tags in sorted(answered.items()):
        if len(tags) > 1:
            check.violations.append(
                f"release {number} was the answer to {len(tags)} requests: {tags}"
            )
        shown = descriptions.get(number)
        if shown is None:
            check.violations.append(f"release {number} (answer to {tags[0]}) does not exist")
        elif tags[0] not in shown:
            check.violations.append(
                f"release {number} was the answer to {tags[0]} but says {shown!r}"
            )
    made: dict[str, list[int]] = {}
    for number, text in descriptions.items():
        for create in creates:
            if create.tag in text:
                made.setdefault(create.tag, []).append(number)
    for tag, numbers in sorted(made.items()):
        if len(numbers) > 1:
            check.violations.append(
                f"request {tag} made {len(numbers)} releases: {sorted(numbers)}"
            )
    if last_number is not None and last_number != len(descriptions):
        check.violations.append(
            f"the pipeline handed out {last_number} numbers; {len(descriptions)} releases exist"
        )
    return check
