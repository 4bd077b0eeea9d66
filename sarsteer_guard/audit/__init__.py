"""Tamper-evident audit log of refused turns (SQLite embedded, Redis Streams), spool, export.

No torch here, ever: compliance tooling must run where the model does not.

Store URLs (``--audit`` in the CLI, ``SARSTEER_AUDIT_URL`` in the environment):

- ``sqlite:///relative/audit.db``, ``sqlite:////abs/path/audit.db`` (as in SQLAlchemy:
  three slashes then a relative path, four for an absolute one) or a plain path:
  embedded SQLite (the default is ``$XDG_STATE_HOME/sarsteer-guard/audit.db``, i.e.
  ``~/.local/state/...``); query ``?max_age_days=N`` adds age retention.
- ``redis://host:port/db?prefix=P&max_len=N&max_age_days=D`` (also ``rediss://``,
  ``unix://``): Redis Streams.

Both take ``audio_max_age_days=N``: how long kept audio stays beside the chain when the
draft names no audio retention (default 30 days; see :mod:`sarsteer_guard.audit.audio`).

Writers (the Guard) get the backend wrapped in a :class:`SpooledAuditLog`, so no
record whose id was handed out is lost when a write fails; readers
(``open_audit_log(url, create=False)``, the ``audit`` commands) get the bare backend,
which never creates a store and raises :class:`AuditStoreMissingError` where there is
no log. ``SARSTEER_AUDIT_KEY`` MACs checkpoints (see :mod:`sarsteer_guard.audit.keys`).

How the Guard writes a record (``append`` does blocking I/O: call it off the event
loop, e.g. ``await asyncio.to_thread(log.append, draft)``)::

    log = open_audit_log(None)                      # once; close() at shutdown
    await asyncio.to_thread(log.open)               # at start: replays a crashed spool
    draft = AuditDraft(
        turn_id=..., session_id=..., policy_name=..., policy_version=..., policy_hash=...,
        rule=..., mode="enforce", alpha=0.1, model_id=..., model_fingerprint=...,
        vector_set_id=..., refused=True,
        detector=Detection(keyword="I cannot", score=0.8, fixed_message=False),
        response_text=..., served_text=..., latency_ms=...,
        context=redact_context(ctx, hash_fields, drop_fields),  # salt from the env
        audio_sha256=audio_sha256(wav_bytes),
        audio=encode_audio(wav_bytes) if keep_audio else None, audio_format="wav",
        audio_retention_until=now + audio_retention,  # kept audio goes sooner (audit.audio)
        flags=("fail_open",) if failed_open else (), retention_until=now + retention,
        shadow=ShadowOutcome.from_turn(decision.shadow) if decision.shadow else None,
    )
    record = log.append(draft)   # None: spooled (the backend failed), replayed later
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from sarsteer_guard.audit.audio import KeptAudio
from sarsteer_guard.audit.base import (
    AuditLog,
    AuditStoreMissingError,
    ChainBreak,
    PrunePreview,
    RecordFilter,
    VerifyReport,
)
from sarsteer_guard.audit.checkpoint import Checkpoint
from sarsteer_guard.audit.dsa import DsaSettings, export_dsa
from sarsteer_guard.audit.export import (
    export_csv,
    export_jsonl,
    export_sor,
    statement_of_reasons,
)
from sarsteer_guard.audit.keys import KEY_ENV, AuditKeys
from sarsteer_guard.audit.record import (
    GENESIS_HASH,
    SALT_ENV,
    AuditDraft,
    AuditRecord,
    Detection,
    ShadowOutcome,
    audio_sha256,
    encode_audio,
    new_record_id,
    redact_context,
)
from sarsteer_guard.audit.redis_log import RedisAuditLog
from sarsteer_guard.audit.review import LABELS, AccessEvent, ReviewLabel, ReviewLog
from sarsteer_guard.audit.spool import SpooledAuditLog, SpoolFullError, spool_backlog
from sarsteer_guard.audit.sqlite_log import SqliteAuditLog
from sarsteer_guard.errors import AuditError

#: Environment variable naming the audit store.
URL_ENV = "SARSTEER_AUDIT_URL"

__all__ = [
    "GENESIS_HASH",
    "KEY_ENV",
    "LABELS",
    "SALT_ENV",
    "URL_ENV",
    "AccessEvent",
    "AuditDraft",
    "AuditKeys",
    "AuditLog",
    "AuditRecord",
    "AuditStoreMissingError",
    "ChainBreak",
    "Checkpoint",
    "Detection",
    "DsaSettings",
    "KeptAudio",
    "PrunePreview",
    "RecordFilter",
    "RedisAuditLog",
    "ReviewLabel",
    "ReviewLog",
    "ShadowOutcome",
    "SpoolFullError",
    "SpooledAuditLog",
    "SqliteAuditLog",
    "VerifyReport",
    "audio_sha256",
    "default_spool_dir",
    "default_state_dir",
    "encode_audio",
    "export_csv",
    "export_dsa",
    "export_jsonl",
    "export_sor",
    "new_record_id",
    "open_audit_log",
    "redact_context",
    "spool_backlog",
    "sqlite_path",
    "statement_of_reasons",
]


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/sarsteer-guard`` (``~/.local/state/sarsteer-guard``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sarsteer-guard"


def _max_age(query: str, key: str = "max_age_days") -> timedelta | None:
    days = dict(parse_qsl(query)).get(key)
    try:
        return timedelta(days=float(days)) if days else None
    except ValueError as error:
        raise AuditError(f"bad {key} in audit store URL ({days!r}); use a number") from error


def sqlite_path(url: str) -> Path:
    """The file an SQLite store URL or plain path names.

    As in SQLAlchemy: ``sqlite:///audit.db`` is relative to the working directory,
    ``sqlite:////var/audit.db`` absolute; ``file:`` URLs and plain paths as written.

    Raises:
        AuditError: a ``sqlite:`` URL without a path.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        rest = url.split("?", 1)[0][len("sqlite:") :]
        if not rest.startswith("//"):
            raise AuditError(f"{url!r} is not sqlite:///relative.db or sqlite:////abs/path.db")
        path = rest[2:]  # netloc is empty: "/relative.db" or "//abs/path.db"
        if path in ("", "/"):
            raise AuditError(
                "sqlite audit URL has no path; use sqlite:///audit.db (relative) "
                "or sqlite:////abs/path/audit.db"
            )
        return Path(path[1:])
    if scheme == "file":
        return Path(parts.path)
    return Path(url)


