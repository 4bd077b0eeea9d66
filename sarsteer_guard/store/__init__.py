"""Signed storage of steering-vector sets: a local directory or a shared Redis.

Stores handle safetensors bytes only and never import torch, so policy tooling, the
CLI and audit services use them without the model stack. Every set is HMAC-signed
(see :mod:`sarsteer_guard.store.signing`) and verified on every read.

Typical use::

    store = CachedVectorStore(open_store(url), decode=SteeringVectors.from_bytes)
    blob = store.get_or_create(key, calibrate)   # one calibration across all replicas

Configuration (environment only; no secrets in code or files):

- ``SARSTEER_STORE_URL``: store used when no URL is passed.
- ``SARSTEER_STORE``: directory for the default embedded store
  (``~/.cache/sarsteer-guard/vectors`` otherwise).
- ``SARSTEER_VECTOR_KEY`` / ``SARSTEER_VECTOR_KEY_PREVIOUS``: signing keys.
- ``SARSTEER_REDIS_PASSWORD``: Redis password when it is not in the URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sarsteer_guard.errors import StoreUnavailableError
from sarsteer_guard.store.base import (
    BaseVectorStore,
    CreationLock,
    VectorSetInfo,
    VectorStore,
)
from sarsteer_guard.store.cache import CachedVectorStore
from sarsteer_guard.store.directory import DirectoryVectorStore, default_store_path
from sarsteer_guard.store.errors import CreationWaitTimeout, SigningKeyError, VectorSetNotFound
from sarsteer_guard.store.keys import VectorSetKey, parse_header
from sarsteer_guard.store.redis_store import RedisVectorStore
from sarsteer_guard.store.signing import SigningKey, SigningKeys

ENV_STORE_URL = "SARSTEER_STORE_URL"
_REDIS_SCHEMES = ("redis", "rediss", "unix")

__all__ = [
    "BaseVectorStore",
    "CachedVectorStore",
    "CreationLock",
    "CreationWaitTimeout",
    "DirectoryVectorStore",
    "RedisVectorStore",
    "SigningKey",
    "SigningKeyError",
    "SigningKeys",
    "VectorSetInfo",
    "VectorSetKey",
    "VectorSetNotFound",
    "VectorStore",
    "default_store_path",
    "open_store",
    "parse_header",
]


def open_store(url: str | None = None, *, keys: SigningKeys | None = None) -> BaseVectorStore:
    """Choose a backend from a URL; nothing is connected or created until first use.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` for Redis; a path or
            ``file://`` URL for a directory; None for ``$SARSTEER_STORE_URL`` or, when
            that is unset, the default directory.
        keys: Signing keys; default from the environment (see ``signing``).

    Raises:
        StoreUnavailableError: The URL's scheme is not a supported store.
    """
    if url is None or not url.strip():
        url = os.environ.get(ENV_STORE_URL, "").strip() or None
    if url is None:
        return DirectoryVectorStore(default_store_path(), keys=keys)
    scheme = urlsplit(url).scheme.lower()
    if scheme in _REDIS_SCHEMES:
        return RedisVectorStore(url, keys=keys)
    if scheme == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise StoreUnavailableError(
                f"store URL {url} names host {parts.netloc!r}: use file:///absolute/path"
            )
        return DirectoryVectorStore(Path(unquote(parts.path)), keys=keys)
    if scheme and len(scheme) > 1:  # one letter is a Windows drive, i.e. a path
        raise StoreUnavailableError(
            f"unsupported store URL {url}: use redis://, rediss://, unix:// or a directory path"
        )
    return DirectoryVectorStore(Path(url), keys=keys)
