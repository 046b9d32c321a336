"""The pipeline definition: what a team writes in YAML.

Plain pydantic models (no Temporal, no I/O) so the workflow sandbox loads them
cheaply and the starter, the workflows and the agents share one vocabulary.
Every model rejects unknown fields, so a typo is an error naming its path.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from workflows.stage_dag import find_cycle

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> Any:
    """Turn `30m`, `2h`, `1d`, `1h30m`, `90` (seconds) into a timedelta."""
    if isinstance(value, timedelta):
        return _seconds(value.total_seconds(), value)
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like 30s, 5m, 2h, 1d")
    if isinstance(value, int | float):
        return _seconds(value, value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return _seconds(float(text), value)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return _seconds(sum(float(n) * _UNIT_SECONDS[u] for n, u in parts), value)
        # Durations that pydantic itself wrote (ISO 8601, e.g. "PT30S") on the way back.
        if text.startswith("P"):
            try:
                parsed = TypeAdapter(timedelta).validate_python(text)
            except ValidationError:
                pass
            else:
                return _seconds(parsed.total_seconds(), value)
    raise ValueError(f"{value!r} is not a duration: use text like 30s, 5m, 2h, 1d or 1h30m")


MAX_DURATION = timedelta(days=3650)
# An approver entry naming an identity-provider group: its members are whoever signs
# in through OIDC with the group in their token (starter/api/oidc.py prefixes `oidc:`).
IDP_GROUP = "group:oidc:"


def _seconds(seconds: float, given: Any) -> timedelta:
    if not 0 <= seconds <= MAX_DURATION.total_seconds():  # also rejects NaN
        raise ValueError(f"{given!r} is out of range: a duration is from 0 to 3650d")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration for display: `1h30m`, `45s`, `2d`."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return f"{value.total_seconds():.3g}s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)


_DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|s|m|h|d|w))+$|^\d+$"},
        {"type": "number"},
    ],
    "description": "a duration: 30s, 5m, 2h, 1d, 1h30m or a number of seconds",
}
Duration = Annotated[timedelta, BeforeValidator(parse_duration), WithJsonSchema(_DURATION_SCHEMA)]


def _scalar_to_text(value: Any) -> Any:
    """YAML reads `8001` as an int and `yes` as a bool; variables are text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


Text = Annotated[
    str,
    BeforeValidator(_scalar_to_text),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# What a new pipeline's names may be: NAME_PATTERN without `..` (they become parts of paths).
NEW_NAME_PATTERN = r"^[A-Za-z0-9](\.?[A-Za-z0-9_-])*\.?$"
VARIABLE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME = re.compile(NAME_PATTERN)

# Rules added after releases were recorded (names without `..`, no variable that a
# shell or loader reads) hold for a pipeline validated now (`Pipeline.validate_new`),
# not for one decoded from a workflow history: a running release still decodes after
# an upgrade.
_NEW_PIPELINE = "stageflow_new_pipeline"


def _is_new(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get(_NEW_PIPELINE))


def _check_name(value: str, info: ValidationInfo) -> str:
    if not _NAME.match(value) or (_is_new(info) and ".." in value):
        raise ValueError(
            f"{value!r} is not a valid name: letters, digits, '.', '_' and '-', starting"
            " with a letter or digit, without '..' (names become parts of paths)"
        )
    return value


# Pipeline, stage, job, pool and artifact names.
Name = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": NEW_NAME_PATTERN}),
]


def _first_repeat(items: Iterable[str]) -> str | None:
    """The first item seen twice (in linear time: a pipeline may have thousands of stages)."""
    seen: set[str] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def _some(names: list[str], most: int = 20) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", … ({len(names)} in all)" if len(names) > most else "")


