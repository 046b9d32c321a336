"""The `stageflow` command line: parse, call one function, render.

Exit codes: 0 fine, 1 a deployment failed (or was rejected or canceled), 2 bad
input (invalid pipeline, unknown release or stage, refused request) or no server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NoReturn

from temporalio.client import Client
from temporalio.service import RPCError

from starter.exit_codes import Exit, Unavailable
from starter.pipeline_loader import InvalidPipeline, load_pipeline, pipeline_json_schema
from starter.releases import (
    ReleaseClosed,
    ReleaseNotFound,
    ReleaseRef,
    StageNotFound,
)
from worker.devserver import ServerFailed
from worker.settings import Settings, connect


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

    parser = argparse.ArgumentParser(
        prog="stageflow",
        description="Stageflow: releases through stages, on Temporal.",
        parents=[top],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common, *parents])

    pipeline = command("pipeline", "validate a pipeline file or print its JSON Schema")
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")
    validate = pipeline_sub.add_parser("validate", help="check a pipeline file", parents=[common])
    validate.add_argument("file")
    pipeline_sub.add_parser("schema", help="print the pipeline JSON Schema", parents=[common])

    release = command("release", "create, list and show releases")
    release_sub = release.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    create = release_sub.add_parser(
        "create", help="create a release of a pipeline", parents=[common]
    )
    create.add_argument("file", help="the pipeline YAML")
    create.add_argument("--artifact", action="append", default=[], metavar="ALIAS=VERSION")
    create.add_argument("--var", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--until", metavar="STAGE", help="deploy no further than this stage")
    create.add_argument("--description", default="")
    create.add_argument("--wait", action="store_true", help="show progress until the stages settle")
    listing = release_sub.add_parser("list", help="releases, newest first", parents=[common])
    listing.add_argument("--pipeline")
    listing.add_argument("--status", help="the release's: waiting, in_progress, succeeded, ...")
    listing.add_argument(
        "--stage-status", metavar="STATUS", help="releases with a stage in this status"
    )
    listing.add_argument("--created-by", metavar="USER")
    listing.add_argument("--limit", type=int, default=20, help="releases per page")
    listing.add_argument("--page", type=int, default=1)
    show = release_sub.add_parser("show", help="one release and its stages", parents=[common])
    show.add_argument("release", metavar="PIPELINE/NUMBER")

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
    resume = command("resume", "go on after a manual intervention")
    resume.add_argument("release", metavar="PIPELINE/NUMBER")
    resume.add_argument("stage")
    resume.add_argument("--comment", default="")
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

    db = command("db", "the record's database")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser(
        "upgrade", help="migrate the record's schema to this version's", parents=[common]
    )
    retention = command("retention", "the record's retention: delete what pipelines no longer keep")
    retention_sub = retention.add_subparsers(
        dest="retention_command", required=True, metavar="ACTION"
    )
    run = retention_sub.add_parser(
        "run", help="apply it now (a Temporal Schedule does daily)", parents=[common]
    )
    run.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")

    server = command("server", "run the local Temporal dev server (SQLite in the data dir)")
    server.add_argument(
        "--port", type=int, default=7233, help="gRPC port; the Web UI is on port + 1000"
    )
    server.add_argument("--headless", action="store_true", help="no Web UI")
    command("worker", "run a control worker (workflows)")
    agent = command("agent", "run an agent that takes jobs from a pool")
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
    up = command("up", "run the local stack: server, control worker, one agent and the API")
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
    serve = command("serve", "run the HTTP API (migrates the record first)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (8080)")
    user = command("user", "people of the record (run where the data dir or its database is)")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    user_add = user_sub.add_parser(
        "add",
        help="add a person and print a first token for them (the last line)",
        parents=[common],
    )
    user_add.add_argument("name")
    user_add.add_argument("--email")
    user_add.add_argument("--admin", action="store_true", help="admin on every pipeline")
    codec = command(
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
    common = argparse.ArgumentParser(add_help=False)
    unset = {} if defaults else {"default": argparse.SUPPRESS}
    common.add_argument(
        "--as", dest="user", help="who you are (else $STAGEFLOW_USER, else the OS user)", **unset
    )
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
    common.add_argument("--json", action="store_true", help="print JSON for scripts", **unset)
    return common


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings.from_env().with_flags(
        address=args.address,
        namespace=args.namespace,
        data_dir=args.data_dir,
        user=args.user,
        task_queue=args.task_queue,
    )


# --- commands ----------------------------------------------------------------------------


def cmd_pipeline(args: argparse.Namespace, settings: Settings) -> int:
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


async def cmd_release(args: argparse.Namespace, settings: Settings) -> int:
    from starter import commands, read_commands

    if args.release_command == "create":
        if not Path(args.file).exists():
            raise UserError(f"{args.file}: no such file")
        load_pipeline(args.file)  # invalid input is refused before any connection
        client = await _client(settings)
        return await commands.create(client, settings, args)
    if args.release_command == "list":
        return await read_commands.list_releases(settings, args)
    return await read_commands.show(settings, args)


async def cmd_read(args: argparse.Namespace, settings: Settings) -> int:
    """The commands answered from the record (`logs --follow` then streams live)."""
    from starter import commands, read_commands

    if args.command == "logs":
        return await commands.logs(settings, args, _ref(args.release))
    if args.command == "history":
        return await read_commands.history(settings, args, _ref(args.release))
    if args.command == "approvals":
        return await read_commands.approvals(settings, args)
    return await read_commands.status(settings, args)


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


async def cmd_release_action(args: argparse.Namespace, settings: Settings) -> int:
    from starter import commands

    ref = _ref(args.release)
    client = await _client(settings)
    handler: Callable[..., Awaitable[int]] = getattr(commands, args.command)
    return await handler(client, settings, args, ref)


async def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    from starter import commands

    if args.all_mine:
        if args.release or args.stage:
            raise UserError("--all-mine approves everything waiting on you: give no release")
        return await commands.approve_all_mine(await _client(settings), settings, args)
    if not (args.release and args.stage):
        raise UserError("approve needs PIPELINE/NUMBER STAGE (or --all-mine)")
    ref = _ref(args.release)
    return await commands.approve(await _client(settings), settings, args, ref)


def cmd_server(args: argparse.Namespace, settings: Settings) -> int:
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


# --- plumbing ----------------------------------------------------------------------------


def _ref(text: str) -> ReleaseRef:
    try:
        return ReleaseRef.parse(text)
    except ValueError as err:
        raise UserError(str(err)) from err


async def _client(settings: Settings, identity: str | None = None) -> Client:
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command
    if command == "pipeline":
        return cmd_pipeline(args, settings)
    if command == "server":
        return cmd_server(args, settings)
    if command == "codec-server":
        return cmd_codec_server(args, settings)
    runner: dict[str, Callable[[argparse.Namespace, Settings], Awaitable[int]]] = {
        "release": cmd_release,
        "deploy": cmd_release_action,
        "redeploy": cmd_release_action,
        "cancel": cmd_release_action,
        "abandon": cmd_release_action,
        "logs": cmd_read,
        "history": cmd_read,
        "approvals": cmd_read,
        "status": cmd_read,
        "db": cmd_db,
        "retention": cmd_retention,
        "reject": cmd_release_action,
        "resume": cmd_release_action,
        "gates": cmd_release_action,
        "approve": cmd_approve,
        "worker": cmd_worker,
        "agent": cmd_agent,
        "up": cmd_up,
        "serve": cmd_serve,
        "user": cmd_user,
    }
    return asyncio.run(runner[command](args, settings))


def run(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code. Expected failures print one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        return _dispatch(args, settings)
    except InvalidPipeline as err:
        for problem in err.problems:
            print(f"error: {problem}", file=sys.stderr)
        return Exit.USAGE
    except (UserError, ReleaseNotFound, ReleaseClosed, StageNotFound, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.USAGE
    except (Unavailable, ServerFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return Exit.USAGE
    except RPCError as err:
        print(f"error: Temporal said: {err}", file=sys.stderr)
        return Exit.USAGE
    except KeyboardInterrupt:
        return Exit.INTERRUPTED


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
