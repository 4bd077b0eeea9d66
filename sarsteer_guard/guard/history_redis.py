"""Per-session conversation history in Redis, so any replica answers any turn of a session.

Same interface and budgets as :class:`~sarsteer_guard.guard.conversation.ConversationStore`
(``history``, ``append``, ``forget``, ``len``): per session at most ``max_exchanges``
exchanges, ``max_tokens`` estimated tokens and ``min(max_session_bytes, max_bytes)`` bytes
(counted as the in-memory store counts them), dropped oldest first as whole exchanges; a
session idle for ``idle_expiry_s`` is gone (the keys' TTL, refreshed on every append); and
across sessions at most ``max_sessions`` live, least recently used evicted first, so the
server-wide bytes are bounded by ``max_sessions * max_session_bytes`` (plus Redis's own
``maxmemory`` with ``allkeys-lru``: docs/realtime.md, "Fleet").

Keys, for a session ``s``: ``<prefix>x:<s>``, a list of exchanges oldest first (a JSON
header line, then the user audio as little-endian int16: exact enough for context and half
the size of float32); ``<prefix>m:<s>``, a parallel list of ``"<tokens> <bytes>"`` so an
append reads a few bytes per exchange, never the audio; and ``<prefix>sessions``, a sorted
set of session ids by last use. Appends from several replicas are serialised with
WATCH/MULTI on the size list: the trim decision is made on the list the transaction saw.

History is context, not a safety control: when Redis cannot be reached a turn goes on
without it (``history`` returns nothing, ``append`` drops the exchange), logged as
``history.redis_unavailable``; an element that does not decode (foreign or corrupt) is
skipped and logged as ``history.bad_element``, and the next append trims it away. Calls
block for at most ``socket_timeout_s`` (default 1 s), so :attr:`blocking` tells the guard
to call them off its event loop.
"""

from __future__ import annotations

import json
import time
from typing import TypedDict, cast

import numpy as np
import redis
from redis.exceptions import RedisError, WatchError

from sarsteer_guard.errors import one_line
from sarsteer_guard.guard.conversation import (
    ConversationStore,
    Exchange,
    estimate_tokens,
    exchange_bytes,
)
from sarsteer_guard.guard.events import HistoryItem
from sarsteer_guard.log import get_logger

log = get_logger(__name__)

DEFAULT_PREFIX = "sarsteer:history:"
_WATCH_RETRIES = 16
#: What a stored element or size entry can raise when it is not ours (or is corrupt).
_BAD_ELEMENT = (ValueError, KeyError, TypeError)


class ExchangeHeader(TypedDict):
    """The JSON line in front of an exchange's audio."""

    tokens: int
    rate: int
    reply: str


def encode_exchange(exchange: Exchange) -> bytes:
    """One list element: a JSON header line, then the user's audio as int16."""
    audio = exchange.user.audio
    samples = np.zeros(0, np.float32) if audio is None else np.asarray(audio, np.float32)
    header: ExchangeHeader = {
        "tokens": exchange.tokens,
        "rate": exchange.user.sample_rate,
        "reply": exchange.assistant.text,
    }
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return json.dumps(header, ensure_ascii=False).encode() + b"\n" + pcm


def _header(line: bytes) -> ExchangeHeader:
    raw = json.loads(line)
    return {"tokens": int(raw["tokens"]), "rate": int(raw["rate"]), "reply": str(raw["reply"])}


def decode_exchange(blob: bytes) -> Exchange:
    """The inverse of :func:`encode_exchange` (audio back as float32).

    Raises:
        ValueError, KeyError, TypeError: the element is not one this module wrote.
    """
    line, _, pcm = blob.partition(b"\n")
    header = _header(line)
    if header["rate"] <= 0 or len(pcm) % 2:
        raise ValueError("not an exchange: bad rate or odd audio length")
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767.0
    return Exchange(
        HistoryItem(role="user", audio=audio, sample_rate=header["rate"]),
        HistoryItem(role="assistant", text=header["reply"]),
    )


def _size(entry: bytes) -> tuple[int, int]:
    tokens, size = entry.split()
    return int(tokens), int(size)


