"""The `stageflow` command line: parse, call one function, render.

User commands (release, deploy, approve, logs, history, status, login, token, access
…) are an HTTP client of the API (starter/client.py), as the person whose token
the credentials hold (`stageflow login`, or STAGEFLOW_URL / STAGEFLOW_TOKEN): they
never load the Temporal SDK. Process commands (up, server, worker, agent, serve,
codec-server, db, retention, user add) run Stageflow itself, on Temporal and the
record, and import what they need when they run.

Exit codes: 0 fine, 1 a deployment failed (or was rejected or canceled), 2 bad
input (invalid pipeline, unknown release or stage, refused request), not signed
in, or no server.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

from starter.exit_codes import Exit, Unavailable

if TYPE_CHECKING:
    import asyncio

    from temporalio.client import Client

    from starter.client import Api
    from worker.settings import Settings


class UserError(ValueError):
    """A mistake in what the user asked: one line, exit code 2."""


class ServerUnavailable(Unavailable):
    pass


# --- argument parsing ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    top = _common_options(defaults=True)
    # Options may come before or after the command; below it they must not reset
    # what was given above it (argparse applies a subparser's defaults last).
    common = _common_options(defaults=False)
    output = _output_option(defaults=False)

    parser = argparse.ArgumentParser(
        prog="stageflow",
        description="Stageflow: releases through stages, on Temporal. "
        "User commands go through the HTTP API as the person signed in "
        "(`stageflow login`, or STAGEFLOW_URL and STAGEFLOW_TOKEN).",
        parents=[top],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        """A user command: an HTTP client of the API."""
        return sub.add_parser(name, help=help, description=help, parents=[output])

    def process(name: str, help: str) -> argparse.ArgumentParser:
        """A process command: runs Stageflow here, on Temporal and the record."""
        return sub.add_parser(name, help=help, description=help, parents=[common])

    pipeline = process(
        "pipeline", "store pipelines as revisions and read them; validate a file, print the schema"
    )
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    validate = pipeline_sub.add_parser("validate", help="check a pipeline file", parents=[common])
    validate.add_argument("file")
    pipeline_sub.add_parser("schema", help="print the pipeline JSON Schema", parents=[common])
    apply = pipeline_sub.add_parser(
        "apply",
        help="store a pipeline file as its next revision, when it changed (an admin's)",
        parents=[output],
    )
    apply.add_argument("file", help="the pipeline YAML (the API reads it: same machine)")
    pipeline_sub.add_parser(
        "list", help="the pipelines and their latest revisions", parents=[output]
    )
    pipeline_show = pipeline_sub.add_parser(
        "show", help="a stored revision's text (default: the latest)", parents=[output]
    )
    pipeline_show.add_argument("pipeline")
    pipeline_show.add_argument("--revision", type=int, metavar="R")
    pipeline_history = pipeline_sub.add_parser(
        "history", help="who applied which revision, when", parents=[output]
    )
    pipeline_history.add_argument("pipeline")
    pipeline_diff = pipeline_sub.add_parser(
        "diff", help="unified diff from revision R1 to R2 (default: the latest)", parents=[output]
    )
    pipeline_diff.add_argument("pipeline")
    pipeline_diff.add_argument("from_revision", type=int, metavar="R1")
    pipeline_diff.add_argument("to_revision", type=int, metavar="R2", nargs="?")

    release = command("release", "create, list and show releases")
    release_sub = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    create = release_sub.add_parser(
        "create",
        help="create a release of a stored pipeline, or of a file (the API reads it: same machine)",
        parents=[output],
    )
    create.add_argument(
        "pipeline",
        metavar="PIPELINE|FILE",
        help="a stored pipeline (its latest revision), or a pipeline YAML (stored first)",
    )
    create.add_argument("--artifact", action="append", default=[], metavar="ALIAS=VERSION")
    create.add_argument("--var", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--until", metavar="STAGE", help="deploy no further than this stage")
    create.add_argument("--description", default="")
    create.add_argument("--wait", action="store_true", help="show progress until the stages settle")
    listing = release_sub.add_parser("list", help="releases, newest first", parents=[output])
    listing.add_argument("--pipeline")
    listing.add_argument("--status", help="the release's: waiting, in_progress, succeeded, ...")
    listing.add_argument(
        "--stage-status", metavar="STATUS", help="releases with a stage in this status"
    )
    listing.add_argument("--created-by", metavar="USER")
    listing.add_argument("--limit", type=int, default=20, help="releases per page")
    listing.add_argument("--page", type=int, default=1)
    show = release_sub.add_parser("show", help="one release and its stages", parents=[output])
    show.add_argument("release", metavar="PIPELINE/NUMBER")
    release_diff = release_sub.add_parser(
        "diff",
        help="artifact versions, variables, commits and work items between two releases",
        parents=[output],
    )
    release_diff.add_argument("before", metavar="PIPELINE/N")
    release_diff.add_argument("after", metavar="PIPELINE/M")
    triggers = command("triggers", "a pipeline's triggers, their last and next runs")
    triggers.add_argument("pipeline")
    pausing = triggers.add_mutually_exclusive_group()
    pausing.add_argument("--pause", metavar="TRIGGER", help="pause this trigger's Schedule")
    pausing.add_argument("--resume", metavar="TRIGGER", help="resume it")
    triggers.add_argument("--reason", default="", help="why (kept as the Schedule's note)")
    trigger = command(
        "trigger", "a release now of new artifact versions (what a CI's webhook call does)"
    )
    trigger.add_argument("pipeline")
    trigger.add_argument(
        "--artifact", action="append", default=[], metavar="ALIAS=VERSION", required=True
    )
    where = command("where", "on which stages (and in which releases) a work item is")
    where.add_argument("item", help="a work item, as commits name it: ABC-12, #7")
    where.add_argument("--pipeline")

    for name, help in (
        ("deploy", "deploy a stage of a release"),
        ("redeploy", "deploy a stage of a release again"),
        ("cancel", "cancel the running deployment of a stage"),
    ):
        action = command(name, help)
        action.add_argument("release", metavar="PIPELINE/NUMBER")
        action.add_argument("stage")
        if name == "deploy":
            action.add_argument(
                "--now", action="store_true", help="end an approver's deferral of this stage"
            )
    approve = command("approve", "approve a pending approval (or all of yours)")
    approve.add_argument("release", metavar="PIPELINE/NUMBER", nargs="?")
    approve.add_argument("stage", nargs="?")
    approve.add_argument("--post", action="store_true", help="the post-deployment approval")
    approve.add_argument("--comment", default="")
    approve.add_argument(
        "--defer-until", metavar="TIME", help="deploy at TIME (ISO, UTC unless given; or +2h)"
    )
    approve.add_argument(
        "--all-mine", action="store_true", help="approve everything waiting on you"
    )
    reject = command("reject", "reject a pending approval or manual intervention")
    reject.add_argument("release", metavar="PIPELINE/NUMBER")
    reject.add_argument("stage")
    reject.add_argument("--post", action="store_true")
    reject.add_argument("--comment", required=True, help="why (recorded in the history)")
    resume = command("resume", "go on after a manual intervention, or a failed task")
    resume.add_argument("release", metavar="PIPELINE/NUMBER")
    resume.add_argument("stage")
    resume.add_argument("--comment", default="")
    after_failure = resume.add_mutually_exclusive_group()
    for choice, help in (
        ("retry", "run the failed task again"),
        ("skip", "go on without it (the stage ends partially succeeded)"),
        ("fail", "fail the stage"),
    ):
        after_failure.add_argument(
            f"--{choice}", dest="choice", action="store_const", const=choice, help=help
        )
    rollback = command("rollback", "redeploy the release that was on a stage before")
    rollback.add_argument("pipeline")
    rollback.add_argument("stage")
    rollback.add_argument(
        "--to", type=int, metavar="N", help="release N instead (it must have succeeded there)"
    )
    hold = command("hold", "keep a release from a stage and the stages after it")
    hold.add_argument("release", metavar="PIPELINE/NUMBER")
    hold.add_argument("stage")
    hold.add_argument("--reason", required=True, help="why (recorded in the history)")
    unhold = command("unhold", "let a held release go again")
    unhold.add_argument("release", metavar="PIPELINE/NUMBER")
    unhold.add_argument("stage")
    approvals = command("approvals", "everything waiting on a person, across releases")
    approvals.add_argument("--mine", action="store_true", help="only what you can decide")
    gates = command("gates", "gate evaluations of a deployment; --ignore skips one check")
    gates.add_argument("release", metavar="PIPELINE/NUMBER")
    gates.add_argument("stage")
    gates.add_argument("--post", action="store_true")
    gates.add_argument("--ignore", metavar="CHECK")

    abandon = command("abandon", "abandon a release: nothing more deploys")
    abandon.add_argument("release", metavar="PIPELINE/NUMBER")
    abandon.add_argument("--reason", default="")

    logs = command("logs", "task logs of a release")
    logs.add_argument("release", metavar="PIPELINE/NUMBER")
    logs.add_argument("--stage")
    logs.add_argument("--task")
    logs.add_argument("--attempt", type=int)
    logs.add_argument("--follow", "-f", action="store_true", help="stream a running task")
    logs.add_argument("--no-timestamps", action="store_true")

    history = command("history", "the audit trail of a release")
    history.add_argument("release", metavar="PIPELINE/NUMBER")
    status = command("status", "what is deployed on each stage, and the newest releases")
    status.add_argument("pipeline")
    status.add_argument("--releases", type=int, default=10, help="how many (newest first)")

    login = command("login", "sign in to an API: paste a token (stdin), saved for next time")
    login.add_argument(
        "url",
        nargs="?",
        metavar="URL",
        help="the API (else $STAGEFLOW_URL, else the server used last, else http://127.0.0.1:8080)",
    )
    logout = command("logout", "forget the token saved for an API (it stays valid: revoke it)")
    logout.add_argument("url", nargs="?", metavar="URL", help="else the current server")
    command("whoami", "who the API says you are")
    token = command("token", "your personal API tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    token_create = token_sub.add_parser(
        "create", help="make a token; it is shown this once (the last line)", parents=[output]
    )
    token_create.add_argument("--name", default="", help="your label for it")
    token_create.add_argument(
        "--expires", metavar="DURATION", help="valid this long (90d, 12h); default: until revoked"
    )
    token_sub.add_parser("list", help="your tokens (never their secrets)", parents=[output])
    token_revoke = token_sub.add_parser("revoke", help="revoke a token", parents=[output])
    token_revoke.add_argument("token_id", metavar="ID")
    access = command("access", "who has which role on a pipeline")
    access_sub = access.add_subparsers(dest="access_command", required=True, metavar="ACTION")
    for verb, help in (("grant", "give a role"), ("revoke", "take a role back")):
        change = access_sub.add_parser(verb, help=help, parents=[output])
        change.add_argument(
            "subject",
            metavar="SUBJECT",
            help="user:NAME (or just NAME), group:NAME, group:oidc:NAME",
        )
        change.add_argument("role", choices=("viewer", "releaser", "admin"))
        change.add_argument("--pipeline", required=True, help="a pipeline, or '*' for every one")
        change.add_argument("--stage", help="only this stage of it")
    access_list = access_sub.add_parser("list", help="the grants", parents=[output])
    access_list.add_argument("--pipeline", help="one pipeline's (and those on every pipeline)")

    db = process("db", "the record's database")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser(
        "upgrade", help="migrate the record's schema to this version's", parents=[common]
    )
    retention = process("retention", "the record's retention: delete what pipelines no longer keep")
    retention_sub = retention.add_subparsers(
        dest="retention_command", required=True, metavar="ACTION"
    )
    run = retention_sub.add_parser(
        "run", help="apply it now (a Temporal Schedule does daily)", parents=[common]
    )
    run.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")

    server = process("server", "run the local Temporal dev server (SQLite in the data dir)")
    server.add_argument(
        "--port", type=int, default=7233, help="gRPC port; the Web UI is on port + 1000"
    )
    server.add_argument("--headless", action="store_true", help="no Web UI")
    process("worker", "run a control worker (workflows)")
    agent = process("agent", "run an agent that takes jobs from a pool")
    agent.add_argument("--pool", required=True)
    agent.add_argument("--name")
    agent.add_argument("--capacity", type=int, default=1)
    agent.add_argument("--work-dir")
    agent.add_argument(
        "--drain-timeout",
        default="10m",
        help="on SIGTERM, how long running tasks may finish before their jobs go to "
        "another agent (30s, 10m, 1h)",
    )
    up = process("up", "run the local stack: server, control worker, one agent and the API")
    up.add_argument(
        "--port", type=int, default=7233, help="gRPC port; the Web UI is on port + 1000"
    )
    up.add_argument("--headless", action="store_true", help="no Web UI")
    up.add_argument("--pool", default="linux", help="the pool of the agent it starts")
    up.add_argument(
        "--api-port",
        type=int,
        default=8080,
        help="the HTTP API's port on 127.0.0.1 (default 8080; 0: any free one)",
    )
    serve = process("serve", "run the HTTP API (migrates the record first)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    user = process("user", "people of the record (run where the data dir or its database is)")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    user_add = user_sub.add_parser(
        "add",
        help="add a person and print a first token for them (the last line)",
        parents=[common],
    )
    user_add.add_argument("name")
    user_add.add_argument("--email")
    user_add.add_argument("--admin", action="store_true", help="admin on every pipeline")
    codec = process(
        "codec-server", "decrypt payloads for the Temporal Web UI (needs STAGEFLOW_CODEC_KEY)"
    )
    codec.add_argument("--port", type=int, default=8081, help="on 127.0.0.1 (default 8081)")
    codec.add_argument(
        "--allow-origin",
        action="append",
        metavar="URL",
        help="a Web UI origin that may call it (repeatable; default the local Web UI, "
        "http://127.0.0.1:8233 and http://localhost:8233)",
    )
    return parser


def _common_options(defaults: bool) -> argparse.ArgumentParser:
    """The options of process commands: where Temporal and the data dir are."""
    common = argparse.ArgumentParser(add_help=False, parents=[_output_option(defaults)])
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    common.add_argument(
        "--address", help="Temporal address (else $TEMPORAL_ADDRESS, 127.0.0.1:7233)", **unset
    )
    common.add_argument(
        "--namespace", help="Temporal namespace (else $TEMPORAL_NAMESPACE, default)", **unset
    )
    common.add_argument(
        "--data-dir", help="data directory (else $STAGEFLOW_DATA_DIR, ~/.stageflow)", **unset
    )
    common.add_argument("--task-queue", help=argparse.SUPPRESS, **unset)
    return common


def _output_option(defaults: bool) -> argparse.ArgumentParser:
    output = argparse.ArgumentParser(add_help=False)
    unset: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    output.add_argument("--json", action="store_true", help="print JSON for scripts", **unset)
    return output


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of a process command: the environment, then its flags."""
    from worker.settings import Settings

    return Settings.from_env().with_flags(
        address=args.address,
        namespace=args.namespace,
        data_dir=args.data_dir,
        task_queue=args.task_queue,
    )


