"""Settings of every Stageflow process, read once at start and passed down.

Environment first (`TEMPORAL_*`, `STAGEFLOW_*`), then command-line flags.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from temporalio.client import Client, TLSConfig
from temporalio.runtime import LogForwardingConfig, LoggingConfig, Runtime, TelemetryConfig

from activities.notify import SmtpSettings
from worker.codec import data_converter
from workflows.names import CONTROL_TASK_QUEUE

DEFAULT_ADDRESS = "127.0.0.1:7233"


@dataclass(frozen=True)
class Settings:
    address: str = DEFAULT_ADDRESS
    namespace: str = "default"
    data_dir: Path = field(default_factory=lambda: Path("~/.stageflow").expanduser())
    # The OS user: the Temporal client identity of a process that gives no other.
    user: str = "unknown"
    task_queue: str = CONTROL_TASK_QUEUE
    api_key: str | None = None
    tls: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    smtp: SmtpSettings = field(default_factory=lambda: SmtpSettings())
    # Base64 AES-256 key: every Temporal payload encrypted (worker/codec.py). Not in repr.
    codec_key: str | None = field(default=None, repr=False)
    # The record (activities/record): None is the SQLite file in the data dir. Not in
    # repr: a PostgreSQL URL may hold a password.
    database_url: str | None = field(default=None, repr=False)
    # Where people reach the API and pages (STAGEFLOW_PUBLIC_URL): mails link there.
    public_url: str | None = None
    # The Temporal Web UI (STAGEFLOW_TEMPORAL_UI_URL): the pages link each workflow there.
    temporal_ui_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        try:
            os_user = getpass.getuser()
        except Exception:  # no passwd entry (containers)
            os_user = "unknown"

        def path(name: str) -> Path | None:
            return Path(env[name]).expanduser() if env.get(name) else None

        return cls(
            address=env.get("TEMPORAL_ADDRESS", DEFAULT_ADDRESS),
            namespace=env.get("TEMPORAL_NAMESPACE", "default"),
            data_dir=Path(env.get("STAGEFLOW_DATA_DIR", "~/.stageflow")).expanduser(),
            user=os_user,
            task_queue=env.get("STAGEFLOW_TASK_QUEUE", CONTROL_TASK_QUEUE),
            api_key=env.get("TEMPORAL_API_KEY") or None,
            tls=env.get("TEMPORAL_TLS", "").lower() in ("1", "true", "yes")
            or bool(env.get("TEMPORAL_TLS_CLIENT_CERT_PATH")),
            tls_cert=path("TEMPORAL_TLS_CLIENT_CERT_PATH"),
            tls_key=path("TEMPORAL_TLS_CLIENT_KEY_PATH"),
            tls_ca=path("TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
            smtp=SmtpSettings.from_env(env),
            codec_key=env.get("STAGEFLOW_CODEC_KEY") or None,
            database_url=env.get("STAGEFLOW_DATABASE_URL") or None,
            public_url=public_url(env.get("STAGEFLOW_PUBLIC_URL", "")),
            temporal_ui_url=public_url(
                env.get("STAGEFLOW_TEMPORAL_UI_URL", ""), "STAGEFLOW_TEMPORAL_UI_URL"
            ),
        )

    def with_flags(self, **flags: object) -> Settings:
        """Apply command-line flags that were given (None means not given)."""
        given = {k: v for k, v in flags.items() if v is not None}
        if "data_dir" in given:
            given["data_dir"] = Path(str(given["data_dir"])).expanduser()
        return replace(self, **given)  # type: ignore[arg-type]

    @property
    def record_url(self) -> str:
        """The record's database: STAGEFLOW_DATABASE_URL, else the SQLite file in the data dir."""
        # Imported here: SQLAlchemy loads only in processes that use the record.
        from activities.record.database import async_url, default_database_url

        return (
            async_url(self.database_url)
            if self.database_url
            else default_database_url(self.data_dir)
        )

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def mail_destination(self) -> str:
        """One line saying where mail goes, for `stageflow up` and `stageflow worker`."""
        if self.smtp.host:
            return f"mail: through {self.smtp.host}:{self.smtp.port} ({self.smtp.security})"
        return (
            "mail: no SMTP host configured (STAGEFLOW_SMTP_HOST), "
            f"mails are written to {self.outbox_dir}"
        )

    @property
    def outbox_dir(self) -> Path:
        """Mails land here as .eml files when no SMTP host is configured."""
        return self.data_dir / "outbox"


async def connect(settings: Settings, identity: str | None = None) -> Client:
    """A Temporal client with Stageflow's converter (pydantic; encrypted payloads with
    a codec key, see worker/codec.py); the user is the client identity."""
    tls: TLSConfig | bool = False
    if settings.tls_cert or settings.tls_ca:
        tls = TLSConfig(
            client_cert=settings.tls_cert.read_bytes() if settings.tls_cert else None,
            client_private_key=settings.tls_key.read_bytes() if settings.tls_key else None,
            server_root_ca_cert=settings.tls_ca.read_bytes() if settings.tls_ca else None,
        )
    elif settings.tls or settings.api_key:
        tls = True
    return await Client.connect(
        settings.address,
        namespace=settings.namespace,
        data_converter=data_converter(settings.codec_key),
        identity=identity or settings.user,
        api_key=settings.api_key,
        tls=tls,
        runtime=_runtime(),
    )


@functools.cache
def _runtime() -> Runtime:
    """The process's Temporal runtime, its Core logs forwarded to Python logging.

    Core would write its warnings (a retried call while the server restarts) to
    stdout, into the middle of `--json` output; Python logging writes them to
    stderr. One runtime per process: each has its own thread pool.
    """
    forwarding = LogForwardingConfig(logger=logging.getLogger("temporalio.core"))
    logs = LoggingConfig(filter=LoggingConfig.default.filter, forwarding=forwarding)
    return Runtime(telemetry=TelemetryConfig(logging=logs))


def public_url(text: str, variable: str = "STAGEFLOW_PUBLIC_URL") -> str | None:
    """A base URL from the environment checked: http(s) with a host, no query or
    fragment (paths are put under it); '' is None. A ValueError names the variable."""
    from urllib.parse import urlsplit

    if not text:
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"{variable}: {text!r} is not an http(s) URL like https://stageflow.example.com"
        )
    return text.rstrip("/")
