"""Production vector store: Redis shared by every guard replica.

Keys, under a configurable prefix (default ``sarsteer:vectors:``)::

    <prefix>set:<id>     signed envelope (see ``signing``)
    <prefix>index        hash id -> JSON VectorSetInfo, so ``list`` never fetches blobs
    <prefix>lock:<id>    redis-py Lock (token-checked release) for get_or_create

The URL may be ``redis://``, ``rediss://`` (TLS) or ``unix://``; a ``prefix`` query
parameter sets the prefix (``redis://host/0?prefix=tenant-a:vectors:``). The password
comes from the URL or ``SARSTEER_REDIS_PASSWORD``. Signing needs
``SARSTEER_VECTOR_KEY``, identical on every replica: there is no file fallback, because
a per-host key would make each replica reject the others' sets.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.exceptions import AuthenticationError, LockError, RedisError, ResponseError
from redis.lock import Lock

from sarsteer_guard.errors import StoreUnavailableError
from sarsteer_guard.log import get_logger
from sarsteer_guard.store.base import BaseVectorStore, CreationLock, VectorSetInfo
from sarsteer_guard.store.errors import SigningKeyError
from sarsteer_guard.store.keys import is_set_id
from sarsteer_guard.store.signing import ENV_KEY, SigningKeys

log = get_logger("sarsteer_guard.store.redis")

ENV_PASSWORD = "SARSTEER_REDIS_PASSWORD"  # noqa: S105 - the variable name, not a secret
DEFAULT_PREFIX = "sarsteer:vectors:"


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _split_prefix(url: str) -> tuple[str, str | None]:
    """Remove the ``prefix`` query parameter (redis-py would reject it) and return it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), None)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _RedisLock(CreationLock):
    """redis-py Lock wrapper: renewed by the heartbeat, released only by its owner."""

    expires = True

    def __init__(self, lock: Lock, set_id: str) -> None:
        self._lock = lock
        self._set_id = set_id
        self._held = True

    def refresh(self) -> bool:
        try:
            self._lock.reacquire()
        except LockError:
            return False
        return True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            self._lock.release()
        except LockError:
            # Expired and maybe taken by another replica: the token check left it alone.
            log.warning("vector_lock_expired_before_release", set_id=self._set_id)
        except RedisError as error:
            # The lock expires on its own; raising here would hide create()'s result.
            log.warning("vector_lock_release_failed", set_id=self._set_id, error=str(error))