# --- commands ----------------------------------------------------------------------------


def cmd_pipeline(args: argparse.Namespace, settings: Settings) -> int:
    from activities.pipeline_loader import load_pipeline, pipeline_json_schema

    if args.pipeline_command == "schema":
        print(json.dumps(pipeline_json_schema(), indent=2))
        return Exit.OK
    pipeline, revision = load_pipeline(args.file)
    if args.json:
        print(
            json.dumps(
                {
                    "valid": True,
                    "name": pipeline.name,
                    "revision": revision,
                    "stages": pipeline.stage_names,
                }
            )
        )
    else:
        print(
            f"{args.file}: pipeline {pipeline.name!r} is valid "
            f"({len(pipeline.stages)} stages: {' -> '.join(pipeline.stage_names)})"
        )
    return Exit.OK


async def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    from starter.maintenance import cmd_retention as run_retention

    return await run_retention(args, settings)


async def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from activities.record import current_revision, safe_url, upgrade

    url = settings.record_url
    before = await current_revision(url)
    await upgrade(url)
    after = await current_revision(url)
    where = safe_url(url)
    if args.json:
        print(json.dumps({"database": where, "from": before, "to": after}))
    elif before == after:
        print(f"{where}: schema up to date (revision {after})")
    else:
        print(f"{where}: schema migrated from revision {before or 'none'} to {after}")
    return Exit.OK