class Model(BaseModel):
    """Base for every Stageflow model: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


class SecretRef(Model):
    """Where a secret's value lives on the agent: `env:NAME` or `file:PATH`.

    The value itself never enters a workflow input, result, signal or log.
    """

    secret: str

    @field_validator("secret")
    @classmethod
    def _known_source(cls, value: str) -> str:
        kind, _, where = value.partition(":")
        if kind not in ("env", "file") or not where:
            raise ValueError(f"{value!r}: a secret is `env:NAME` or `file:PATH`")
        return value

    @property
    def kind(self) -> str:
        return self.secret.partition(":")[0]

    @property
    def location(self) -> str:
        return self.secret.partition(":")[2]


VariableValue = Text | SecretRef
Variables = dict[str, VariableValue]

# Read at start by the task's shell, by the dynamic loader or by an interpreter: a value
# would run code, or change how every script runs, before the script's first line.
_SHELL_NAMES = frozenset(
    {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "CDPATH"}
    | {"GLOBIGNORE"}
)
_RESERVED_PREFIXES = (
    ("LD_", "is read by the dynamic loader of every program the task starts"),
    ("PYTHON", "is read by Python at start"),
    ("PERL5LIB", "is read by Perl at start"),
    ("PERL5OPT", "is read by Perl at start"),
    ("RUBYOPT", "is read by Ruby at start"),
    ("NODE_OPTIONS", "is read by Node.js at start"),
    ("STAGEFLOW_", "is one of the names the agent sets for every task"),
)


def reserved_variable(name: str) -> str | None:
    """Why `name` may not be a variable (pipeline, stage, task `env` or release-time), or None."""
    if name in _SHELL_NAMES:
        return f"{name} is read by the task's shell at start: not allowed as a variable"
    for prefix, why in _RESERVED_PREFIXES:
        if name.startswith(prefix):
            return f"{name} {why}: not allowed as a variable"
    return None


def _check_variable_name(name: str, info: ValidationInfo) -> str:
    if not VARIABLE_PATTERN.match(name):
        raise ValueError(
            f"{name!r} is not a valid variable name (letters, digits and _, "
            "not starting with a digit): tasks see variables as environment variables"
        )
    reason = reserved_variable(name) if _is_new(info) else None
    if reason:
        raise ValueError(reason)
    return name


VariableName = Annotated[str, AfterValidator(_check_variable_name)]


def _declared(value: Any) -> tuple[Any, bool] | None:
    """`{value: ..., settable: true}` as (value, settable); None for the other forms."""
    if not isinstance(value, dict) or "secret" in value:
        return None
    unknown = sorted(str(key) for key in value if key not in ("value", "settable"))
    if unknown:
        raise ValueError(
            f"unknown field {unknown[0]!r}: a variable is text, {{secret: ...}}"
            " or {value: ..., settable: true}"
        )
    settable = value.get("settable", False)
    if not isinstance(settable, bool):
        raise ValueError(f"`settable` is true or false (found {settable!r})")
    return value.get("value", ""), settable


def _pipeline_variable(value: Any) -> Any:
    declared = _declared(value)
    return value if declared is None else declared[0]


def _stage_variable(value: Any) -> Any:
    declared = _declared(value)
    if declared is None:
        return value
    if declared[1]:
        raise ValueError(
            "only pipeline variables are settable at release time"
            " (a release-time value applies to every stage)"
        )
    return declared[0]


_VARIABLE_FORMS = {
    "anyOf": [
        {"type": ["string", "number", "boolean"]},
        {
            "type": "object",
            "properties": {"secret": {"type": "string", "description": "env:NAME or file:PATH"}},
            "required": ["secret"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "value": {"type": ["string", "number", "boolean"]},
                "settable": {"type": "boolean", "description": "a release may set it (--var)"},
            },
            "additionalProperties": False,
        },
    ]
}
PipelineVariables = Annotated[
    dict[VariableName, Annotated[VariableValue, BeforeValidator(_pipeline_variable)]],
    WithJsonSchema({"type": "object", "additionalProperties": _VARIABLE_FORMS}),
]
StageVariables = Annotated[
    dict[VariableName, Annotated[VariableValue, BeforeValidator(_stage_variable)]],
    WithJsonSchema({"type": "object", "additionalProperties": _VARIABLE_FORMS}),
]


# --- artifacts -------------------------------------------------------------------


class LocalArtifact(Model):
    """A drop folder holding one sub-folder or archive per version."""

    alias: Name
    type: Literal["local"]
    path: str = Field(description="the drop folder, relative to the pipeline file")
    version: str = Field("latest", description="default version; `latest` is the newest")


class HttpArtifact(Model):
    """A file fetched over HTTP; `url` is a template with `{{ version }}`."""

    alias: Name
    type: Literal["http"]
    url: str
    version: str | None = Field(None, description="default version when none is given")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="expected checksum of the download"
    )
    extract: bool = Field(True, description="unpack .tar.gz/.tgz/.zip downloads")


class GitArtifact(Model):
    """A git repository at a ref; the release pins the commit."""

    alias: Name
    type: Literal["git"]
    repository: str
    ref: str = "HEAD"


Artifact = Annotated[LocalArtifact | HttpArtifact | GitArtifact, Field(discriminator="type")]


# --- tasks and jobs ----------------------------------------------------------------


class TemplateSpec(Model):
    """Render a Jinja2 file (sandboxed, strict) into the work directory."""

    source: str = Field(description="template path, relative to $STAGEFLOW_ARTIFACTS")
    target: str = Field(description="output path, relative to the working directory")


class CopySpec(Model):
    """Copy files or globs into a directory."""

    sources: list[str] = Field(
        min_length=1, description="paths or globs, relative to $STAGEFLOW_ARTIFACTS"
    )
    target: str = Field(description="directory, relative to the working directory")
    overwrite: bool = True


class HttpCall(Model):
    """One HTTP request; fails the task unless the status is the expected one."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    headers: dict[str, Text] = {}
    body: str | None = None
    expect_status: int | list[int] = 200
    timeout: Duration = timedelta(seconds=30)