class RedisVectorStore(BaseVectorStore):
    """Vector sets in Redis; connects on first use, ``close()`` is idempotent.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL (password allowed in it).
        prefix: Key prefix; default the URL's ``prefix`` parameter, else
            ``sarsteer:vectors:``.
        keys: Signing keys; default from ``SARSTEER_VECTOR_KEY`` (required).
        socket_timeout_s: Per-command timeout, so a hung server fails a turn quickly.
        connect_timeout_s: TCP/TLS connect timeout.
        password: Overrides ``SARSTEER_REDIS_PASSWORD``; a URL password wins over both.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        keys: SigningKeys | None = None,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        password: str | None = None,
    ) -> None:
        self._url, url_prefix = _split_prefix(url)
        self.prefix = prefix if prefix is not None else (url_prefix or DEFAULT_PREFIX)
        self._given_keys = keys
        self._keys: SigningKeys | None = None
        self._socket_timeout = socket_timeout_s
        self._connect_timeout = connect_timeout_s
        self._password = password
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The connection URL with the password redacted."""
        return redact_url(self._url)

    def describe(self) -> str:
        """Where the store lives (no secrets)."""
        return f"Redis store {self.url} (prefix {self.prefix!r})"

    def open(self) -> redis.Redis:
        """Create the client (connections are made on the first command); idempotent."""
        with self._lock:
            if self._client is None:
                password = self._password or os.environ.get(ENV_PASSWORD) or None
                kwargs: dict[str, Any] = {
                    "socket_timeout": self._socket_timeout,
                    "socket_connect_timeout": self._connect_timeout,
                    "client_name": "sarsteer-guard",
                    "health_check_interval": 30,
                }
                if password is not None:
                    kwargs["password"] = password
                try:
                    self._client = redis.Redis.from_url(self._url, **kwargs)
                except ValueError as error:
                    raise StoreUnavailableError(
                        f"bad Redis URL {self.url} ({error}): use redis://host:port/db, "
                        "rediss://... or unix:///path/to/socket"
                    ) from None
            return self._client

    def close(self) -> None:
        """Close the connection pool; safe to call twice (a later call reconnects)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                client.close()

    @contextlib.contextmanager
    def _io(self) -> Iterator[redis.Redis]:
        """Map redis-py failures to one-line ``StoreUnavailableError``s."""
        client = self.open()
        try:
            yield client
        except AuthenticationError:
            raise StoreUnavailableError(
                f"Redis at {self.url} rejected the credentials: put the password in the URL "
                f"or set {ENV_PASSWORD}"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise StoreUnavailableError(
                f"Redis at {self.url} is unreachable ({reason}): start it or set "
                "SARSTEER_STORE_URL (or --store) to a reachable server"
            ) from None
        except ResponseError as error:
            text = str(error).splitlines()[0]
            if text.startswith(("NOAUTH", "WRONGPASS")):
                raise StoreUnavailableError(
                    f"Redis at {self.url} needs a password ({text}): put it in the URL or "
                    f"set {ENV_PASSWORD}"
                ) from None
            raise StoreUnavailableError(
                f"Redis at {self.url} failed a command ({text}): check the server's logs"
            ) from None
        except RedisError as error:
            raise StoreUnavailableError(
                f"Redis at {self.url} failed ({error}): check the server and the URL"
            ) from None

    def _signing_keys(self) -> SigningKeys:
        with self._lock:
            if self._keys is None:
                keys = self._given_keys or SigningKeys.from_env()
                if keys is None:
                    raise SigningKeyError(
                        f"the Redis vector store needs {ENV_KEY}, the same on every replica: "
                        "generate one with `python -c 'import secrets; "
                        f"print(secrets.token_hex(32))'` and export {ENV_KEY}=<that hex>"
                    )
                self._keys = keys
            return self._keys

    def _set_key(self, set_id: str) -> str:
        return f"{self.prefix}set:{set_id}"

    def _read(self, set_id: str) -> bytes | None:
        with self._io() as client:
            value = client.get(self._set_key(set_id))
        if value is None or isinstance(value, bytes):
            return value
        raise StoreUnavailableError(
            f"Redis at {self.url} returned text, not bytes: remove decode_responses from the URL"
        )

    def _write(self, set_id: str, envelope: bytes, info: VectorSetInfo) -> None:
        with self._io() as client:
            pipe = client.pipeline(transaction=True)
            pipe.set(self._set_key(set_id), envelope)
            pipe.hset(f"{self.prefix}index", set_id, json.dumps(info.to_dict()))
            pipe.execute()

    def _remove(self, set_id: str) -> bool:
        with self._io() as client:
            pipe = client.pipeline(transaction=True)
            pipe.delete(self._set_key(set_id))
            pipe.hdel(f"{self.prefix}index", set_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def _ids(self) -> builtins.list[str]:
        start = len(self._set_key(""))
        with self._io() as client:
            names = [
                (name if isinstance(name, str) else name.decode("utf-8", "replace"))[start:]
                for name in client.scan_iter(match=_glob_escape(self._set_key("")) + "*", count=500)
            ]
        return [name for name in names if is_set_id(name)]

    def _infos(self) -> builtins.list[VectorSetInfo]:
        with self._io() as client:
            entries = client.hgetall(f"{self.prefix}index")
        infos = []
        for raw_id, raw in entries.items():
            try:
                infos.append(VectorSetInfo(**json.loads(raw)))
            except (TypeError, ValueError) as error:
                log.warning("vector_index_entry_unreadable", set_id=str(raw_id), error=str(error))
        return infos

    def _try_lock(self, set_id: str, lock_timeout_s: float) -> CreationLock | None:
        with self._io() as client:
            lock = Lock(
                client,
                f"{self.prefix}lock:{set_id}",
                timeout=lock_timeout_s,
                blocking=False,
                # The heartbeat thread renews the lock, so its token must not be per-thread.
                thread_local=False,
            )
            if not lock.acquire(blocking=False):
                return None
        return _RedisLock(lock, set_id)