class RedisConversationStore(ConversationStore):
    """Conversation histories shared by every replica through one Redis.

    A drop-in for the in-memory store (``Guard(history=url)``): every public method is
    overridden; only the budgets are inherited.
    """

    #: Calls do network I/O: the guard runs them in a worker thread.
    blocking = True

    def __init__(
        self,
        url: str,
        *,
        max_exchanges: int = 8,
        max_tokens: int = 2048,
        max_sessions: int = 10_000,
        idle_expiry_s: float = 3600.0,
        max_session_bytes: int = 8 * 1024 * 1024,
        max_bytes: int = 256 * 1024 * 1024,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(
            max_exchanges=max_exchanges,
            max_tokens=max_tokens,
            max_sessions=max_sessions,
            idle_expiry_s=idle_expiry_s,
            max_session_bytes=max_session_bytes,
            max_bytes=max_bytes,
        )
        self.prefix = prefix
        self._sessions_key = f"{prefix}sessions"
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )

    def _keys(self, session_id: str) -> tuple[str, str]:
        return f"{self.prefix}x:{session_id}", f"{self.prefix}m:{session_id}"

    def history(self, session_id: str) -> list[HistoryItem]:
        """The session's retained exchanges, oldest first, as alternating items."""
        try:
            blobs = cast(list[bytes], self._redis.lrange(self._keys(session_id)[0], 0, -1))
        except RedisError as error:
            log.warning("history.redis_unavailable", op="history", error=one_line(error))
            return []
        items: list[HistoryItem] = []
        for blob in blobs:
            try:
                exchange = decode_exchange(blob)
            except _BAD_ELEMENT as error:  # skipped; the next append trims it away
                log.warning("history.bad_element", session_id=session_id, error=one_line(error))
                continue
            items.extend((exchange.user, exchange.assistant))
        return items

    def append(self, session_id: str, user_audio: np.ndarray, rate: int, reply: str) -> None:
        """Record a served exchange and trim the session and the store to their budgets."""
        if self.max_exchanges == 0:
            return
        exchange = Exchange(
            HistoryItem(role="user", audio=user_audio, sample_rate=rate),
            HistoryItem(role="assistant", text=reply),
        )
        try:
            self._append(session_id, exchange)
            self._evict_sessions()
        except RedisError as error:
            log.warning("history.redis_unavailable", op="append", error=one_line(error))

    def _append(self, session_id: str, exchange: Exchange) -> None:
        blobs, sizes = self._keys(session_id)
        blob, size = encode_exchange(exchange), (exchange.tokens, exchange_bytes(exchange))
        ttl_ms = max(1, int(self.idle_expiry_s * 1000))
        with self._redis.pipeline() as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    pipe.watch(sizes)  # type: ignore[no-untyped-call]
                    held = cast(list[bytes], pipe.lrange(sizes, 0, -1))
                    drop = self._to_drop([*self._held_sizes(session_id, held), size])
                    pipe.multi()
                    pipe.rpush(blobs, blob)
                    pipe.rpush(sizes, f"{size[0]} {size[1]}")
                    for key in (blobs, sizes):
                        if drop:
                            pipe.ltrim(key, drop, -1)
                        pipe.pexpire(key, ttl_ms)
                    pipe.zadd(self._sessions_key, {session_id: time.time()})
                    pipe.execute()
                    return
                except WatchError:
                    continue
        raise RedisError(f"{blobs} kept changing under {_WATCH_RETRIES} appends: dropped")

    def _held_sizes(self, session_id: str, held: list[bytes]) -> list[tuple[int, int]]:
        """The held exchanges' sizes; one that does not parse makes every held one oversize."""
        try:
            return [_size(entry) for entry in held]
        except _BAD_ELEMENT as error:
            log.warning("history.bad_element", session_id=session_id, error=one_line(error))
            huge = self.max_tokens + 1
            return [(huge, 0)] * len(held)

    def _to_drop(self, sizes: list[tuple[int, int]]) -> int:
        """How many oldest exchanges to drop so the count, token and byte budgets hold."""
        limit = min(self.max_session_bytes, self.max_bytes)
        drop = max(0, len(sizes) - self.max_exchanges)
        while drop < len(sizes) and (
            sum(t for t, _ in sizes[drop:]) > self.max_tokens
            or sum(b for _, b in sizes[drop:]) > limit
        ):
            drop += 1
        return drop

    def _evict_sessions(self) -> None:
        """Forget expired entries, then the least recently used sessions beyond the cap."""
        cutoff = time.time() - self.idle_expiry_s
        self._redis.zremrangebyscore(self._sessions_key, "-inf", cutoff)
        excess = int(self._redis.zcard(self._sessions_key)) - self.max_sessions
        if excess <= 0:
            return
        evicted = cast(list[tuple[bytes, float]], self._redis.zpopmin(self._sessions_key, excess))
        keys = [key for sid, _ in evicted for key in self._keys(sid.decode(errors="replace"))]
        if keys:
            self._redis.delete(*keys)

    def forget(self, session_id: str) -> None:
        """Drop a session's history (call end, user request) on every replica at once."""
        try:
            with self._redis.pipeline() as pipe:
                pipe.delete(*self._keys(session_id))
                pipe.zrem(self._sessions_key, session_id)
                pipe.execute()
        except RedisError as error:  # the TTL still ends it
            log.warning("history.redis_unavailable", op="forget", error=one_line(error))

    def __len__(self) -> int:
        """Sessions live now (a bounded sorted-set count, not a key scan); 0 if unreachable."""
        try:
            cutoff = time.time() - self.idle_expiry_s
            return int(self._redis.zcount(self._sessions_key, f"({cutoff}", "+inf"))
        except RedisError as error:
            log.warning("history.redis_unavailable", op="len", error=one_line(error))
            return 0

    def close(self) -> None:
        """Release the connection pool."""
        self._redis.close()


def redis_history(url: str, like: ConversationStore) -> RedisConversationStore:
    """A Redis store at ``url`` with every budget of ``like`` (the guard's own store)."""
    return RedisConversationStore(
        url,
        max_exchanges=like.max_exchanges,
        max_tokens=like.max_tokens,
        max_sessions=like.max_sessions,
        idle_expiry_s=like.idle_expiry_s,
        max_session_bytes=like.max_session_bytes,
        max_bytes=like.max_bytes,
    )


__all__ = [
    "ExchangeHeader",
    "RedisConversationStore",
    "decode_exchange",
    "encode_exchange",
    "estimate_tokens",
    "redis_history",
]
