"""`python -m bench.cli_startup ARGS…`: the `stageflow` CLI's start-up alone.

What `stageflow ARGS…` does before its command's work: the interpreter starts,
the CLI and the command's modules are imported, ARGS are parsed, the credentials
read and the API reached (GET /api/v1/me, the one round trip every command needs
at least) — then it exits. The decision round trip figure subtracts this from a
whole `stageflow approve` run (bench/decision.py).
"""

from __future__ import annotations

import os
import sys

from starter import commands  # noqa: F401  (imported by the CLI's commands when they run)
from starter.cli import build_parser
from starter.client import Api


def signed_in(argv: list[str]) -> None:
    build_parser().parse_args(argv)
    api = Api.signed_in()
    try:
        api.get("/me")
    finally:
        api.close()


def main() -> None:
    signed_in(sys.argv[1:])
    sys.stdout.flush()
    os._exit(0)  # as the CLI leaves


if __name__ == "__main__":
    main()
