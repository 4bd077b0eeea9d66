"""Audit log in a Redis Stream, shared by every guard replica.

Keys (``{prefix}`` is a cluster hash tag, so one Lua script may touch them all):

- ``{prefix}:stream``      the records, oldest first (fields ``seq``, ``id``, ``hash``, ``data``)
- ``{prefix}:head``        the store marker (``format``, ``version``, ``store_id``,
  ``created_at``) and the head (``seq``, ``hash``, ``expiry``): deleting it, or the
  whole database, leaves no audit log rather than an empty one
- ``{prefix}:ids``         record id -> stream id, for :meth:`RedisAuditLog.get` and dedup
- ``{prefix}:checkpoint``  the checkpoint (``json``, its ``digest``, ``seq``, ``hash``)
- ``{prefix}:audio``       kept audio beside the chain: record id -> JSON (format, expiry,
  base64 data), written before its record; ``{prefix}:audio-expiry`` (sorted set, Unix
  time) finds what :meth:`RedisAuditLog.prune_audio` deletes
  (see :mod:`sarsteer_guard.audit.audio`)

Redis Lua has no SHA-256, so the client seals the record against the head it knows
and a Lua script appends only if the head is still that one and the store is still
the one the client opened (compare-and-set); on a conflict the script returns the
current head and the client re-seals. Replicas thus never fork the chain, and a
single appender needs one round trip per record. Pruning and ``max_len`` trimming
remove a prefix with ``XTRIM MINID`` inside a script that installs a checkpoint the
client built (and MACed) in the same step, if no other pruner moved it meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.commands.core import Script

from sarsteer_guard.audit.audio import KeptAudio, inline_audio, split_audio
from sarsteer_guard.audit.base import (
    AuditLog,
    AuditStoreMissingError,
    RecordFilter,
    StoredEntry,
    VerifyReport,
    is_expired,
    parse_record,
)
from sarsteer_guard.audit.chain import (
    NO_RECORDS,
    ChainHead,
    StoreMarker,
    json_object,
    later,
    seal,
    stored_expiry,
)
from sarsteer_guard.audit.checkpoint import Checkpoint, Reason, new_checkpoint
from sarsteer_guard.audit.keys import AuditKeys
from sarsteer_guard.audit.record import (
    GENESIS_HASH,
    AuditDraft,
    AuditRecord,
    format_time,
    parse_time,
    utcnow,
)
from sarsteer_guard.audit.sqlite_log import KeySource
from sarsteer_guard.audit.verify import ChainState, VerifyOptions, verify_chain
from sarsteer_guard.errors import AuditError, StoreUnavailableError

# KEYS: head; ARGV: store_id created_at format version
_INIT = """
if redis.call('HEXISTS', KEYS[1], 'store_id') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'store_id', ARGV[1], 'created_at', ARGV[2],
           'format', ARGV[3], 'version', ARGV[4])
if redis.call('HEXISTS', KEYS[1], 'seq') == 0 then
  redis.call('HSET', KEYS[1], 'seq', 0, 'hash', ARGV[5], 'expiry', '')
end
return 1
"""

# KEYS: stream head ids; ARGV: expected_head_seq id seq hash data store_id expiry
_APPEND = """
local existing = redis.call('HGET', KEYS[3], ARGV[2])
if existing then return {'dup', existing} end
local head = redis.call('HMGET', KEYS[2], 'seq', 'hash', 'store_id', 'expiry')
if head[3] ~= ARGV[6] then return {'store', head[3] or ''} end
local head_seq = tonumber(head[1]) or 0
if head_seq ~= tonumber(ARGV[1]) then
  return {'conflict', tostring(head_seq), head[2] or '', head[4] or ''}
end
local sid = redis.call('XADD', KEYS[1], '*', 'seq', ARGV[3], 'id', ARGV[2],
                       'hash', ARGV[4], 'data', ARGV[5])