def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from worker.up import run_server

    return asyncio.run(run_server(settings, args.port, headless=args.headless))


def cmd_codec_server(args: argparse.Namespace, settings: Settings) -> int:
    from starter.codec_server import DEFAULT_ORIGINS, serve

    serve(settings, args.port, args.allow_origin or DEFAULT_ORIGINS)
    return Exit.OK


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.control import run_control_worker

    client = await _client(
        settings, identity=f"control-worker pid {os.getpid()}@{os.uname().nodename}"
    )
    stop = _stop_on_signals()
    print(f"control worker polling {settings.task_queue!r} at {settings.address}", flush=True)
    print(settings.mail_destination(), flush=True)
    await run_control_worker(client, settings, stop)
    return Exit.OK


async def cmd_agent(args: argparse.Namespace, settings: Settings) -> int:
    from worker.agent import AgentOptions, AgentStop, WorkDirInUse, run_agent
    from workflows.pipeline import parse_duration

    try:
        drain_timeout = parse_duration(args.drain_timeout)
    except ValueError as err:
        raise UserError(f"--drain-timeout: {err}") from err
    options = AgentOptions.build(
        settings, args.pool, args.name, args.capacity, args.work_dir, drain_timeout
    )
    if options.capacity < 1:
        raise UserError("--capacity must be at least 1")
    client = await _client(settings, identity=f"agent {options.name}")
    try:
        await run_agent(client, settings, options, AgentStop.on_signals())
    except WorkDirInUse as err:
        raise UserError(str(err)) from err
    return Exit.OK