class ManualIntervention(Model):
    """A pause in the job for a person: `stageflow resume` goes on, `reject` stops."""

    instructions: str
    timeout: Duration = timedelta(days=1)
    on_timeout: Literal["reject", "resume"] = "reject"
    approvers: list[str] = Field(
        [], description="who may resume or reject (users or group:NAME); empty: anyone"
    )


TASK_KINDS = ("script", "file", "template", "copy", "http", "manual_intervention")


class Task(Model):
    """One step of a job. Exactly one of script, file, template, copy or http."""

    name: str = Field(min_length=1)
    script: str | None = Field(None, description="inline script run by `shell`")
    file: str | None = Field(None, description="script file inside an artifact, e.g. app/deploy.sh")
    shell: Literal["bash", "sh", "python"] = "bash"
    args: list[Text] = []
    template: TemplateSpec | None = None
    copy_: CopySpec | None = Field(None, alias="copy")
    http: HttpCall | None = None
    manual_intervention: ManualIntervention | None = None
    condition: Literal["succeeded", "always", "failed"] = "succeeded"
    continue_on_error: bool = False
    timeout: Duration = Field(
        timedelta(hours=1), description="the task is killed when it runs longer"
    )
    retries: int = Field(0, ge=0, le=10, description="extra tries after a failure")
    env: dict[VariableName, Text] = {}
    working_dir: str | None = Field(None, description="relative to $STAGEFLOW_WORK_DIR")
    enabled: bool = True

    # `copy` is a BaseModel method, so the field is `copy_`, spelled `copy` everywhere else.
    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Task:
        given = [kind for kind in TASK_KINDS if self.spec_of(kind) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(
                f"task {self.name!r} needs exactly one of {', '.join(TASK_KINDS)} (found: {found})"
            )
        return self

    def spec_of(self, kind: str) -> Any:
        return self.copy_ if kind == "copy" else getattr(self, kind)

    @property
    def kind(self) -> str:
        return next(kind for kind in TASK_KINDS if self.spec_of(kind) is not None)

    @property
    def runs_on_agent(self) -> bool:
        """Server tasks (a manual intervention) run in the orchestrator, not on an agent."""
        return self.manual_intervention is None


class Job(Model):
    """Tasks that run in order on one agent leased from `pool`."""

    name: Name = "job"
    pool: Name | None = Field(None, description="needed unless every task is a manual intervention")
    tasks: list[Task] = Field(min_length=1)
    timeout: Duration = Field(timedelta(hours=6), description="the whole job, all tasks")

    @model_validator(mode="after")
    def _pool_when_needed(self) -> Job:
        if self.pool is None and self.needs_agent:
            raise ValueError(f"job {self.name!r} has tasks that run on an agent: it needs `pool`")
        return self

    @property
    def needs_agent(self) -> bool:
        return any(task.runs_on_agent for task in self.tasks)


class Approvals(Model):
    """People who decide before (pre) or after (post) a deployment."""

    approvers: list[str] = Field(min_length=1, description="users, or group:NAME")
    policy: Literal["any", "all", "sequence"] = Field(
        "any", description="any one; every listed entry; every entry in order"
    )
    timeout: Duration = Field(timedelta(days=30), description="expiry rejects the deployment")
    creator_can_approve: bool = False
    skip_if_approved_previous_stage: bool = False


class HttpCheck(Model):
    url: str
    method: Literal["GET", "POST", "HEAD"] = "GET"
    expect_status: int | list[int] = 200
    expect_json: JsonExpectation | None = None
    timeout: Duration = timedelta(seconds=10)


class JsonExpectation(Model):
    path: str = Field(description="dotted path into the JSON body, e.g. status or checks.0.state")
    equals: Any


class ScriptCheck(Model):
    pool: Name
    run: str = Field(description="a bash command line; exit code 0 means healthy")
    timeout: Duration = timedelta(minutes=5)


class GateCheck(Model):
    """One health check: exactly one of http or script."""

    name: str | None = Field(
        None, description="shown in evaluations; defaults to the URL or command"
    )
    http: HttpCheck | None = None
    script: ScriptCheck | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> GateCheck:
        if (self.http is None) == (self.script is None):
            raise ValueError("a gate check needs exactly one of http or script")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.http.url if self.http else self.script.run  # type: ignore[union-attr]


class Gates(Model):
    """Automated health checks, sampled until healthy long enough or timed out."""

    delay: Duration = Field(timedelta(0), description="before the first evaluation")
    interval: Duration = Field(timedelta(minutes=5), description="sampling interval")
    min_success_duration: Duration = Field(
        timedelta(0), description="all checks healthy continuously this long"
    )
    timeout: Duration = Field(timedelta(hours=2), description="expiry rejects the deployment")
    checks: list[GateCheck] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_labels(self) -> Gates:
        repeated = _first_repeat(check.label for check in self.checks)
        if repeated is not None:
            raise ValueError(f"two gate checks are both called {repeated!r}: give them names")
        if self.interval <= timedelta(0):
            raise ValueError("`interval` must be more than 0")
        return self


class Conditions(Model):
    """What must hold before (pre_deployment) or after (post_deployment) the jobs."""

    approvals: Approvals | None = None
    gates: Gates | None = None
    order: Literal["approvals_then_gates", "gates_then_approvals"] = "approvals_then_gates"


class Queue(Model):
    """How many deployments of a stage may be under way at once, and which goes next.

    A deployment holds one of the stage's slots from before its pre-deployment
    approval to the end of its post-deployment approval."""

    max_parallel: int = Field(ge=1, le=100, description="slots: deployments under way at once")
    policy: Literal["sequence", "latest_only"] = Field(
        "sequence",
        description="sequence: queued deployments go in release-number order; latest_only:"
        " when a slot frees only the newest waiting release goes on, the older ones are"
        " skipped (superseded)",
    )


class OnFailure(Model):
    """Guided failure: when a task fails, a person chooses to retry it, skip it or fail."""

    ask: list[str] = Field(
        [], description="who may choose (users or group:NAME); empty: the stage's deciders"
    )
    timeout: Duration = Field(timedelta(hours=1), description="then `default` applies")
    default: Literal["fail", "skip", "retry"] = "fail"


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Schedule(Model):
    """Deploy only at `time` on `days`, in `timezone`."""

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    time: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM")
    timezone: str = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return _check_timezone(value)


def _zone_name(value: str) -> str:
    return _check_timezone(value)


def _cron_fields(value: str) -> str:
    """Five fields; what each may hold is the calendar's to check (plan_start, the loader)."""
    if len(value.split()) != 5:
        raise ValueError(f"{value!r}: a cron expression has 5 fields (m h dom mon dow)")
    return value


class Freeze(Model):
    """No deployment starts from each `cron` match for `duration`."""

    cron: str = Field(description="5 fields: minute hour day-of-month month day-of-week")
    duration: Duration
    timezone: str = "UTC"

    _known_zone = field_validator("timezone")(_zone_name)
    _five_fields = field_validator("cron")(_cron_fields)


NotifyEvent = Literal[
    "waiting_for_approval",
    "waiting_for_intervention",
    "succeeded",
    "partially_succeeded",
    "failed",
    "rejected",
    "canceled",
]


class Notify(Model):
    """Who hears about which outcomes of a stage."""

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads the key `on` as the boolean true.
        if isinstance(data, dict) and True in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    on: list[NotifyEvent] = Field(min_length=1)
    to: list[str] = Field(min_length=1, description="users, or group:NAME")


class UserInfo(Model):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    name: str | None = None


def _check_timezone(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_+\-/]+", value):
        raise ValueError(f"{value!r} is not a time zone name (e.g. Europe/Berlin, UTC)")
    return value


class Retention(Model):
    """How long the record keeps a pipeline's releases, and when an idle release closes.

    As in Azure's classic release retention: a release with no activity for `days`
    is deleted from the record with its logs, except the releases of the last
    `keep_last` deployments of each stage and the release deployed on a stage now
    (activities/record/retention.py). A stage may set its own days and keep_last.
    """

    days: int = Field(
        365, ge=1, description="a release with no activity for this long leaves the record"
    )
    keep_last: int = Field(
        5, ge=0, description="the last N deployments of each stage keep their releases"
    )
    close_idle_after: Duration = Field(
        timedelta(days=30), description="a release with no activity for this long is closed"
    )

    @model_validator(mode="before")
    @classmethod
    def _idle_close_alone(cls, data: Any) -> Any:
        """`retention: 30d`, the form before the record had a policy, is the idle close
        with the default days and keep_last; so are the forms pydantic wrote of it in
        release snapshots (a timedelta, "P30D", a number of seconds)."""
        if isinstance(data, timedelta | str) or (
            isinstance(data, int | float) and not isinstance(data, bool)
        ):
            try:
                return {"close_idle_after": parse_duration(data)}
            except ValueError as err:
                raise ValueError(
                    f"{err}; or give the whole policy:"
                    " {days: 365, keep_last: 5, close_idle_after: 30d}"
                ) from None
        return data


class StageRetention(Model):
    """A stage's own retention: what it leaves out is the pipeline's."""

    days: int | None = Field(
        None, ge=1, description="a release with no activity for this long leaves the record"
    )
    keep_last: int | None = Field(
        None, ge=0, description="the last N deployments of this stage keep their releases"
    )


def _retention_forms(schema: dict[str, Any]) -> None:
    """In the JSON Schema, `retention` is the policy or (the older form) a duration."""
    ref = schema.pop("$ref", None)
    if ref is not None:
        schema["anyOf"] = [{"$ref": ref}, copy.deepcopy(_DURATION_SCHEMA)]


class AfterStages(Model):
    after_stages: list[str] = Field(min_length=1)
    when_partially_succeeded: bool = Field(
        False, description="also trigger when an upstream stage partially succeeded"
    )


Trigger = Literal["after_release", "manual"] | AfterStages


class Stage(Model):
    """A named step of the pipeline (an environment): dev, qa, prod."""

    name: Name
    trigger: Trigger = "after_release"
    variables: StageVariables = {}
    pool: Name | None = None
    tasks: list[Task] | None = None
    jobs: list[Job] | None = None
    agent_lost_retries: int = Field(
        2, ge=0, le=10, description="how often a job moves to another agent when its agent dies"
    )
    pre_deployment: Conditions | None = None
    post_deployment: Conditions | None = None
    schedule: Schedule | None = None
    freezes: list[Freeze] = []
    notify: Notify | None = None
    retention: StageRetention | None = Field(
        None, description="this stage's days and keep_last, instead of the pipeline's"
    )
    queue: Queue | None = Field(
        None, description="slots and queuing policy; none: any number at once"
    )
    on_failure: OnFailure | None = Field(
        None, description="guided failure: ask a person when a task fails"
    )

    @model_validator(mode="after")
    def _tasks_or_jobs(self) -> Stage:
        if self.jobs is not None and (self.tasks is not None or self.pool is not None):
            raise ValueError("a stage has either `jobs` or `pool` with `tasks`, not both")
        if self.jobs is None:
            if self.tasks is None:
                raise ValueError("a stage needs `pool` and `tasks`, or `jobs`")
            if not self.tasks:
                raise ValueError("`tasks` is empty")
            if self.pool is None and any(task.runs_on_agent for task in self.tasks):
                raise ValueError("a stage needs `pool` and `tasks`, or `jobs`")
        elif not self.jobs:
            raise ValueError("`jobs` is empty")
        jobs = self._tasks_by_job()
        if _first_repeat(name for name, _ in jobs) is not None:
            raise ValueError("job names must be unique within a stage")
        for job, tasks in jobs:
            repeated = _first_repeat(task.name for task in tasks)
            if repeated is not None:
                raise ValueError(f"task name {repeated!r} is used twice in job {job!r}")
        return self

    def all_jobs(self) -> list[Job]:
        """The stage's jobs; a stage with plain `pool` and `tasks` is one job."""
        if self.jobs is not None:
            return self.jobs
        assert self.tasks is not None
        return [Job(name="job", pool=self.pool, tasks=self.tasks)]

    def _tasks_by_job(self) -> list[tuple[str, list[Task]]]:
        """(job name, tasks) like `all_jobs`, without building a Job: the checks of a
        pipeline with thousands of stages call this for each of them."""
        if self.jobs is not None:
            return [(job.name, job.tasks) for job in self.jobs]
        return [("job", self.tasks or [])]

    def people_lists(self) -> list[list[str]]:
        """Every list of approvers or recipients in this stage, for checks."""
        lists = self.approver_lists()
        if self.notify:
            lists.append(self.notify.to)
        return lists

    def approver_lists(self) -> list[list[str]]:
        """The approver entries of this stage: its approvals', then its interventions'."""
        lists = []
        for conditions in (self.pre_deployment, self.post_deployment):
            if conditions and conditions.approvals:
                lists.append(conditions.approvals.approvers)
        for _, tasks in self._tasks_by_job():
            for task in tasks:
                if task.manual_intervention:
                    lists.append(task.manual_intervention.approvers)
        if self.on_failure:
            lists.append(self.on_failure.ask)
        return lists

    @property
    def upstream(self) -> list[str]:
        return self.trigger.after_stages if isinstance(self.trigger, AfterStages) else []

    @property
    def trigger_text(self) -> str:
        if isinstance(self.trigger, AfterStages):
            return "after " + ", ".join(self.trigger.after_stages)
        return self.trigger.replace("_", " ")


# --- triggers -------------------------------------------------------------------------

# A poll more often than this would be a busy loop on the drop folder or the remote.
MIN_POLL = timedelta(seconds=1)


class Branches(Model):
    """Which branches of a git artifact a trigger watches: globs, `*` crossing `/`."""

    include: list[str] = Field([], description="branches to watch; empty: every branch")
    exclude: list[str] = Field([], description="branches never watched, even if included")


class ArtifactTrigger(Model):
    """Continuous deployment: a new version of `artifact` makes a release."""

    artifact: Name
    name: Name | None = Field(None, description="default: artifact-<alias>")
    branches: Branches | None = Field(None, description="git artifacts: the branches watched")
    poll: Duration = Field(timedelta(minutes=1), description="how often to look")

    @field_validator("poll")
    @classmethod
    def _not_too_often(cls, value: timedelta) -> timedelta:
        if value < MIN_POLL:
            raise ValueError(f"poll every {value.total_seconds():g}s: at least every 1s")
        return value


class CronSchedule(Model):
    """When a scheduled trigger fires: 5 cron fields in a time zone."""

    cron: str = Field(description="5 fields: minute hour day-of-month month day-of-week")
    timezone: str = "UTC"
    only_if_changed: bool = Field(
        False, description="make a release only when an artifact or the pipeline changed"
    )

    _known_zone = field_validator("timezone")(_zone_name)
    _five_fields = field_validator("cron")(_cron_fields)


class ScheduleTrigger(Model):
    """A release at scheduled times (with the artifacts' default versions)."""

    schedule: CronSchedule
    name: Name | None = Field(None, description="default: schedule-<n>, n counting from 1")


def _trigger_kind(value: Any) -> str | None:
    """`schedule:` makes a scheduled trigger, anything else an artifact one. The tags are
    not keys of either, so an error's path is the document's (`triggers[0].poll`)."""
    if isinstance(value, dict):
        return "on-schedule" if "schedule" in value else "on-artifact"
    return "on-schedule" if isinstance(value, ScheduleTrigger) else "on-artifact"


ReleaseTrigger = Annotated[
    Annotated[ArtifactTrigger, Tag("on-artifact")] | Annotated[ScheduleTrigger, Tag("on-schedule")],
    Discriminator(_trigger_kind),
]


# The patterns a pipeline gets when it names none: `#123` (GitHub, GitLab; also in
# "Fixes #12") and `ABC-123` (Jira, YouTrack).
DEFAULT_WORK_ITEM_PATTERNS = [r"(?<![\w&/])#\d+\b", r"\b[A-Z][A-Z0-9]+-\d+\b"]


class WorkItems(Model):
    """`work_items:` the patterns that find work items in the commits a release brings.

    Each is a regular expression; the item is its group when it has one, else the
    whole match."""

    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_WORK_ITEM_PATTERNS))

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                compiled = re.compile(pattern)
            except re.error as err:
                raise ValueError(f"{pattern!r} is not a regular expression: {err}") from None
            if compiled.groups > 1:
                raise ValueError(f"{pattern!r} has {compiled.groups} groups: at most one")
        return patterns


