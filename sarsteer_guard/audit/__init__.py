"""Tamper-evident audit log of refused turns (SQLite embedded, Redis Streams), spool, export.

No torch here, ever: compliance tooling must run where the model does not.

Store URLs (``--store`` in the CLI, ``SARSTEER_AUDIT_URL`` in the environment):

- ``sqlite:///abs/path/audit.db`` or a plain path: embedded SQLite (the default is
  ``$XDG_STATE_HOME/sarsteer-guard/audit.db``, i.e. ``~/.local/state/...``);
  query ``?max_age_days=N`` adds age retention.
- ``redis://host:port/db?prefix=P&max_len=N&max_age_days=D`` (also ``rediss://``,
  ``unix://``): Redis Streams, wrapped in a :class:`SpooledAuditLog` so outages lose
  nothing.

How the Guard writes a record (``append`` does blocking I/O: call it off the event
loop, e.g. ``await asyncio.to_thread(log.append, draft)``)::

    log = open_audit_log(None)                      # once; close() at shutdown
    draft = AuditDraft(
        turn_id=..., session_id=..., policy_name=..., policy_version=..., policy_hash=...,
        rule=..., mode="enforce", alpha=0.1, model_id=..., model_fingerprint=...,
        vector_set_id=..., refused=True,
        detector=Detection(keyword="I cannot", score=0.8, fixed_message=False),
        response_text=..., served_text=..., latency_ms=...,
        context=redact_context(ctx, hash_fields, drop_fields),  # salt from the env
        audio_sha256=audio_sha256(wav_bytes),
        audio=encode_audio(wav_bytes) if keep_audio else None, audio_format="wav",
        flags=("fail_open",) if failed_open else (), retention_until=now + retention,
    )
    record = log.append(draft)   # None only when spooled during a backend outage
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from sarsteer_guard.audit.base import AuditLog, ChainBreak, RecordFilter, VerifyReport
from sarsteer_guard.audit.export import (
    export_csv,
    export_jsonl,
    export_sor,
    statement_of_reasons,
)
from sarsteer_guard.audit.record import (
    GENESIS_HASH,
    SALT_ENV,
    AuditDraft,
    AuditRecord,
    Detection,
    audio_sha256,
    encode_audio,
    new_record_id,
    redact_context,
)
from sarsteer_guard.audit.redis_log import RedisAuditLog
from sarsteer_guard.audit.spool import SpooledAuditLog, SpoolFullError
from sarsteer_guard.audit.sqlite_log import SqliteAuditLog
from sarsteer_guard.errors import AuditError

#: Environment variable naming the audit store.
URL_ENV = "SARSTEER_AUDIT_URL"

__all__ = [
    "GENESIS_HASH",
    "SALT_ENV",
    "URL_ENV",
    "AuditDraft",
    "AuditLog",
    "AuditRecord",
    "ChainBreak",
    "Detection",
    "RecordFilter",
    "RedisAuditLog",
    "SpoolFullError",
    "SpooledAuditLog",
    "SqliteAuditLog",
    "VerifyReport",
    "audio_sha256",
    "default_state_dir",
    "encode_audio",
    "export_csv",
    "export_jsonl",
    "export_sor",
    "new_record_id",
    "open_audit_log",
    "redact_context",
    "statement_of_reasons",
]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/sarsteer-guard`` (``~/.local/state/sarsteer-guard``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sarsteer-guard"


def _sqlite(path: str, query: str) -> SqliteAuditLog:
    opts = dict(parse_qsl(query))
    days = opts.get("max_age_days")
    try:
        max_age = timedelta(days=float(days)) if days else None
    except ValueError as error:
        raise AuditError(f"bad max_age_days in audit store URL ({days!r}); use a number") from error
    return SqliteAuditLog(path, max_age=max_age)


def open_audit_log(url: str | None = None, *, spool_dir: str | Path | None = None) -> AuditLog:
    """Open the audit log named by ``url`` (no I/O until first use).

    Args:
        url: store URL; None means ``$SARSTEER_AUDIT_URL`` or the SQLite default.
        spool_dir: spool directory for Redis stores; default is a per-store folder
            under the state dir (one per store URL and prefix).

    Raises:
        AuditError: the URL has an unsupported scheme.
    """
    url = url or os.environ.get(URL_ENV) or str(default_state_dir() / "audit.db")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        inner = RedisAuditLog.from_url(url)
        if spool_dir is None:
            key = hashlib.sha256(f"{inner.safe_url}|{inner.prefix}".encode()).hexdigest()[:16]
            spool_dir = default_state_dir() / "audit-spool" / key
        return SpooledAuditLog(inner, spool_dir)
    if scheme == "sqlite":
        # sqlite:///abs/path and SQLAlchemy's sqlite:////abs/path both mean /abs/path
        path = "/" + url[len("sqlite://") :].split("?", 1)[0].lstrip("/")
        if path == "/":
            raise AuditError("sqlite audit URL has no path; use sqlite:///abs/path/audit.db")
        return _sqlite(path, parts.query)
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        return _sqlite(parts.path if scheme == "file" else url, "")
    raise AuditError(
        f"unsupported audit store {scheme}://; use sqlite:///path, a file path or redis://host"
    )