async def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    """The local stack, with the API as one more part of it (starter/serve.py api_part
    says why in this process). The API's port is bound first: taken, nothing starts.
    On a record with nobody in it, the OS user becomes its admin, with credentials
    saved for the API (starter/credentials.py); the token is not printed."""
    from starter.credentials import CredentialsUnreadable
    from starter.people import bootstrap_admin
    from starter.serve import DEFAULT_HOST, api_part, bind_api
    from worker.up import StackFailed, run_stack

    listener = bind_api(DEFAULT_HOST, args.api_port, flag="--api-port")
    owner = _os_user()

    async def first_admin(stack: Settings) -> None:
        try:
            made = await bootstrap_admin(stack, owner, listener.url)
        except (CredentialsUnreadable, OSError) as err:  # the API runs all the same
            print(
                f"up: no credentials saved for {listener.url} ({err}); "
                "`stageflow user add NAME --admin` makes a person and a token",
                file=sys.stderr,
                flush=True,
            )
            return
        if made is not None:
            user, path = made
            print(
                f"up: a new record: {user.name} is its admin; "
                f"credentials for {listener.url} saved in {path}",
                flush=True,
            )

    # Mails link the releases' pages on this API, unless STAGEFLOW_PUBLIC_URL says where
    # people reach it.
    # The pages link each workflow in the Web UI `up` starts.
    settings = dataclasses.replace(
        settings,
        public_url=settings.public_url or listener.url,
        temporal_ui_url=settings.temporal_ui_url
        or (None if args.headless else f"http://127.0.0.1:{args.port + 1000}"),
    )
    try:
        return await run_stack(
            settings,
            args.port,
            headless=args.headless,
            pool=args.pool,
            parts=[api_part(listener, on_ready=first_admin)],
        )
    except StackFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.USAGE
    finally:
        listener.close()


