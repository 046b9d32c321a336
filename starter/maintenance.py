"""`stageflow retention run`: the record's retention, now, without Temporal.

The same work as the daily Schedule's RetentionWorkflow
(activities/record/retention.py), straight against the record and the log
store of this data dir. It writes, so it brings the schema up to date first.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError

from activities.record import open_database, safe_url, upgrade
from activities.record.retention import apply_retention
from starter.exit_codes import Exit
from starter.reading import RecordUnavailable
from worker.settings import Settings
from workflows.record_api import RetentionResult


async def cmd_retention(args: argparse.Namespace, settings: Settings) -> int:
    """Apply the record's retention now; print what went and what was kept. Raises
    RecordUnavailable (one line naming the database) when the record cannot be written."""
    url = settings.record_url
    try:
        await upgrade(url)
        db = open_database(url)
        try:
            result = await apply_retention(
                db, datetime.now(UTC), settings.log_dir, dry_run=getattr(args, "dry_run", False)
            )
        finally:
            await db.close()
    except (SQLAlchemyError, OSError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        raise RecordUnavailable(
            f"cannot apply retention to the record at {safe_url(url)} ({reason})"
        ) from err
    if getattr(args, "json", False):
        print(json.dumps(result.model_dump(mode="json")))
    else:
        print(retention_line(result))
    return Exit.OK


def retention_line(result: RetentionResult) -> str:
    """One line: what a run deleted (or would) and what it kept past its age, and why."""
    verb = "would delete" if result.dry_run else "deleted"
    line = (
        f"retention: {verb} {_count(result.releases, 'release')}"
        f" ({_count(result.deployments, 'deployment')}, {_count(result.logs, 'log file')})"
    )
    reasons = [
        (result.kept_deployed, "deployed on a stage now"),
        (result.kept_last, "among a stage's last deployments"),
        (result.kept_active, "active"),
        (result.kept_unreadable, "retention unreadable"),
    ]
    if result.kept:
        line += (
            f"; kept {result.kept} past their age ("
            + ", ".join(f"{count} {why}" for count, why in reasons if count)
            + ")"
        )
    return line


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