class Pipeline(Model):
    """A pipeline: artifacts, variables and stages with their triggers and jobs."""

    name: Name
    description: str = ""
    release_name_format: str = "Release-{{ number }}"
    variables: PipelineVariables = {}
    settable_variables: SkipJsonSchema[list[str]] = Field(
        [], description="variables a release may set; from `NAME: {value: ..., settable: true}`"
    )
    groups: dict[str, list[str]] = Field(
        {},
        description="approver groups: name -> users (and identity-provider groups, "
        "group:oidc:NAME)",
    )
    users: dict[str, UserInfo] = Field({}, description="people's email addresses")
    artifacts: list[Artifact] = []
    stages: list[Stage] = Field(min_length=1)
    triggers: list[ReleaseTrigger] = Field(
        [], description="what makes releases on its own: new artifact versions, schedules"
    )
    work_items: WorkItems = Field(
        default_factory=WorkItems,
        description="how commit messages name work items (default: #123 and ABC-123)",
    )
    retention: Retention = Field(
        default_factory=Retention,
        description="how long the record keeps releases (days, keep_last) and when an idle"
        " release closes (close_idle_after); a duration alone is close_idle_after",
        json_schema_extra=_retention_forms,
    )

    @property
    def close_idle_after(self) -> timedelta:
        """A release with no activity for this long is closed (the workflow's idle timer)."""
        return self.retention.close_idle_after

    @classmethod
    def validate_new(cls, data: Any) -> Pipeline:
        """Validate a pipeline being written or released now: every rule, also those that
        releases recorded before them need not meet (see `_NEW_PIPELINE`)."""
        return cls.model_validate(data, context={_NEW_PIPELINE: True})

    @model_validator(mode="before")
    @classmethod
    def _settable_from_variables(cls, data: Any) -> Any:
        """`NAME: {value: ..., settable: true}` lists NAME in `settable_variables`."""
        if isinstance(data, dict) and isinstance(data.get("variables"), dict):
            declared = []
            for name, value in data["variables"].items():
                with contextlib.suppress(ValueError):  # reported at the variable itself
                    form = _declared(value)
                    if form is not None and form[1]:
                        declared.append(name)
            if declared:
                known = data.get("settable_variables") or []
                known = list(known) if isinstance(known, list) else known
                data = {**data, "settable_variables": [*known, *declared]}
        return data

    @field_validator("settable_variables")
    @classmethod
    def _settable_are_variables(cls, value: list[str], info: ValidationInfo) -> list[str]:
        variables = info.data.get("variables")
        unknown = [name for name in value if variables is not None and name not in variables]
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not a pipeline variable")
        return list(dict.fromkeys(value))

    def _check_triggers(self) -> None:
        """Each trigger watches a known artifact (branches: a git one) and has a name."""
        kinds = {artifact.alias: artifact.type for artifact in self.artifacts}
        schedules = 0
        for trigger in self.triggers:
            if isinstance(trigger, ScheduleTrigger):
                schedules += 1
                trigger.name = trigger.name or f"schedule-{schedules}"
                continue
            if trigger.artifact not in kinds:
                raise ValueError(
                    f"trigger on unknown artifact {trigger.artifact!r}"
                    f" (artifacts: {_some(list(kinds)) or 'none'})"
                )
            if kinds[trigger.artifact] == "http":
                raise ValueError(
                    f"trigger on {trigger.artifact!r}: an http artifact cannot be polled (its"
                    " versions are not listed): let its build call the artifact webhook"
                )
            if trigger.branches is not None and kinds[trigger.artifact] != "git":
                raise ValueError(
                    f"trigger on {trigger.artifact!r}: branches are for git artifacts, and"
                    f" it is a {kinds[trigger.artifact]} one"
                )
            trigger.name = trigger.name or f"artifact-{trigger.artifact}"
        repeated = _first_repeat(str(trigger.name) for trigger in self.triggers)
        if repeated is not None:
            raise ValueError(f"trigger name {repeated!r} is used twice")

    def trigger(self, name: str) -> ArtifactTrigger | ScheduleTrigger:
        for trigger in self.triggers:
            if trigger.name == name:
                return trigger
        known = ", ".join(str(t.name) for t in self.triggers) or "none"
        raise KeyError(f"pipeline {self.name} has no trigger {name!r} (triggers: {known})")

    def release_time_problem(self, name: str) -> str | None:
        """Why a release may not set variable `name` (`--var NAME=...`), or None if it may."""
        reason = reserved_variable(name)
        if reason:
            return reason
        if name in self.settable_variables:
            return None
        settable = ", ".join(self.settable_variables) or "none"
        if name not in self.variables:
            return f"{name!r} is not a variable of pipeline {self.name} (settable: {settable})"
        return (
            f"{name!r} is not settable at release time: declare it"
            f" `{name}: {{value: ..., settable: true}}` (settable: {settable})"
        )

    @model_validator(mode="after")
    def _consistent(self) -> Pipeline:
        repeated = _first_repeat(artifact.alias for artifact in self.artifacts)
        if repeated is not None:
            raise ValueError(f"artifact alias {repeated!r} is used twice")
        self._check_triggers()
        names = [stage.name for stage in self.stages]
        repeated = _first_repeat(names)
        if repeated is not None:
            raise ValueError(f"stage name {repeated!r} is used twice")
        known = set(names)
        for stage in self.stages:
            for upstream in stage.upstream:
                if upstream not in known:
                    raise ValueError(
                        f"stage {stage.name!r} triggers after unknown stage {upstream!r}"
                        f" (stages: {_some(names)})"
                    )
                if upstream == stage.name:
                    raise ValueError(f"stage {stage.name!r} triggers after itself")
        cycle = find_cycle({stage.name: stage.upstream for stage in self.stages})
        if cycle:
            raise ValueError("stage triggers form a cycle: " + " -> ".join(cycle))
        for group, members in self.groups.items():
            for member in members:
                if member.startswith("group:") and not member.startswith(IDP_GROUP):
                    raise ValueError(
                        f"group {group!r} holds {member!r}: a group holds users and "
                        f"identity-provider groups ({IDP_GROUP}NAME), not other groups"
                    )
        for stage in self.stages:
            for entry in stage.notify.to if stage.notify else []:
                if entry.startswith(IDP_GROUP):
                    raise ValueError(
                        f"stage {stage.name!r} notifies {entry!r}: an identity-provider group "
                        "has no mail addresses here (name users, or a group of users)"
                    )
            for people in stage.people_lists():
                for entry in people:
                    if entry.startswith(IDP_GROUP):
                        continue  # the identity provider says who is in it
                    if entry.startswith("group:") and entry[6:] not in self.groups:
                        raise ValueError(
                            f"stage {stage.name!r} names unknown group {entry[6:]!r}"
                            + (f" (groups: {', '.join(self.groups)})" if self.groups else "")
                        )
        return self

    def people(self, entries: list[str]) -> list[str]:
        """The users a list of entries stands for, groups expanded, in order, no repeats."""
        users: list[str] = []
        for entry in entries:
            users += [user for user in self.members(entry) if user not in users]
        return users

    def members(self, entry: str) -> list[str]:
        """The users an approver entry stands for by name: itself, or a group's members.
        Who is in an identity-provider group only their sign-in says (stands_for)."""
        if entry.startswith(IDP_GROUP):
            return []
        if entry.startswith("group:"):
            return [m for m in self.groups.get(entry[6:], []) if not m.startswith(IDP_GROUP)]
        return [entry]

    def idp_groups(self, entries: list[str]) -> list[str]:
        """The identity-provider groups (`group:oidc:NAME`) a list of entries names,
        directly or through the pipeline's groups, in order, no repeats."""
        found: list[str] = []
        for entry in entries:
            inside = self.groups.get(entry[6:], []) if entry.startswith("group:") else []
            for named in [entry] if entry.startswith(IDP_GROUP) else inside:
                if named.startswith(IDP_GROUP) and named not in found:
                    found.append(named)
        return found

    def stands_for(self, entry: str, user: str, groups: Sequence[str] = ()) -> bool:
        """Whether approver entry `entry` names this person: the user, a group of the
        pipeline they are in, or an identity-provider group their sign-in carries
        (`groups` as the API has them: `oidc:NAME`)."""
        if entry.startswith(IDP_GROUP):
            return entry[len("group:") :] in groups
        if entry.startswith("group:"):
            return any(self.stands_for(m, user, groups) for m in self.groups.get(entry[6:], []))
        return entry == user

    def names_anyone(self, entries: list[str]) -> bool:
        """Whether the entries stand for somebody: a user, or an identity-provider group."""
        return bool(self.people(entries) or self.idp_groups(entries))

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def stage_names(self) -> list[str]:
        return [stage.name for stage in self.stages]