async def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from starter.serve import run_api

    return await run_api(settings, args.host, args.port)


async def cmd_user(args: argparse.Namespace, settings: Settings) -> int:
    """`user add`: the person and their first token; the token alone on the last line."""
    from starter.people import add_person

    made = await add_person(settings, args.name, email=args.email, admin=args.admin)
    token = made.token.get_secret_value()
    if args.json:
        print(json.dumps({"user": made.user.model_dump(mode="json"), "token": token}))
        return Exit.OK
    what = ", ".join(filter(None, [made.user.email, "admin" if made.user.is_admin else ""]))
    print(f"created user {made.user.name}" + (f" ({what})" if what else ""))
    print(f"a token for {made.user.name} (id {made.token_id}, no expiry), shown only this once:")
    print(token)
    return Exit.OK


# --- user commands: HTTP clients of the API --------------------------------------------

# `pipeline ACTION`s that go through the API; validate and schema run here.
STORED_PIPELINE_COMMANDS = {"apply", "list", "show", "history", "diff"}
USER_COMMANDS = {
    "release",
    "where",
    "triggers",
    "trigger",
    "deploy",
    "redeploy",
    "cancel",
    "abandon",
    "approve",
    "reject",
    "resume",
    "rollback",
    "hold",
    "unhold",
    "gates",
    "approvals",
    "logs",
    "history",
    "status",
    "login",
    "logout",
    "whoami",
    "token",
    "access",
}


