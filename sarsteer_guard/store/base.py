"""The vector-store contract and the logic every backend shares.

Backends only move signed envelopes and take creation locks; signing, verification,
key binding and the calibrate-once protocol of :meth:`BaseVectorStore.get_or_create`
live here, so the directory and Redis stores cannot drift apart on safety.
"""

from __future__ import annotations

import builtins
import hashlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from sarsteer_guard.errors import VectorIntegrityError, VectorsError
from sarsteer_guard.log import get_logger
from sarsteer_guard.store.errors import CreationWaitTimeout, VectorSetNotFound
from sarsteer_guard.store.keys import VectorSetKey, is_set_id, parse_header
from sarsteer_guard.store.signing import SigningKeys, split_envelope

log = get_logger("sarsteer_guard.store")

#: Default time a creator holds the lock without renewing it before others take over.
DEFAULT_LOCK_TIMEOUT_S = 60.0
#: Default time a caller waits for another replica's calibration before giving up.
DEFAULT_WAIT_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class VectorSetInfo:
    """A stored set as listed: read from its header, not verified (``verify`` does that)."""

    id: str
    model_id: str
    model_fingerprint: str
    k: int
    lam: float
    num_layers: int
    hidden_size: int
    created_at: str
    #: Size of the safetensors blob in bytes (the envelope adds ~60).
    size: int
    #: sha256 hex of the safetensors blob, to compare with a local file's ``sha256sum``.
    digest: str
    calibration_digest: str = ""
    #: Public id of the key that signed the envelope (spots sets awaiting re-signing).
    key_id: str = ""

    @classmethod
    def from_blob(cls, set_id: str, blob: bytes, *, key_id: str = "") -> VectorSetInfo:
        """Describe a blob whose header has already been validated."""
        meta = parse_header(blob).metadata
        return cls(
            id=set_id,
            model_id=meta["model_id"],
            model_fingerprint=meta["model_fingerprint"],
            k=int(meta["k"]),
            lam=float(meta["lam"]),
            num_layers=int(meta["num_layers"]),
            hidden_size=int(meta["hidden_size"]),
            created_at=meta["created_at"],
            size=len(blob),
            digest=hashlib.sha256(blob).hexdigest(),
            calibration_digest=meta["calibration_digest"],
            key_id=key_id,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``vectors list --json``, the Redis index)."""
        return asdict(self)


@runtime_checkable
class VectorStore(Protocol):
    """What the Guard and the CLI code against; backends and the cache all satisfy it.

    Sets are addressed by :class:`VectorSetKey` or its ``id`` string; every ``get``
    returns bytes whose signature verified under the configured keys.
    """

    #: Short backend name for metrics labels and messages ("directory", "redis").
    backend: str

    def put(self, blob: bytes) -> VectorSetKey:
        """Store ``blob`` (a safetensors vector set) signed, under the key its header names."""
        ...

    def get(self, key: VectorSetKey | str) -> bytes:
        """Return the verified blob; ``VectorSetNotFound`` or ``VectorIntegrityError``."""
        ...

    def list(self) -> builtins.list[VectorSetInfo]:
        """Describe every stored set (sorted by id)."""
        ...

    def ids(self) -> builtins.list[str]:
        """Every stored set id, including sets whose header no longer parses."""
        ...

    def delete(self, key: VectorSetKey | str) -> bool:
        """Remove a set; False when there was none."""
        ...

    def get_or_create(
        self,
        key: VectorSetKey,
        create: Callable[[], bytes],
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    ) -> bytes:
        """Return the set, calling ``create`` once across all replicas on a miss."""
        ...

    def close(self) -> None:
        """Release connections and handles; idempotent."""
        ...


class CreationLock(ABC):
    """A backend's exclusive right to create one set; released on ``__exit__``."""

    #: Whether the lock expires unless :meth:`refresh` is called (Redis) or is held
    #: until release/process death (file locks).
    expires: bool = False

    def refresh(self) -> bool:
        """Extend the lock's lifetime; False when it was already lost."""
        return True

    @abstractmethod
    def release(self) -> None:
        """Give the lock up; never raises for a lock that was lost meanwhile."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class _Heartbeat:
    """Keeps an expiring lock alive while ``create`` runs.

    A slow calibration is then not mistaken for a dead replica; a dead replica stops
    renewing and its lock expires.
    """

    def __init__(self, lock: CreationLock, interval_s: float, set_id: str) -> None:
        self._lock = lock
        self._interval = interval_s
        self._set_id = set_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        if self._lock.expires:
            self._thread = threading.Thread(
                target=self._run, name=f"vector-lock-{self._set_id[:8]}", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                alive = self._lock.refresh()
            except Exception as error:  # a blip must not kill the heartbeat; retry next tick
                log.warning("vector_lock_refresh_failed", set_id=self._set_id, error=str(error))
                continue
            if not alive:
                log.warning("vector_lock_lost", set_id=self._set_id)
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def set_id_of(key: VectorSetKey | str) -> str:
    """The id for a key or id string, validated so it is safe as a file name or Redis key.

    Raises:
        VectorsError: The string is not a 32-hex-digit set id.
    """
    if isinstance(key, VectorSetKey):
        return key.id
    if not is_set_id(key):
        raise VectorsError(
            f"{key!r} is not a vector set id (32 lowercase hex digits): "
            "see `sarsteer-guard vectors list`"
        )
    return key


class BaseVectorStore(ABC):
    """Shared implementation: backends provide raw envelope I/O, keys and locks."""

    backend = "base"

    # --- backend hooks -------------------------------------------------------------
    @abstractmethod
    def _signing_keys(self) -> SigningKeys:
        """The keys to sign and verify with (resolved lazily: may read env or a file)."""

    @abstractmethod
    def _read(self, set_id: str) -> bytes | None:
        """The stored envelope, or None when absent."""

    @abstractmethod
    def _write(self, set_id: str, envelope: bytes, info: VectorSetInfo) -> None:
        """Store an envelope atomically (readers see the old or the new, never half)."""

    @abstractmethod
    def _remove(self, set_id: str) -> bool:
        """Remove an envelope; False when absent."""

    @abstractmethod
    def _ids(self) -> builtins.list[str]:
        """Ids of every stored envelope, read from the data itself (not an index)."""

    def _infos(self) -> builtins.list[VectorSetInfo]:
        """Describe stored sets by reading each envelope; backends may use an index."""
        infos = []
        for set_id in self._ids():
            envelope = self._read(set_id)
            if envelope is None:
                continue  # deleted while listing
            try:
                key_id, _, blob = split_envelope(set_id, envelope)
                infos.append(VectorSetInfo.from_blob(set_id, blob, key_id=key_id))
            except VectorsError as error:
                log.warning("vector_set_unreadable", set_id=set_id, error=str(error))
        return infos

    @abstractmethod
    def _try_lock(self, set_id: str, lock_timeout_s: float) -> CreationLock | None:
        """Take the creation lock for ``set_id`` without blocking; None if held elsewhere."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store lives, for messages (no secrets)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections and handles; idempotent."""

    # --- the contract ----------------------------------------------------------------
    def check_keys(self) -> None:
        """Resolve the signing keys now, so a key that can never work stops a start.

        Keys are otherwise resolved on first use, i.e. inside the first turn that needs
        vectors, where a missing or malformed ``SARSTEER_VECTOR_KEY`` would only show as
        a fail-closed refusal on every turn. No connection is made.

        Raises:
            SigningKeyError: the key is missing (stores that require one), not hex or
                base64, too short, or the key file is unusable.
        """
        self._signing_keys()

    def put(self, blob: bytes) -> VectorSetKey:
        """Validate, sign and store a blob; overwrites a set with the same key.

        Overwriting is deliberate: re-pushing a trusted file is how a tampered or
        re-signed set is repaired.

        Raises:
            VectorsError: The blob is not a complete float32 vector set.
        """
        blob = bytes(blob)
        key = VectorSetKey.from_blob(blob)
        keys = self._signing_keys()
        envelope = keys.sign(key.id, blob)
        info = VectorSetInfo.from_blob(key.id, blob, key_id=keys.current.key_id)
        self._write(key.id, envelope, info)
        log.info("vector_set_stored", set_id=key.id, backend=self.backend, size=len(blob))
        return key

    def get(self, key: VectorSetKey | str) -> bytes:
        """Return the stored blob after verifying its signature and its key binding.

        Raises:
            VectorSetNotFound: Nothing stored under that id.
            VectorIntegrityError: The stored value is unsigned, truncated or altered.
        """
        set_id = set_id_of(key)
        envelope = self._read(set_id)
        if envelope is None:
            raise VectorSetNotFound(
                f"no vector set {set_id} in {self.describe()}: push it with "
                "`sarsteer-guard vectors push FILE --store URL` or calibrate it"
            )
        blob = self._signing_keys().verify(set_id, envelope)
        try:
            actual = VectorSetKey.from_blob(blob).id
        except VectorsError:
            actual = "unreadable"
        if actual != set_id:
            raise VectorIntegrityError(
                f"vector set {set_id} holds a set whose key is {actual}: "
                "re-push it from a trusted file"
            )
        return blob

    def list(self) -> builtins.list[VectorSetInfo]:
        """Describe every stored set, sorted by id (headers only; not verified)."""
        return sorted(self._infos(), key=lambda info: info.id)

    def ids(self) -> builtins.list[str]:
        """Every stored set id, sorted, including unreadable ones (``verify`` walks these)."""
        return sorted(self._ids())

    def delete(self, key: VectorSetKey | str) -> bool:
        """Remove a set; False when there was none."""
        removed = self._remove(set_id_of(key))
        if removed:
            log.info("vector_set_deleted", set_id=set_id_of(key), backend=self.backend)
        return removed

    def get_or_create(
        self,
        key: VectorSetKey,
        create: Callable[[], bytes],
        *,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
        poll_s: float = 0.05,
    ) -> bytes:
        """Return the set for ``key``; on a miss exactly one caller runs ``create``.

        The first caller takes the backend's creation lock, re-checks the store, runs
        ``create`` and stores its result; everyone else polls until the set appears.
        An expiring lock is renewed every third of ``lock_timeout_s`` while ``create``
        runs, so only a dead creator's lock lapses and lets a waiter take over.
        A stored set that fails verification raises rather than being recalibrated:
        tampering must be noticed, not papered over.

        Args:
            key: The set wanted; ``create`` must return a blob with this key.
            create: Calibrates the set and returns its safetensors bytes.
            lock_timeout_s: Lifetime of an unrenewed lock (how soon a dead creator is
                replaced).
            wait_timeout_s: How long to wait, in total, for another creator.
            poll_s: First polling interval while waiting (backs off to 1 s).

        Raises:
            CreationWaitTimeout: The set did not appear within ``wait_timeout_s``.
            VectorsError: ``create`` returned a set for another key.
        """
        set_id = key.id
        deadline = time.monotonic() + wait_timeout_s
        delay = poll_s
        while True:
            try:
                return self.get(set_id)
            except VectorSetNotFound:
                pass
            lock = self._try_lock(set_id, lock_timeout_s)
            if lock is not None:
                with lock:
                    try:
                        return self.get(set_id)  # finished between our miss and the lock
                    except VectorSetNotFound:
                        pass
                    log.info("vector_set_creating", set_id=set_id, backend=self.backend)
                    with _Heartbeat(lock, max(lock_timeout_s / 3.0, 0.01), set_id):
                        blob = bytes(create())
                    made = VectorSetKey.from_blob(blob)
                    if made.id != set_id:
                        raise VectorsError(
                            f"create() returned vector set {made.id}, expected {set_id}: "
                            "calibrate with the same model, instruction, k and lambda as the key"
                        )
                    self.put(blob)
                    return blob
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CreationWaitTimeout(
                    f"waited {wait_timeout_s:g}s for another replica to create vector set "
                    f"{set_id} in {self.describe()}: check that replica's logs or raise "
                    "wait_timeout_s"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 1.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