redis.call('HSET', KEYS[2], 'seq', ARGV[3], 'hash', ARGV[4], 'expiry', ARGV[7])
redis.call('HSET', KEYS[3], ARGV[2], sid)
return {'ok', sid, redis.call('XLEN', KEYS[1])}
"""

# KEYS: stream head ids checkpoint
# ARGV: last stream id to remove, its seq, digest of the checkpoint expected now,
#       new checkpoint json, its digest, its seq, its hash
_PRUNE = """
local current = redis.call('HGET', KEYS[4], 'digest') or ''
if current ~= ARGV[3] then return {'conflict', 0} end
local last = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #last == 0 then return {'conflict', 0} end
local gone = redis.call('XRANGE', KEYS[1], '-', ARGV[1])
local ids = {}
for _, entry in ipairs(gone) do
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'id' then ids[#ids + 1] = f[i + 1] end
  end
end
for i = 1, #ids, 500 do
  redis.call('HDEL', KEYS[3], unpack(ids, i, math.min(i + 499, #ids)))
end
redis.call('DEL', KEYS[4])
redis.call('HSET', KEYS[4], 'json', ARGV[4], 'digest', ARGV[5], 'seq', ARGV[6], 'hash', ARGV[7])
local ms, s = string.match(ARGV[1], '^(%d+)-(%d+)$')
redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. tostring(tonumber(s) + 1))
return {'ok', #gone}
"""

_PAGE = 500
_OWN_QUERY = {"prefix", "max_len", "max_age_days", "audio_max_age_days"}
#: Incremental reads (``after_seq`` close to the head) walk back from the end instead of
#: scanning the whole stream, when at most this many records are newer.
_TAIL_LIMIT = 5000


def _down(url: str, error: Exception) -> StoreUnavailableError:
    return StoreUnavailableError(
        f"audit Redis at {url} is unreachable ({type(error).__name__}: {error}); "
        "records are spooled if a spool is configured; check that Redis is running"
    )


def _expired_entry(
    fields: dict[str, str], now: datetime, max_age: timedelta | None
) -> tuple[int, str] | None:
    """(seq, hash) of a stream entry whose record has expired; None otherwise or unreadable."""
    try:
        data = json.loads(fields.get("data", ""))
        if isinstance(data, dict) and is_expired(data, now, max_age):
            return int(data["seq"]), str(data["hash"])
    except (ValueError, KeyError, TypeError):
        pass
    return None


def _digest(checkpoint: Checkpoint) -> str:
    return hashlib.sha256(checkpoint.to_json().encode("utf-8")).hexdigest()


class RedisAuditLog(AuditLog):
    """Audit log in a Redis Stream.

    Args:
        url: ``redis://`` / ``rediss://`` / ``unix://`` URL (password from the URL,
            which callers should take from the environment, never from code).
        prefix: key prefix, so several deployments can share one Redis.
        max_len: keep at most about this many records (trimmed in batches of ~1%).
        max_age: :meth:`prune` also removes records older than this.
        client: an existing client to use instead of creating one from ``url``.
        create: True for writers; False for readers, which raise
            :class:`AuditStoreMissingError` when no log exists under ``prefix``.
        keys: checkpoint MAC keys; ``"env"`` reads ``SARSTEER_AUDIT_KEY`` on first use.
        audio_max_age: how long kept audio stays when a draft does not say.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sarsteer:audit",
        max_len: int | None = None,
        max_age: timedelta | None = None,
        audio_max_age: timedelta | None = None,
        client: redis.Redis | None = None,
        socket_timeout_s: float = 5.0,
        create: bool = True,
        keys: KeySource = "env",
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.max_len = max_len
        self.max_age = max_age
        self.audio_max_age = audio_max_age
        self.socket_timeout_s = socket_timeout_s
        self.create = create
        tag = f"{{{prefix}}}"
        self.keys = [f"{tag}:stream", f"{tag}:head", f"{tag}:ids", f"{tag}:checkpoint"]
        self.audio_keys = (f"{tag}:audio", f"{tag}:audio-expiry")
        self._key_source = keys
        self._client = client
        self._owns_client = client is None
        self._loaded_scripts: dict[str, Script] = {}
        self._head: ChainHead | None = None
        self._marker: StoreMarker | None = None
        self._opened = False
        self._lock = threading.RLock()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> RedisAuditLog:
        """Build from a URL whose query may carry ``prefix``, ``max_len``, ``max_age_days``."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_QUERY}
        rest = urlencode([(k, v) for k, v in query if k not in _OWN_QUERY])
        try:
            max_len = int(own["max_len"]) if own.get("max_len") else None
            days = float(own["max_age_days"]) if own.get("max_age_days") else None
            audio_days = float(own["audio_max_age_days"]) if own.get("audio_max_age_days") else None
        except ValueError as error:
            raise AuditError(
                f"bad audit store URL option ({error}); max_len is an integer, "
                "max_age_days and audio_max_age_days numbers"
            ) from error
        return cls(
            urlunsplit(parts._replace(query=rest)),
            prefix=own.get("prefix") or "sarsteer:audit",
            max_len=max_len,
            max_age=timedelta(days=days) if days is not None else None,
            audio_max_age=timedelta(days=audio_days) if audio_days is not None else None,
            create=create,
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

    def _script(self, name: str) -> Script:
        if name not in self._loaded_scripts:
            source = {"init": _INIT, "append": _APPEND, "prune": _PRUNE}[name]
            self._loaded_scripts[name] = self._redis().register_script(source)
        return self._loaded_scripts[name]

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self._head = None  # Redis may come back with another state
            raise _down(self.safe_url, error) from error
        except redis.RedisError as error:
            raise AuditError(f"audit Redis failed to {what} ({error})") from error

    def mac_keys(self) -> AuditKeys | None:
        """The checkpoint MAC keys (read from the environment on first use)."""
        source = self._key_source
        if isinstance(source, str):
            source = self._key_source = AuditKeys.from_env()
        return source

    # -- opening -----------------------------------------------------------------------
    def open(self) -> None:
        """Connect; create the store marker (writers) or check the log exists (readers)."""
        with self._lock:
            if self._opened:
                return
            client = self._redis()
            fields = self._call("read the log head", client.hgetall, self.keys[1])
            if not fields.get("store_id"):
                if self.create:
                    self._init_store(fields)
                    fields = self._call("read the log head", client.hgetall, self.keys[1])
                elif not fields and not self._call("check the log", client.exists, self.keys[0]):
                    raise AuditStoreMissingError(
                        f"no audit log at {self.safe_url} under prefix {self.prefix!r} (no "
                        f"{self.keys[1]} key): check the URL and prefix; if the log existed, "
                        "it was deleted: restore it from a backup"
                    )
            self._marker = StoreMarker.from_fields(fields)
            self._opened = True

    def _init_store(self, head_fields: dict[str, str]) -> None:
        """Write the marker of a new store, or add it (and the head's expiry) to an old one."""
        marker = StoreMarker.new()
        client = self._redis()
        if head_fields.get("seq") and "expiry" not in head_fields:
            expiry = NO_RECORDS
            for _, fields in self._scan():
                expiry = later(expiry, stored_expiry(json_object(fields.get("data")), self.max_age))
            self._call("migrate the head", client.hsetnx, self.keys[1], "expiry", expiry)
        old = self._call("read the checkpoint", client.hgetall, self.keys[3])
        if old.get("seq") and old.get("hash") and "json" not in old:
            legacy = Checkpoint.legacy(int(old["seq"]), old["hash"])
            mapping = {"json": legacy.to_json(), "digest": _digest(legacy)}
            self._call("migrate the checkpoint", client.hset, self.keys[3], mapping=mapping)
        args = [marker.store_id, marker.created_at, marker.format, marker.version, GENESIS_HASH]
        self._call(
            "create the log", self._script("init"), keys=[self.keys[1]], args=args, client=client
        )

    def _read_head(self) -> ChainHead:
        values = self._call(
            "read chain state", self._redis().hmget, self.keys[1], ["seq", "hash", "expiry"]
        )
        if values[0] is None or values[1] is None:
            return ChainHead()
        return ChainHead(int(values[0]), str(values[1]), str(values[2] or NO_RECORDS))

    # -- contract ----------------------------------------------------------------------
    def append(self, draft: AuditDraft) -> AuditRecord:
        """Seal against the known head and compare-and-set it in Redis; retry on conflict."""
        with self._lock:
            self.open()
            client = self._redis()
            draft, kept = split_audio(draft, self.audio_max_age)
            if kept is not None:
                self._put_audio(kept)
            script = self._script("append")
            store_id = "" if self._marker is None else self._marker.store_id
            if self._head is None:
                self._head = self._read_head()
            for _ in range(10_000):
                record, text, new = seal(draft, self._head, max_age=self.max_age)
                args = [
                    self._head.seq,
                    record.id,
                    record.seq,
                    record.hash,
                    text,
                    store_id,
                    new.expiry,
                ]
                reply = self._call(
                    "append a record", script, keys=self.keys[:3], args=args, client=client
                )
                status = reply[0]
                if status == "ok":
                    self._head = new
                    self._trim_if_long(int(reply[2]))
                    return record
                if status == "dup":
                    return self._duplicate(draft.id, str(reply[1]))
                if status == "store":
                    raise AuditError(
                        f"the audit log at {self.safe_url} prefix {self.prefix!r} was deleted or "
                        f"replaced while in use (store id {store_id or '-'}, now "
                        f"{reply[1] or 'none'}); records are kept in the spool: restore it "
                        "from a backup, or restart the guard to start a new log"
                    )
                self._head = ChainHead(int(reply[1]), str(reply[2]) or GENESIS_HASH, str(reply[3]))
        raise AuditError("audit append kept conflicting with other writers; retry")

    def _duplicate(self, record_id: str, stream_id: str) -> AuditRecord:
        found = self._entry(stream_id)
        if found is None or found.id != record_id:
            raise AuditError(
                f"record {record_id} is indexed but not stored under that id; "
                "run 'sarsteer-guard audit verify'"
            )
        return found

    def _entry(self, stream_id: str) -> AuditRecord | None:
        rows = self._call("read a record", self._redis().xrange, self.keys[0], stream_id, stream_id)
        if not rows:
            return None
        sid, fields = rows[0]
        return parse_record(fields.get("data", ""), where=f"stream id {sid}")

    def _scan(self, count: int | None = None) -> Iterator[tuple[str, dict[str, str]]]:
        start = "-"
        seen = 0
        while True:
            page = _PAGE if count is None else min(_PAGE, count - seen)
            rows = cast(
                list[tuple[str, dict[str, str]]],
                self._call(
                    "read records", self._redis().xrange, self.keys[0], start, "+", count=page
                ),
            )
            yield from rows
            seen += len(rows)
            if len(rows) < page or (count is not None and seen >= count):
                return
            start = "(" + rows[-1][0]

    def _iter(self, where: RecordFilter) -> Iterator[AuditRecord]:
        """Scan the stream in pages and filter on the hashed content (reads are rare).

        With ``after_seq`` near the head (a reader catching up), only the newest entries
        are read, walking back from the end.
        """
        self.open()
        rows: Iterable[tuple[str, dict[str, str]]] = self._scan()
        if where.after_seq is not None:
            newer = self._read_head().seq - where.after_seq
            if newer <= 0:
                return
            if newer <= _TAIL_LIMIT:
                rows = self._tail(where.after_seq, newer)
        for sid, fields in rows:
            record = parse_record(fields.get("data", ""), where=f"stream id {sid}")
            if where.matches(record):
                yield record

    def _tail(self, after_seq: int, expected: int) -> list[tuple[str, dict[str, str]]]:
        """Entries whose stored seq is above ``after_seq``, in stream order (read backwards).

        ``expected`` (how many the head says are newer) sizes the first read, so catching
        up on a few records transfers a few entries, not a page.
        """
        found: list[tuple[str, dict[str, str]]] = []
        end = "+"
        count = min(_PAGE, expected + 1)
        while True:
            page = cast(
                list[tuple[str, dict[str, str]]],
                self._call(
                    "read records", self._redis().xrevrange, self.keys[0], end, "-", count=count
                ),
            )
            for sid, fields in page:
                try:
                    seq = int(fields.get("seq", ""))
                except ValueError:
                    seq = after_seq + 1  # unreadable: let the parser report it
                if seq <= after_seq:
                    return found[::-1]
                found.append((sid, fields))
            if len(page) < count:
                return found[::-1]
            end = "(" + page[-1][0]
            count = _PAGE

    def get(self, record_id: str) -> AuditRecord | None:
        """Look the stream id up in the index, then read that one entry."""
        self.open()
        sid = self._call("read the index", self._redis().hget, self.keys[2], record_id)
        found = None if sid is None else self._entry(str(sid))
        if found is not None and found.id != record_id:
            raise AuditError(
                f"the id index points {record_id} at record {found.id}: the store was edited; "
                "run 'sarsteer-guard audit verify'"
            )
        return found

    def _state(self) -> ChainState:
        client = self._redis()
        fields = self._call("read the log head", client.hgetall, self.keys[1])
        marker = StoreMarker.from_fields(fields)
        head = None
        if fields.get("seq") is not None and fields.get("hash") is not None:
            head = ChainHead(int(fields["seq"]), fields["hash"], fields.get("expiry", NO_RECORDS))
        try:
            checkpoint = self._checkpoint(marker)
        except AuditError as error:
            return ChainState(marker, head, None, damage=str(error))
        return ChainState(marker, head, checkpoint)

    def _checkpoint(self, marker: StoreMarker | None) -> Checkpoint | None:
        fields = self._call("read the checkpoint", self._redis().hgetall, self.keys[3])
        if fields.get("json"):
            try:
                return Checkpoint.model_validate_json(fields["json"])
            except ValueError as error:
                raise AuditError(
                    f"the checkpoint is unreadable ({error.__class__.__name__})"
                ) from None
        if marker is None and fields.get("seq") and fields.get("hash"):
            return Checkpoint.legacy(int(fields["seq"]), fields["hash"])
        return None

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyReport:
        """Verify the stream; retried once if a concurrent prune moved the checkpoint."""
        self.open()
        report = self._verify_once(anchor)
        if not report.ok:
            checkpoint = self._state().checkpoint
            if (0 if checkpoint is None else checkpoint.seq) != report.checkpoint_seq:
                report = self._verify_once(anchor)
        return report

    def _verify_once(self, anchor: tuple[int, str] | None) -> VerifyReport:
        state = self._state()
        entries = (
            StoredEntry(
                fields.get("data", ""),
                f"stream id {sid}",
                {k: fields.get(k) for k in ("seq", "id", "hash")},
            )
            for sid, fields in self._scan()
        )
        options = VerifyOptions(keys=self.mac_keys(), max_len=self.max_len, anchor=anchor)
        return verify_chain(entries, state, options)

    # -- removing a prefix --------------------------------------------------------------
    def _remove_through(
        self, last: tuple[str, int, str], removed: int, reason: Reason, now: datetime
    ) -> int:
        """Install a checkpoint for stream entry ``last`` (id, seq, hash) and trim up to it.

        Returns how many entries went (0 when another pruner moved the checkpoint first).
        """
        client = self._redis()
        raw = self._call("read the checkpoint", client.hgetall, self.keys[3])
        previous = self._checkpoint(self._marker)
        sid, seq, digest = last
        checkpoint = new_checkpoint(
            seq=seq,
            digest=digest,
            removed=removed,
            reason=reason,
            now=now,
            previous=previous,
            store_id=None if self._marker is None else self._marker.store_id,
            max_age=self.max_age,
            max_len=self.max_len,
            keys=self.mac_keys(),
        )
        args = [
            sid,
            seq,
            raw.get("digest", ""),
            checkpoint.to_json(),
            _digest(checkpoint),
            seq,
            digest,
        ]
        reply = self._call(
            "prune records", self._script("prune"), keys=self.keys, args=args, client=client
        )
        return int(reply[1]) if reply[0] == "ok" else 0

    def _trim_if_long(self, length: int) -> None:
        """Trim to ``max_len`` once the stream is ~1% over it (a checkpoint per trim)."""
        if not self.max_len:
            return
        slack = min(1000, max(1, self.max_len // 100))
        if length < self.max_len + slack:
            return
        over = list(self._scan(count=length - self.max_len))
        if over:
            sid, fields = over[-1]
            self._remove_through(
                (sid, int(fields["seq"]), fields["hash"]), len(over), "max_len", utcnow()
            )

    def prune(self, now: datetime | None = None) -> int:
        """Trim the expired prefix (by ``retention_until`` or ``max_age``) with ``MINID``."""
        now = now or utcnow()
        self.open()
        total = 0
        while True:
            last: tuple[str, int, str] | None = None
            scanned = 0
            done = False
            for sid, fields in self._scan():
                scanned += 1
                expired = _expired_entry(fields, now, self.max_age)
                if expired is None:
                    done = True
                    break
                last = (sid, *expired)
                if scanned >= 5000:
                    break
            if last is None:
                return total
            with self._lock:
                removed = self._remove_through(last, scanned - int(done), "retention", now)
            total += removed
            if done or scanned < 5000 or not removed:
                return total

    # -- kept audio ----------------------------------------------------------------------
    def _put_audio(self, kept: KeptAudio) -> None:
        expires = kept.expires or utcnow()
        value = json.dumps(
            {
                "format": kept.format,
                "expires": format_time(expires),
                "data": base64.b64encode(kept.data).decode("ascii"),
            }
        )
        pipe = self._redis().pipeline(transaction=True)
        pipe.hset(self.audio_keys[0], kept.record_id, value)
        pipe.zadd(self.audio_keys[1], {kept.record_id: expires.timestamp()})
        self._call("store kept audio", pipe.execute)

    def get_audio(self, record_id: str) -> KeptAudio | None:
        """The audio kept beside the chain for this record, else audio inline in it."""
        self.open()
        raw = self._call("read kept audio", self._redis().hget, self.audio_keys[0], record_id)
        if raw is not None:
            try:
                data = json.loads(raw)
                return KeptAudio(
                    record_id,
                    data["format"],
                    base64.b64decode(data["data"]),
                    parse_time(data["expires"]),
                )
            except (ValueError, KeyError, TypeError) as error:
                raise AuditError(
                    f"the kept audio of record {record_id} is unreadable ({error}); it is "
                    "outside the chain, so the record itself is unaffected"
                ) from error
        record = self.get(record_id)
        return None if record is None else inline_audio(record)

    def audio_due(self, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """Kept audio past its retention at ``now``, oldest expiry first."""
        self.open()
        limit = (now or utcnow()).timestamp()
        rows = self._call(
            "read audio expiries",
            self._redis().zrangebyscore,
            self.audio_keys[1],
            "-inf",
            limit,
            withscores=True,
        )
        return [(str(rid), datetime.fromtimestamp(float(ts), UTC)) for rid, ts in rows]

    def prune_audio(self, now: datetime | None = None) -> int:
        """Delete kept audio past its retention (records and the chain stay as they are)."""
        due = [rid for rid, _ in self.audio_due(now)]
        for start in range(0, len(due), _PAGE):
            batch = due[start : start + _PAGE]
            pipe = self._redis().pipeline(transaction=True)
            pipe.hdel(self.audio_keys[0], *batch)
            pipe.zrem(self.audio_keys[1], *batch)
            self._call("delete expired audio", pipe.execute)
        return len(due)

    def close(self) -> None:
        """Close the connection pool if this log created it; idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            client.close()
