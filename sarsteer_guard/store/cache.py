"""In-process LRU in front of a vector store.

A turn must never pay a Redis round trip (or a signature check) for vectors this
process already holds. The cache keeps verified bytes and, optionally, a decoded
object made by a caller-supplied ``decode`` function, so the Guard can cache tensors
while the store stays free of torch.

Entries are keyed by set id. Ids derive from the calibration inputs, so a set under an
id does not change in normal operation; ``put`` and ``delete`` through this cache
invalidate it, while a change made by another process is seen after eviction or
:meth:`CachedVectorStore.clear`.
"""

from __future__ import annotations

import builtins
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import Counter

from sarsteer_guard.errors import VectorIntegrityError
from sarsteer_guard.store.base import (
    DEFAULT_LOCK_TIMEOUT_S,
    DEFAULT_WAIT_TIMEOUT_S,
    VectorSetInfo,
    VectorStore,
    set_id_of,
)
from sarsteer_guard.store.keys import VectorSetKey

T = TypeVar("T")

CACHE_HITS = Counter(
    "sarsteer_vector_cache_hits_total",
    "Vector-set lookups served from the in-process cache.",
    ["backend"],
)
CACHE_MISSES = Counter(
    "sarsteer_vector_cache_misses_total",
    "Vector-set lookups that went to the backing store.",
    ["backend"],
)
INTEGRITY_FAILURES = Counter(
    "sarsteer_vector_integrity_failures_total",
    "Stored vector sets that failed signature or key verification.",
    ["backend"],
)

_NOT_DECODED = object()


class _Entry:
    __slots__ = ("blob", "decoded")

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.decoded: object = _NOT_DECODED


class CachedVectorStore(Generic[T]):
    """Thread-safe LRU over another :class:`VectorStore`; itself a ``VectorStore``.

    Args:
        inner: The backing store (closed by :meth:`close`).
        max_items: Sets kept; a 7B model's set is ~400 KB, so the default costs ~6 MB.
        decode: Turns verified bytes into the object :meth:`get_decoded` returns
            (e.g. ``SteeringVectors.from_bytes``); decoded once per cached set.

    Attributes:
        hits, misses, integrity_failures: Plain counters (also exported to Prometheus
            with a ``backend`` label).
    """

    def __init__(
        self,
        inner: VectorStore,
        max_items: int = 16,
        *,
        decode: Callable[[bytes], T] | None = None,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.inner = inner
        self.max_items = max_items
        self.backend = inner.backend
        self._decode = decode
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.integrity_failures = 0
        # Bound once: label lookup would otherwise cost more than the cache hit itself.
        self._hit_metric = CACHE_HITS.labels(self.backend)
        self._miss_metric = CACHE_MISSES.labels(self.backend)
        self._integrity_metric = INTEGRITY_FAILURES.labels(self.backend)

    def _lookup(self, set_id: str) -> _Entry | None:
        with self._lock:
            entry = self._entries.get(set_id)
            if entry is not None:
                self._entries.move_to_end(set_id)
                self.hits += 1
            else:
                self.misses += 1
        (self._hit_metric if entry is not None else self._miss_metric).inc()
        return entry

    def _remember(self, set_id: str, blob: bytes) -> _Entry:
        with self._lock:
            entry = self._entries.get(set_id)
            if entry is None or entry.blob != blob:
                entry = _Entry(blob)
                self._entries[set_id] = entry
            self._entries.move_to_end(set_id)
            while len(self._entries) > self.max_items:
                self._entries.popitem(last=False)
            return entry

    def _fetch(self, set_id: str) -> bytes:
        try:
            return self.inner.get(set_id)
        except VectorIntegrityError:
            with self._lock:
                self.integrity_failures += 1
            self._integrity_metric.inc()
            raise

    def _entry(self, key: VectorSetKey | str) -> _Entry:
        set_id = set_id_of(key)
        entry = self._lookup(set_id)
        if entry is None:
            entry = self._remember(set_id, self._fetch(set_id))
        return entry

    def get(self, key: VectorSetKey | str) -> bytes:
        """Verified bytes, from memory when cached."""
        return self._entry(key).blob

    def get_decoded(self, key: VectorSetKey | str) -> T:
        """The decoded object for a set, decoding at most once per cached entry.

        Raises:
            TypeError: The cache was built without ``decode``.
        """
        if self._decode is None:
            raise TypeError("CachedVectorStore was created without decode=")
        entry = self._entry(key)
        decoded = entry.decoded
        if decoded is _NOT_DECODED:
            # Decoding outside the lock: two threads may both decode on a cold entry,
            # which is harmless, and nobody waits behind a slow decode.
            decoded = self._decode(entry.blob)
            entry.decoded = decoded
        return decoded  # type: ignore[return-value]  # only _decode's results are stored

    def put(self, blob: bytes) -> VectorSetKey:
        """Store through to the backend and cache the bytes just written."""
        key = self.inner.put(blob)
        self._remember(key.id, bytes(blob))
        return key

    def list(self) -> builtins.list[VectorSetInfo]:
        """The backend's listing (never cached: it is for operators, not turns)."""
        return self.inner.list()

    def ids(self) -> builtins.list[str]:
        """The backend's ids."""
        return self.inner.ids()

    def delete(self, key: VectorSetKey | str) -> bool:
        """Delete from the backend and forget the cached entry."""
        self.invalidate(key)
        return self.inner.delete(key)

    def invalidate(self, key: VectorSetKey | str) -> None:
        """Forget one cached set."""
        with self._lock:
            self._entries.pop(set_id_of(key), None)

    def clear(self) -> None:
        """Forget every cached set."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get_or_create(
        self,
        key: VectorSetKey,
        create: Callable[[], bytes],
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    ) -> bytes:
        """Cached bytes, else the backend's calibrate-once ``get_or_create``."""
        entry = self._lookup(key.id)
        if entry is not None:
            return entry.blob
        try:
            blob = self.inner.get_or_create(
                key, create, lock_timeout_s=lock_timeout_s, wait_timeout_s=wait_timeout_s
            )
        except VectorIntegrityError:
            with self._lock:
                self.integrity_failures += 1
            self._integrity_metric.inc()
            raise
        self._remember(key.id, blob)
        return blob

    def close(self) -> None:
        """Drop cached sets and close the backend; idempotent."""
        self.clear()
        self.inner.close()
