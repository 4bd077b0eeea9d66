"""Audit log in a Redis Stream, shared by every guard replica.

Keys (``{prefix}`` is a cluster hash tag, so one Lua script may touch them all):

- ``{prefix}:stream``      the records, oldest first (fields ``seq``, ``id``, ``hash``, ``data``)
- ``{prefix}:head``        hash ``seq``/``hash`` of the newest record (catches removals at the end)
- ``{prefix}:ids``         record id -> stream id, for :meth:`RedisAuditLog.get` and dedup
- ``{prefix}:checkpoint``  hash ``seq``/``hash`` of the last pruned record

Redis Lua has no SHA-256, so the client seals the record against the head it knows
and a Lua script appends only if the head is still that one (compare-and-set); on a
conflict the script returns the current head and the client re-seals. Replicas thus
never fork the chain, and a single appender needs one round trip per record.
Retention trims a prefix with ``XTRIM MINID`` inside a script that moves the
checkpoint in the same step.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.commands.core import Script

from sarsteer_guard.audit.base import (
    AuditLog,
    RecordFilter,
    StoredEntry,
    VerifyReport,
    is_expired,
    parse_record,
    verify_entries,
)
from sarsteer_guard.audit.record import GENESIS_HASH, AuditDraft, AuditRecord, seal, utcnow
from sarsteer_guard.errors import AuditError, StoreUnavailableError

_TRIM_THROUGH = """
local function trim_through(last_id)
  local gone = redis.call('XRANGE', KEYS[1], '-', last_id)
  if #gone == 0 then return 0 end
  local ids = {}
  local last_seq, last_hash
  for _, entry in ipairs(gone) do
    local f = entry[2]
    for i = 1, #f, 2 do
      if f[i] == 'id' then ids[#ids + 1] = f[i + 1]
      elseif f[i] == 'seq' then last_seq = f[i + 1]
      elseif f[i] == 'hash' then last_hash = f[i + 1] end
    end
  end
  for i = 1, #ids, 500 do
    redis.call('HDEL', KEYS[3], unpack(ids, i, math.min(i + 499, #ids)))
  end
  redis.call('HSET', KEYS[4], 'seq', last_seq, 'hash', last_hash)
  local ms, s = string.match(last_id, '^(%d+)-(%d+)$')
  redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. tostring(tonumber(s) + 1))
  return #gone
end
"""

# KEYS: stream head ids checkpoint
# ARGV: expected_head_seq id seq hash data max_len
_APPEND = (
    _TRIM_THROUGH
    + """
local existing = redis.call('HGET', KEYS[3], ARGV[2])
if existing then return {'dup', existing} end
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash')
local head_seq = tonumber(head[1]) or 0
if head_seq ~= tonumber(ARGV[1]) then
  return {'conflict', tostring(head_seq), head[2] or ''}
end
local sid = redis.call('XADD', KEYS[1], '*', 'seq', ARGV[3], 'id', ARGV[2],
                       'hash', ARGV[4], 'data', ARGV[5])
redis.call('HSET', KEYS[2], 'seq', ARGV[3], 'hash', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[2], sid)
local max_len = tonumber(ARGV[6])
if max_len > 0 then
  local len = redis.call('XLEN', KEYS[1])
  local slack = math.min(1000, math.max(1, math.floor(max_len / 100)))
  if len >= max_len + slack then
    local over = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', len - max_len)
    trim_through(over[#over][1])
  end
end
return {'ok', sid}
"""
)

# KEYS: stream head ids checkpoint; ARGV: last stream id to prune, its seq
_PRUNE = (
    _TRIM_THROUGH
    + """
local cp = tonumber(redis.call('HGET', KEYS[4], 'seq')) or 0
if cp >= tonumber(ARGV[2]) then return 0 end
return trim_through(ARGV[1])
"""
)

_PAGE = 500
_OWN_QUERY = {"prefix", "max_len", "max_age_days"}


def _down(url: str, error: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"audit Redis at {url} is unreachable ({type(error).__name__}: {error}); "
        "records are spooled if a spool is configured; check that Redis is running"
    )


class RedisAuditLog(AuditLog):
    """Audit log in a Redis Stream.

    Args:
        url: ``redis://`` / ``rediss://`` / ``unix://`` URL (password from the URL,
            which callers should take from the environment, never from code).
        prefix: key prefix, so several deployments can share one Redis.
        max_len: keep at most about this many records (trimmed in batches of ~1%).
        max_age: :meth:`prune` also removes records older than this.
        client: an existing client to use instead of creating one from ``url``.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sarsteer:audit",
        max_len: int | None = None,
        max_age: timedelta | None = None,
        client: redis.Redis | None = None,
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_len = max_len
        self.max_age = max_age
        self.socket_timeout_s = socket_timeout_s
        tag = f"{{{prefix}}}"
        self.keys = [f"{tag}:stream", f"{tag}:head", f"{tag}:ids", f"{tag}:checkpoint"]
        self._client = client
        self._owns_client = client is None
        self._append_script: Script | None = None
        self._prune_script: Script | None = None
        self._head: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> RedisAuditLog:
        """Build from a URL whose query may carry ``prefix``, ``max_len``, ``max_age_days``."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_QUERY}
        rest = urlencode([(k, v) for k, v in query if k not in _OWN_QUERY])
        try:
            max_len = int(own["max_len"]) if own.get("max_len") else None
            days = float(own["max_age_days"]) if own.get("max_age_days") else None
        except ValueError as error:
            raise AuditError(
                f"bad audit store URL option ({error}); max_len is an integer, "
                "max_age_days a number"
            ) from error
        return cls(
            urlunsplit(parts._replace(query=rest)),
            prefix=own.get("prefix") or "sarsteer:audit",
            max_len=max_len,
            max_age=timedelta(days=days) if days is not None else None,
        )

    def __repr__(self) -> str:
        return f"RedisAuditLog(prefix={self.prefix!r})"

    @property
    def safe_url(self) -> str:
        """The URL without credentials or query, for messages and logs."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def _redis(self) -> redis.Redis:
        if self._closed:
            raise AuditError(f"{self!r} is closed; open a new audit log")
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=self.socket_timeout_s,
                socket_connect_timeout=self.socket_timeout_s,
            )
        return self._client

    def _scripts(self) -> tuple[Script, Script]:
        if self._append_script is None or self._prune_script is None:
            client = self._redis()
            self._append_script = client.register_script(_APPEND)
            self._prune_script = client.register_script(_PRUNE)
        return self._append_script, self._prune_script

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self._head = None  # Redis may come back with another state
            raise _down(self.safe_url, error) from error
        except redis.RedisError as error:
            raise AuditError(f"audit Redis failed to {what} ({error})") from error

    def _read_point(self, key: str) -> tuple[int, str] | None:
        values = self._call("read chain state", self._redis().hmget, key, ["seq", "hash"])
        if values[0] is None or values[1] is None:
            return None
        return int(values[0]), str(values[1])

    # -- contract ----------------------------------------------------------------------
    def append(self, draft: AuditDraft) -> AuditRecord:
        """Seal against the known head and compare-and-set it in Redis; retry on conflict."""
        with self._lock:
            client = self._redis()
            script = self._scripts()[0]
            if self._head is None:
                self._head = self._read_point(self.keys[1]) or (0, GENESIS_HASH)
            for _ in range(10_000):
                head_seq, head_hash = self._head
                record, text = seal(draft, seq=head_seq + 1, prev_hash=head_hash)
                reply = self._call(
                    "append a record",
                    script,
                    keys=self.keys,
                    args=[head_seq, record.id, record.seq, record.hash, text, self.max_len or 0],
                    client=client,
                )
                status = reply[0]
                if status == "ok":
                    self._head = (record.seq, record.hash)
                    return record
                if status == "dup":
                    found = self._entry(str(reply[1]))
                    if found is None:
                        raise AuditError(
                            f"record {draft.id} is indexed but missing from the stream; "
                            "run 'sarsteer-guard audit verify'"
                        )
                    return found
                self._head = (int(reply[1]), str(reply[2]) or GENESIS_HASH)
        raise AuditError("audit append kept conflicting with other writers; retry")

    def _entry(self, stream_id: str) -> AuditRecord | None:
        rows = self._call("read a record", self._redis().xrange, self.keys[0], stream_id, stream_id)
        if not rows:
            return None
        sid, fields = rows[0]
        return parse_record(fields["data"], where=f"stream id {sid}")

    def _scan(self) -> Iterator[tuple[str, dict[str, str]]]:
        start = "-"
        while True:
            rows = cast(
                list[tuple[str, dict[str, str]]],
                self._call(
                    "read records", self._redis().xrange, self.keys[0], start, "+", count=_PAGE
                ),
            )
            yield from rows
            if len(rows) < _PAGE:
                return
            start = "(" + rows[-1][0]

    def iter(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        policy: str | None = None,
        session: str | None = None,
        rule: str | None = None,
        refused: bool | None = None,
    ) -> Iterator[AuditRecord]:
        """Scan the stream in pages and filter client-side (compliance reads are rare)."""
        flt = RecordFilter(since, until, policy, session, rule, refused)
        for sid, fields in self._scan():
            record = parse_record(fields.get("data", ""), where=f"stream id {sid}")
            if flt.matches(record):
                yield record

    def get(self, record_id: str) -> AuditRecord | None:
        """Look the stream id up in the index, then read that one entry."""
        sid = self._call("read the index", self._redis().hget, self.keys[2], record_id)
        return None if sid is None else self._entry(str(sid))

    def verify(self) -> VerifyReport:
        """Verify the stream; retried once if a concurrent prune moved the checkpoint."""
        report = self._verify_once()
        if not report.ok:
            checkpoint = self._read_point(self.keys[3]) or (0, GENESIS_HASH)
            if checkpoint[0] != report.checkpoint_seq:
                report = self._verify_once()
        return report

    def _verify_once(self) -> VerifyReport:
        checkpoint = self._read_point(self.keys[3]) or (0, GENESIS_HASH)
        head = self._read_point(self.keys[1])
        entries = (
            StoredEntry(fields.get("data", ""), f"stream id {sid}") for sid, fields in self._scan()
        )
        return verify_entries(entries, checkpoint=checkpoint, head=head)

    def prune(self, now: datetime | None = None) -> int:
        """Trim the expired prefix (by ``retention_until`` or ``max_age``) with ``MINID``."""
        now = now or utcnow()
        client = self._redis()
        script = self._scripts()[1]
        total = 0
        while True:
            last: tuple[str, str] | None = None
            scanned = 0
            done = False
            for sid, fields in self._scan():
                scanned += 1
                if not is_expired(json.loads(fields.get("data", "{}")), now, self.max_age):
                    done = True
                    break
                last = (sid, fields["seq"])
                if scanned >= 5000:
                    break
            if last is None:
                return total
            total += int(
                self._call(
                    "prune records",
                    script,
                    keys=self.keys,
                    args=[last[0], last[1]],
                    client=client,
                )
            )
            if done or scanned < 5000:
                return total

    def close(self) -> None:
        """Close the connection pool if this log created it; idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.close()