def default_spool_dir(log: AuditLog) -> Path:
    """Where a writer of ``log`` spools: beside an SQLite file, or per Redis URL and prefix."""
    if isinstance(log, SqliteAuditLog):
        return Path(f"{log.path}.spool")
    if isinstance(log, RedisAuditLog):
        key = hashlib.sha256(f"{log.safe_url}|{log.prefix}".encode()).hexdigest()[:16]
        return default_state_dir() / "audit-spool" / key
    raise AuditError(f"no default spool directory for {log!r}; pass spool_dir")


def _backend(url: str, create: bool) -> AuditLog:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        return RedisAuditLog.from_url(url, create=create)
    windows_drive = len(scheme) == 1 and os.name == "nt"
    if scheme in ("", "sqlite", "file") or windows_drive:
        query = parts.query if scheme == "sqlite" else ""
        return SqliteAuditLog(
            sqlite_path(url),
            max_age=_max_age(query),
            audio_max_age=_max_age(query, "audio_max_age_days"),
            create=create,
        )
    raise AuditError(
        f"unsupported audit store {scheme}://; use sqlite:///path, a file path or redis://host"
    )


def open_audit_log(
    url: str | None = None, *, spool_dir: str | Path | None = None, create: bool = True
) -> AuditLog:
    """Open the audit log named by ``url`` (no I/O until first use).

    Args:
        url: store URL; None means ``$SARSTEER_AUDIT_URL`` or the SQLite default.
        spool_dir: spool directory for writers; default :func:`default_spool_dir`.
        create: True for writers: the store is created if missing and every append
            that fails is spooled and retried. False for readers (``audit`` commands):
            no spool, and a missing store raises :class:`AuditStoreMissingError`.

    Raises:
        AuditError: the URL has an unsupported scheme or bad options.
    """
    url = url or os.environ.get(URL_ENV) or str(default_state_dir() / "audit.db")
    inner = _backend(url, create)
    if not create:
        return inner
    return SpooledAuditLog(inner, spool_dir if spool_dir is not None else default_spool_dir(inner))
