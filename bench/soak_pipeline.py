"""The soak's pipeline: stages with approvals whose tasks write down every run.

Every task is the same small bash script. It prints a run id into its own log,
appends `start …` to one shared ledger file under `flock`, sleeps (the deploy
step, which prints nothing), appends `end …` and prints once more. A ledger
line is

    start|end RELEASE STAGE TASK TRY-KEY PID UNIX-TIME AGENT RUN-ID

where TRY-KEY is `<attempt>.<task try>` as the task sees it
(`$STAGEFLOW_ATTEMPT.$STAGEFLOW_TRY`; the job try is not in its environment,
the soak finds it from the agent sessions the release shows) and RUN-ID is
`<pid>@<start time>`, unique per run. Most runs are short (0.2-2 s); two in ten
last longer than the agent lease's heartbeat timeout (6-9 s), and one in ten
longer than it takes a job to move to another agent (20-30 s), so a task left
running by a dead agent is still running when its job starts again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Stages in trigger order: (name, after stages, approvals before, approvals after, tasks).
APPROVERS = {
    "qa": (["alice"], "any", []),
    "prod": (["alice", "bob"], "all", ["carol"]),
}
STAGES: list[tuple[str, list[str], list[str]]] = [
    ("build", [], ["compile", "package"]),
    ("test", ["build"], ["unit", "integration"]),
    ("qa", ["build"], ["smoke"]),
    ("prod", ["test", "qa"], ["migrate", "deploy"]),
]
# Who the driver acts as when it approves or rejects, and who creates releases
# (the creator may not approve, so it is nobody above).
CREATOR = "soak"
REJECTER = "bob"  # rejects prod's pre-deployment approval of the releases chosen for it

TASK_SCRIPT = r"""
run="$$@$(date +%s.%N)"
record() {
  line="$1 $STAGEFLOW_RELEASE_NUMBER $STAGEFLOW_STAGE $STAGEFLOW_TASK $STAGEFLOW_ATTEMPT.$STAGEFLOW_TRY $$ $(date +%s.%N) $STAGEFLOW_AGENT $run"
  { flock 9; printf '%s\n' "$line" >> "$SOAK_LEDGER"; } 9>>"$SOAK_LEDGER.lock"
}
echo "soak-run $run on $STAGEFLOW_AGENT"
record start
dice=$((RANDOM % 10))
if [ "$dice" -eq 0 ]; then
  pause="$((SOAK_VERY_LONG_MS + RANDOM % (SOAK_VERY_LONG_MS / 2 + 1)))"
elif [ "$dice" -le 2 ]; then
  pause="$((SOAK_LONG_MS + RANDOM % (SOAK_LONG_MS / 2 + 1)))"
else
  pause="$((200 + RANDOM % SOAK_SHORT_MS))"
fi
sleep "$((pause / 1000)).$(printf '%03d' $((pause % 1000)))"
record end
echo "soak-done $run after ${pause} ms"
"""


@dataclass(frozen=True)
class SoakPipeline:
    """Where the soak's pipeline file and ledger are, and the stage graph it has."""

    name: str
    path: Path
    ledger: Path

    @property
    def stage_names(self) -> list[str]:
        return [name for name, _, _ in STAGES]

    @staticmethod
    def upstream(stage: str) -> list[str]:
        return next(after for name, after, _ in STAGES if name == stage)


def write_pipeline(
    directory: Path,
    name: str,
    pool: str,
    ledger: Path,
    *,
    agent_lost_retries: int = 6,
    short_ms: int = 1800,
    long_ms: int = 6000,
    very_long_ms: int = 20000,
) -> SoakPipeline:
    """Write the soak pipeline to `<directory>/<name>.yml` and return where things are."""
    script = "\n".join("          " + line for line in TASK_SCRIPT.strip().splitlines())
    lines = [
        f"name: {name}",
        "description: soak pipeline (bench/soak.py)",
        'release_name_format: "Soak-{{ number }}"',
        "variables:",
        f"  SOAK_LEDGER: {ledger}",
        f'  SOAK_SHORT_MS: "{short_ms}"',
        f'  SOAK_LONG_MS: "{long_ms}"',
        f'  SOAK_VERY_LONG_MS: "{very_long_ms}"',
        "stages:",
    ]
    for stage, after, tasks in STAGES:
        lines.append(f"  - name: {stage}")
        lines.append(
            f"    trigger: {{after_stages: [{', '.join(after)}]}}"
            if after
            else "    trigger: after_release"
        )
        lines.append(f"    pool: {pool}")
        lines.append(f"    agent_lost_retries: {agent_lost_retries}")
        if stage in APPROVERS:
            pre, policy, post = APPROVERS[stage]
            lines.append("    pre_deployment:")
            lines.append(
                f"      approvals: {{approvers: [{', '.join(pre)}], policy: {policy}, timeout: 1d}}"
            )
            if post:
                lines.append("    post_deployment:")
                lines.append(f"      approvals: {{approvers: [{', '.join(post)}], timeout: 1d}}")
        lines.append("    tasks:")
        for task in tasks:
            lines.append(f"      - name: {task}")
            lines.append("        timeout: 2m")
            lines.append("        script: |")
            lines.append(script)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yml"
    path.write_text("\n".join(lines) + "\n")
    return SoakPipeline(name=name, path=path, ledger=ledger)