def run_user_command(args: argparse.Namespace) -> int:
    """A user command, as the signed-in person (`login` and `logout` sign in and out).
    Only the module of the command is imported: `release list` stays clear of the
    models (pydantic) that `release show` and the actions parse answers into."""
    import importlib

    from starter.client import Api

    command = args.command
    if command in ("login", "logout"):
        from starter import access_commands

        return access_commands.login(args) if command == "login" else access_commands.logout(args)
    if command == "release":
        name = f"release {args.release_command}"
    elif command == "pipeline":
        name = f"pipeline {args.pipeline_command}"
    else:
        name = command
    module, function = USER_HANDLERS[name].split(":")
    handler: Callable[[Api, argparse.Namespace], int] = getattr(
        importlib.import_module(f"starter.{module}"), function
    )
    api = Api.signed_in()
    try:
        return handler(api, args)
    finally:
        api.close()


# Each user command's function, as "module:function" under starter/.
USER_HANDLERS = {
    "pipeline apply": "pipeline_commands:apply",
    "pipeline list": "pipeline_commands:list_pipelines",
    "pipeline show": "pipeline_commands:show",
    "pipeline history": "pipeline_commands:history",
    "pipeline diff": "pipeline_commands:diff",
    "release create": "commands:create",
    "release list": "read_commands:list_releases",
    "release show": "read_commands:show",
    "release diff": "change_commands:diff",
    "where": "change_commands:where",
    "triggers": "pipeline_commands:triggers",
    "trigger": "pipeline_commands:trigger",
    "deploy": "commands:deploy",
    "redeploy": "commands:redeploy",
    "cancel": "commands:cancel",
    "abandon": "commands:abandon",
    "approve": "commands:approve",
    "reject": "commands:reject",
    "resume": "commands:resume",
    "rollback": "commands:rollback",
    "hold": "commands:hold",
    "unhold": "commands:unhold",
    "gates": "commands:gates",
    "approvals": "read_commands:approvals",
    "logs": "log_commands:logs",
    "history": "read_commands:history",
    "status": "read_commands:status",
    "whoami": "access_commands:whoami",
    "token": "access_commands:token",
    "access": "access_commands:access",
}


# --- process commands: Stageflow itself, on Temporal and the record ------------------------


async def _client(settings: Settings, identity: str | None = None) -> Client:
    import asyncio

    from temporalio.service import RPCError

    from worker.settings import connect

    try:
        return await asyncio.wait_for(connect(settings, identity), timeout=10)
    except (TimeoutError, RuntimeError, RPCError, OSError) as err:
        raise ServerUnavailable(
            f"cannot reach the Temporal server at {settings.address} ({_short(err)}). "
            "Start the local stack with `stageflow up` (or `stageflow server`), "
            "or point TEMPORAL_ADDRESS / --address at your cluster."
        ) from err


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return "admin"


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text[:160]


def _stop_on_signals() -> asyncio.Event:
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run_process_command(args: argparse.Namespace) -> int:
    """A process command; its expected failures are one line and exit code 2."""
    import asyncio

    from temporalio.service import RPCError

    from activities.pipeline_loader import InvalidPipeline
    from starter.releases import ReleaseClosed, ReleaseNotFound, StageNotFound
    from worker.devserver import ServerFailed

    try:
        settings = settings_from(args)
        command = args.command
        if command == "pipeline":
            return cmd_pipeline(args, settings)
        if command == "server":
            return cmd_server(args, settings)
        if command == "codec-server":
            return cmd_codec_server(args, settings)
        runner: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
            "db": cmd_db,
            "retention": cmd_retention,
            "worker": cmd_worker,
            "agent": cmd_agent,
            "up": cmd_up,
            "serve": cmd_serve,
            "user": cmd_user,
        }
        return asyncio.run(runner[command](args, settings))
    except InvalidPipeline as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return Exit.USAGE
    except (ReleaseNotFound, ReleaseClosed, StageNotFound, ServerFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.USAGE
    except RPCError as err:
        print(f"error: Temporal said: {err}", file=sys.stderr)
        return Exit.USAGE


def run(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. Expected failures print one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in USER_COMMANDS or (
            args.command == "pipeline" and args.pipeline_command in STORED_PIPELINE_COMMANDS
        ):
            return _user_command(args)
        return run_process_command(args)
    except (UserError, Unavailable, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


def _user_command(args: argparse.Namespace) -> int:
    from starter.client import ApiError

    try:
        return run_user_command(args)
    except ApiError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code


def main() -> NoReturn:
    """Console entry point. Leaves with os._exit so a client runtime torn down badly at
    interpreter exit (sdk-python #300) cannot change the exit code."""
    code = run()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
