"""The exit codes of the `stageflow` command line, in one place."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """0 fine; 1 a deployment failed (or was rejected or canceled); 2 bad input (an invalid
    pipeline, an unknown release or stage, a refused request) or no server; 130 interrupted."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTERRUPTED = 130


class Unavailable(Exception):
    """What a command needs cannot be reached (the Temporal server, the record's
    database): one line naming it, exit 2."""
