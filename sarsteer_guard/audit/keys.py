"""The audit key: HMAC-SHA256 over checkpoints, so retention cannot be faked by deletion.

Pruning removes the oldest records and leaves a checkpoint saying where the chain
now starts. Anybody who can write the store could delete records and write such a
checkpoint, so the pruner MACs each checkpoint with a secret only the guard's
operators hold, and ``audit verify`` checks the MAC.

- ``SARSTEER_AUDIT_KEY``: at least 32 bytes, hex or base64
  (``python -c 'import secrets; print(secrets.token_hex(32))'``). Give the same key to
  every process that prunes (guards, ``audit prune``) and to whoever runs
  ``audit verify``.
- ``SARSTEER_AUDIT_KEY_PREVIOUS``: optional, verify-only, for rotation.

Without a key, checkpoints are written unauthenticated and ``verify`` falls back to
the hashed retention evidence in the chain itself (see :mod:`sarsteer_guard.audit.verify`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from sarsteer_guard.errors import AuditError

KEY_ENV = "SARSTEER_AUDIT_KEY"
KEY_ENV_PREVIOUS = "SARSTEER_AUDIT_KEY_PREVIOUS"
MIN_KEY_BYTES = 32
_HEX = re.compile(r"[0-9a-fA-F]+")
_HOW = "set it to the output of `python -c 'import secrets; print(secrets.token_hex(32))'`"


@dataclass(frozen=True)
class AuditKey:
    """One HMAC key and its public id (a fingerprint, safe to store and print)."""

    secret: bytes = field(repr=False)
    source: str = "memory"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise AuditError(
                f"{self.source} is {len(self.secret)} bytes, need {MIN_KEY_BYTES}+; {_HOW}"
            )

    @property
    def key_id(self) -> str:
        """16 hex digits of sha256 over the key: tells keys apart without revealing them."""
        return hashlib.sha256(b"sarsteer-guard/audit-key-id\x00" + self.secret).hexdigest()[:16]

    def mac(self, data: bytes) -> str:
        """HMAC-SHA256 of ``data`` as hex."""
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()


def decode_key(text: str, *, source: str) -> AuditKey:
    """Decode a key written as hex or base64 (hex wins when both readings are possible).

    Raises:
        AuditError: neither encoding, or fewer than 32 bytes.
    """
    value = text.strip()
    try:
        if _HEX.fullmatch(value) and len(value) % 2 == 0:
            secret = bytes.fromhex(value)
        else:
            padded = value + "=" * (-len(value) % 4)
            alt = b"-_" if ("-" in value or "_" in value) else None
            secret = base64.b64decode(padded, altchars=alt, validate=True)
    except (ValueError, binascii.Error):
        raise AuditError(f"{source} is neither hex nor base64; {_HOW}") from None
    return AuditKey(secret, source=source)


@dataclass(frozen=True)
class AuditKeys:
    """The key that signs new checkpoints plus older keys still accepted by verify."""

    current: AuditKey
    previous: tuple[AuditKey, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AuditKeys | None:
        """Keys from ``SARSTEER_AUDIT_KEY`` (+ ``_PREVIOUS``), or None when it is unset.

        Raises:
            AuditError: a key is set but unusable.
        """
        env = os.environ if environ is None else environ
        value = env.get(KEY_ENV, "").strip()
        if not value:
            return None
        current = decode_key(value, source=KEY_ENV)
        old = env.get(KEY_ENV_PREVIOUS, "").strip()
        return cls(current, (decode_key(old, source=KEY_ENV_PREVIOUS),) if old else ())

    def by_id(self, key_id: str | None) -> AuditKey | None:
        """The key with this id, if held."""
        for key in (self.current, *self.previous):
            if key.key_id == key_id:
                return key
        return None
