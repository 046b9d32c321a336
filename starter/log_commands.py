"""`stageflow logs`: a release's task logs from the API, and a running task followed live.

Which tasks and tries have logs, each log's lines (with the time each was written)
and the stream of a running task are the API's (starter/api/routes_logs.py); this
prints them, a header before each try's log.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import quote

from starter.client import Api
from starter.exit_codes import Exit
from starter.release_ref import release_path, release_ref


def logs(api: Api, args: argparse.Namespace) -> int:
    """Print the logs of every try of the chosen tasks; `--follow` streams a running one.

    A log cut short (its agent was lost, or the task killed) says so in its last line.
    Printing into a pipe that closes early (`| head`) ends quietly.
    """
    try:
        return _print_logs(api, args)
    except BrokenPipeError:
        # The reader is gone (`| head`): stop quietly, as Unix tools do. Later
        # flushes of stdout must not fail again, so it now goes nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK


def _print_logs(api: Api, args: argparse.Namespace) -> int:
    ref = release_ref(args.release)
    tasks: list[dict[str, Any]] = api.get(
        release_path(ref, "logs"), {"stage": args.stage, "task": args.task, "attempt": args.attempt}
    )
    printed = 0
    for task in tasks:
        stage, attempt, name = task["stage"], task["attempt"], task["task"]
        if task["status"] == "in_progress" and args.follow:
            print(f"==> {stage} #{attempt} / {name} (following) <==", flush=True)
            params = {"task": f"{task['job']}/{name}", "attempt": attempt}
            with api.lines(
                release_path(ref, "stages", stage, "follow"), params, follow=True
            ) as lines:
                for line in lines:
                    print(line, flush=True)
            printed += 1
            continue
        tries = task["logs"]
        for log in tries:
            label = f", {_label(log)}" if len(tries) > 1 or log["task_try"] > 1 else ""
            print(f"==> {stage} #{attempt} / {name} ({task['status']}){label} <==", flush=True)
            path = release_path(ref, "logs") + "/" + quote(log["key"], safe="/")
            with api.lines(path, {"timestamps": not args.no_timestamps}) as lines:
                for line in lines:
                    print(line)
            printed += 1
    if printed == 0:
        print("no logs yet" + (f" for task {args.task!r}" if args.task else ""))
    sys.stdout.flush()  # a closed pipe shows here, while BrokenPipeError is still caught
    return Exit.OK


def _label(log: dict[str, Any]) -> str:
    if log["job_try"] > 1:
        return f"job try {log['job_try']}, try {log['task_try']}"
    return f"try {log['task_try']}"
