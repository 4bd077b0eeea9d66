"""Per-session conversation history in Redis, so any replica answers any turn of a session.

Same interface and budgets as :class:`~sarsteer_guard.guard.conversation.ConversationStore`
(``history``, ``append``, ``forget``, ``len``): at most ``max_exchanges`` exchanges and
``max_tokens`` estimated tokens per session, dropped oldest first as whole exchanges, and
a session idle for ``idle_expiry_s`` is gone (the key's TTL, refreshed on every append).
``max_sessions`` is not enforced here: the TTL bounds how many sessions live, and Redis's
own ``maxmemory`` bounds the bytes.

One key per session, ``<prefix><session_id>``, a list of exchanges oldest first. Each
element is a JSON header line (``tokens``, ``rate``, ``reply``) then the user audio as
little-endian int16 (history is for context: int16 keeps it exact enough and half the
size of float32). Appends from several replicas are serialised with WATCH/MULTI: the
trim decision is made on the list the transaction saw, so no exchange is lost or kept
beyond the budget by a race.

History is context, not a safety control: when Redis cannot be reached a turn goes on
without it (``history`` returns nothing, ``append`` drops the exchange), logged as
``history.redis_unavailable``, rather than failing the call. The steering and the policy
do not depend on it. Calls block for at most ``socket_timeout_s`` (default 1 s).
"""

from __future__ import annotations

import json
from typing import Any, cast

import numpy as np
import redis
from redis.exceptions import RedisError, WatchError

from sarsteer_guard.errors import one_line
from sarsteer_guard.guard.conversation import ConversationStore, Exchange, estimate_tokens
from sarsteer_guard.guard.events import HistoryItem
from sarsteer_guard.log import get_logger

log = get_logger(__name__)

DEFAULT_PREFIX = "sarsteer:history:"
_WATCH_RETRIES = 16


def encode_exchange(exchange: Exchange) -> bytes:
    """One list element: a JSON header line, then the user's audio as int16."""
    audio = exchange.user.audio
    samples = np.zeros(0, np.float32) if audio is None else np.asarray(audio, np.float32)
    header = {
        "tokens": exchange.tokens,
        "rate": exchange.user.sample_rate,
        "reply": exchange.assistant.text,
    }
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return json.dumps(header, ensure_ascii=False).encode() + b"\n" + pcm


def _header(blob: bytes) -> dict[str, Any]:
    line, _, _ = blob.partition(b"\n")
    header: dict[str, Any] = json.loads(line)
    return header


def decode_exchange(blob: bytes) -> Exchange:
    """The inverse of :func:`encode_exchange` (audio back as float32)."""
    line, _, pcm = blob.partition(b"\n")
    header = json.loads(line)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767.0
    return Exchange(
        HistoryItem(role="user", audio=audio, sample_rate=int(header["rate"])),
        HistoryItem(role="assistant", text=str(header["reply"])),
    )


class RedisConversationStore(ConversationStore):
    """Conversation histories shared by every replica through one Redis.

    A drop-in for the in-memory store (``guard.conversations``): every public method is
    overridden; only the budgets are inherited.
    """

    def __init__(
        self,
        url: str,
        *,
        max_exchanges: int = 8,
        max_tokens: int = 2048,
        max_sessions: int = 10_000,
        idle_expiry_s: float = 3600.0,
        prefix: str = DEFAULT_PREFIX,
        socket_timeout_s: float = 1.0,
    ) -> None:
        super().__init__(
            max_exchanges=max_exchanges,
            max_tokens=max_tokens,
            max_sessions=max_sessions,  # not enforced in Redis (see the module doc)
            idle_expiry_s=idle_expiry_s,
        )
        self.prefix = prefix
        self._redis: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}{session_id}"

    def history(self, session_id: str) -> list[HistoryItem]:
        """The session's retained exchanges, oldest first, as alternating items."""
        try:
            blobs = cast(list[bytes], self._redis.lrange(self._key(session_id), 0, -1))
        except RedisError as error:
            log.warning("history.redis_unavailable", op="history", error=one_line(error))
            return []
        items: list[HistoryItem] = []
        for blob in blobs:
            exchange = decode_exchange(blob)
            items.extend((exchange.user, exchange.assistant))
        return items

    def append(self, session_id: str, user_audio: np.ndarray, rate: int, reply: str) -> None:
        """Record a served exchange and trim the session to its budgets (atomically)."""
        if self.max_exchanges == 0:
            return
        exchange = Exchange(
            HistoryItem(role="user", audio=user_audio, sample_rate=rate),
            HistoryItem(role="assistant", text=reply),
        )
        try:
            self._append(self._key(session_id), encode_exchange(exchange), exchange.tokens)
        except RedisError as error:
            log.warning("history.redis_unavailable", op="append", error=one_line(error))

    def _append(self, key: str, blob: bytes, tokens_new: int) -> None:
        ttl_ms = max(1, int(self.idle_expiry_s * 1000))
        with self._redis.pipeline() as pipe:
            for _ in range(_WATCH_RETRIES):
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    held = cast(list[bytes], pipe.lrange(key, 0, -1))
                    tokens = [int(_header(b)["tokens"]) for b in held]
                    drop = self._to_drop([*tokens, tokens_new])
                    pipe.multi()
                    pipe.rpush(key, blob)
                    if drop:
                        pipe.ltrim(key, drop, -1)
                    pipe.pexpire(key, ttl_ms)
                    pipe.execute()
                    return
                except WatchError:
                    continue
        raise RedisError(f"{key} kept changing under {_WATCH_RETRIES} appends: exchange dropped")

    def _to_drop(self, tokens: list[int]) -> int:
        """How many oldest exchanges to drop so count and token budgets hold."""
        drop = max(0, len(tokens) - self.max_exchanges)
        while drop < len(tokens) and sum(tokens[drop:]) > self.max_tokens:
            drop += 1
        return drop

    def forget(self, session_id: str) -> None:
        """Drop a session's history (call end, user request) on every replica at once."""
        try:
            self._redis.delete(self._key(session_id))
        except RedisError as error:  # the TTL still ends it
            log.warning("history.redis_unavailable", op="forget", error=one_line(error))

    def __len__(self) -> int:
        return sum(1 for _ in self._redis.scan_iter(match=f"{self.prefix}*", count=500))

    def close(self) -> None:
        """Release the connection pool."""
        self._redis.close()


def redis_history(url: str, like: ConversationStore) -> RedisConversationStore:
    """A Redis store at ``url`` with the budgets of ``like`` (the guard's own store)."""
    return RedisConversationStore(
        url,
        max_exchanges=like.max_exchanges,
        max_tokens=like.max_tokens,
        max_sessions=like.max_sessions,
        idle_expiry_s=like.idle_expiry_s,
    )


__all__ = [
    "RedisConversationStore",
    "decode_exchange",
    "encode_exchange",
    "estimate_tokens",
    "redis_history",
]
