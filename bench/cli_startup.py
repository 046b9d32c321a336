"""`python -m bench.cli_startup ARGS…`: the `stageflow` CLI's start-up alone.

What `stageflow ARGS…` does before its command's work: the interpreter starts,
the CLI and the command's modules are imported, ARGS are parsed, the settings
read and the client connected — then it exits. The decision round trip figure
subtracts this from a whole `stageflow approve` run (bench/decision.py).
"""

from __future__ import annotations

import asyncio
import os
import sys

from starter import commands  # noqa: F401  (imported by the CLI's commands when they run)
from starter.cli import build_parser, settings_from
from worker.settings import connect


async def connected(argv: list[str]) -> None:
    settings = settings_from(build_parser().parse_args(argv))
    await connect(settings)


def main() -> None:
    asyncio.run(connected(sys.argv[1:]))
    sys.stdout.flush()
    os._exit(0)  # as the CLI leaves (sdk-python #300)


if __name__ == "__main__":
    main()
