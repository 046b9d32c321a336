"""The record: every release, deployment and decision kept in SQL (issue 12).

Temporal runs the process; the record remembers it. The workflows write it
through the record activity (writes.py: idempotent, newer-only), the CLI, the
API and the pages read it (queries.py), so reads never depend on a worker being
up or on Temporal's retention. SQLite in the data dir by default, PostgreSQL
with STAGEFLOW_DATABASE_URL (database.py); the schema is migrated by Alembic
(migrations/), at the start of every process that writes (`upgrade(url)`).
"""

from activities.record.database import (
    Database,
    async_url,
    current_revision,
    default_database_url,
    open_database,
    safe_url,
    upgrade,
    upgrade_now,
)
from activities.record.identity import User, add_user, authenticate, create_token, grant, roles_of
from activities.record.meta import MetaRow, get_meta, set_meta
from activities.record.queries import (
    deployed_on,
    history,
    pipeline_names,
    release,
    release_spec,
    releases,
    releases_waiting_on,
    revisions,
    status_matrix,
    trail,
)
from activities.record.requests import ApiRequestRow, record_request, request_answered, sender_of
from activities.record.sessions import WebSessionRow, end_session, open_session, session_identity
from activities.record.views import (
    Deployed,
    RecordedRevision,
    StageDeployments,
    StatusMatrix,
    Waiting,
)
from activities.record.writes import (
    ReleaseNotRecorded,
    event_id,
    import_release,
    record_attempt,
    record_events,
    record_release,
    record_revision,
    record_state,
    record_write,
)

__all__ = [
    "ApiRequestRow",
    "WebSessionRow",
    "end_session",
    "open_session",
    "session_identity",
    "record_request",
    "request_answered",
    "sender_of",
    "Database",
    "pipeline_names",
    "Deployed",
    "User",
    "MetaRow",
    "RecordedRevision",
    "ReleaseNotRecorded",
    "StageDeployments",
    "StatusMatrix",
    "Waiting",
    "add_user",
    "async_url",
    "authenticate",
    "create_token",
    "current_revision",
    "default_database_url",
    "deployed_on",
    "event_id",
    "get_meta",
    "grant",
    "history",
    "import_release",
    "open_database",
    "record_attempt",
    "record_events",
    "record_release",
    "record_revision",
    "record_state",
    "record_write",
    "release",
    "release_spec",
    "releases",
    "releases_waiting_on",
    "revisions",
    "trail",
    "roles_of",
    "safe_url",
    "set_meta",
    "status_matrix",
    "upgrade",
    "upgrade_now",
]
