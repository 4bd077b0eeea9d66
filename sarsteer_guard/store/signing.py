"""HMAC-SHA256 envelopes for stored vector sets.

Steering vectors are a safety control: whoever can swap them can switch refusals off.
Every stored set is therefore wrapped in an envelope signed with a secret key, and
nothing is handed to the Guard unless the signature verifies.

Envelope (version 1), all integers unsigned::

    b"SSGVSIG1"          8 bytes  magic + format version
    key id length n      1 byte
    key id               n bytes  ASCII hex, names the key that signed (for rotation)
    tag                  32 bytes HMAC-SHA256(key, DOMAIN || set id || 0x00 || blob)
    blob                 rest     the safetensors bytes, unchanged

The tag binds the set id, so a validly signed envelope copied under another id does
not verify. The key id is a public fingerprint of the key (a hash), never the key.

Keys come from the environment only:

- ``SARSTEER_VECTOR_KEY``: the signing key, at least 32 bytes, written as hex
  (``python -c 'import secrets; print(secrets.token_hex(32))'``) or as base64
  (standard or URL-safe, padding optional). A value made only of hex digits is read
  as hex.
- ``SARSTEER_VECTOR_KEY_PREVIOUS``: optional, verify-only; sets signed before a
  rotation keep verifying until they are re-pushed.

Without ``SARSTEER_VECTOR_KEY`` the directory store generates a key file inside the
store (see :func:`load_or_create_key_file`); the Redis store refuses to start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sarsteer_guard.errors import VectorIntegrityError
from sarsteer_guard.store.errors import SigningKeyError

ENV_KEY = "SARSTEER_VECTOR_KEY"
ENV_KEY_PREVIOUS = "SARSTEER_VECTOR_KEY_PREVIOUS"
MAGIC = b"SSGVSIG1"
TAG_SIZE = 32
MIN_KEY_BYTES = 32
_DOMAIN = b"sarsteer-guard/vector-set/v1\x00"
_HEX = re.compile(r"[0-9a-fA-F]+")
_FIX = "re-push the set from a trusted file or check SARSTEER_VECTOR_KEY"


@dataclass(frozen=True)
class SigningKey:
    """One HMAC key and its public id (a fingerprint, safe to store and log)."""

    secret: bytes = field(repr=False)
    source: str = "memory"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise SigningKeyError(
                f"signing key from {self.source} is {len(self.secret)} bytes, need "
                f"{MIN_KEY_BYTES}+: generate one with "
                "`python -c 'import secrets; print(secrets.token_hex(32))'` and set "
                f"{ENV_KEY} to it"
            )

    @property
    def key_id(self) -> str:
        """16 hex digits of sha256 over the key: tells keys apart without revealing them."""
        return hashlib.sha256(b"sarsteer-guard/key-id\x00" + self.secret).hexdigest()[:16]

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random 256-bit key (tests, and the directory store's key file)."""
        return cls(secrets.token_bytes(32), source="generated")


def decode_key(text: str, *, source: str) -> SigningKey:
    """Decode a key written as hex or base64 (hex wins when both readings are possible).

    Raises:
        SigningKeyError: The text is neither encoding or decodes to fewer than 32 bytes.
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
        raise SigningKeyError(
            f"{source} is neither hex nor base64: set it to the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        ) from None
    return SigningKey(secret, source=source)


@dataclass(frozen=True)
class SigningKeys:
    """The key that signs new envelopes plus older keys still accepted for verification."""

    current: SigningKey
    previous: tuple[SigningKey, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SigningKeys | None:
        """Keys from ``SARSTEER_VECTOR_KEY`` (+ ``_PREVIOUS``), or None when it is unset."""
        env = os.environ if environ is None else environ
        value = env.get(ENV_KEY, "").strip()
        if not value:
            return None
        current = decode_key(value, source=ENV_KEY)
        old = env.get(ENV_KEY_PREVIOUS, "").strip()
        previous = (decode_key(old, source=ENV_KEY_PREVIOUS),) if old else ()
        return cls(current, previous)

    def _by_id(self, key_id: str) -> SigningKey | None:
        for key in (self.current, *self.previous):
            if key.key_id == key_id:
                return key
        return None

    def sign(self, set_id: str, blob: bytes) -> bytes:
        """Wrap ``blob`` in an envelope signed with the current key for ``set_id``."""
        kid = self.current.key_id.encode("ascii")
        return b"".join((MAGIC, bytes([len(kid)]), kid, _tag(self.current, set_id, blob), blob))

    def verify(self, set_id: str, envelope: bytes) -> bytes:
        """Return the blob inside ``envelope`` if its signature verifies for ``set_id``.

        Raises:
            VectorIntegrityError: Unsigned, truncated, tampered, signed for another id,
                or signed with a key that is not configured.
        """
        return self.unwrap(set_id, envelope)[0]

    def unwrap(self, set_id: str, envelope: bytes) -> tuple[bytes, SigningKey]:
        """Like :meth:`verify`, also returning the key that signed (to spot stale keys)."""
        key_id, tag, blob = split_envelope(set_id, envelope)
        key = self._by_id(key_id)
        if key is None:
            raise VectorIntegrityError(
                f"vector set {set_id} was signed with key {key_id!r}, which is neither "
                f"{ENV_KEY} nor {ENV_KEY_PREVIOUS} here: configure that key or re-push the "
                "set from a trusted file"
            )
        if not hmac.compare_digest(tag, _tag(key, set_id, blob)):
            raise VectorIntegrityError(f"vector set {set_id} failed its signature check: {_FIX}")
        return blob, key


def split_envelope(set_id: str, envelope: bytes) -> tuple[str, bytes, bytes]:
    """Split an envelope into (key id, tag, blob) without verifying anything.

    Raises:
        VectorIntegrityError: The bytes are not an envelope or are cut short.
    """
    if not envelope.startswith(MAGIC):
        raise VectorIntegrityError(f"vector set {set_id} is not signed: {_FIX}")
    pos = len(MAGIC)
    if len(envelope) < pos + 1 or len(envelope) < pos + 1 + envelope[pos] + TAG_SIZE:
        raise VectorIntegrityError(f"vector set {set_id} is truncated: {_FIX}")
    kid_end = pos + 1 + envelope[pos]
    key_id = envelope[pos + 1 : kid_end].decode("ascii", errors="replace")
    return key_id, envelope[kid_end : kid_end + TAG_SIZE], envelope[kid_end + TAG_SIZE :]


def _tag(key: SigningKey, set_id: str, blob: bytes) -> bytes:
    mac = hmac.new(key.secret, _DOMAIN, hashlib.sha256)
    mac.update(set_id.encode("ascii") + b"\x00")
    mac.update(blob)
    return mac.digest()


def load_or_create_key_file(path: Path) -> SigningKey:
    """Load the directory store's key file, creating it (mode 0600) on first use.

    Used only when ``SARSTEER_VECTOR_KEY`` is unset, so a fresh machine works with no
    setup while stored sets still cannot be altered unnoticed by anyone who cannot read
    the file. Like ssh, a key file readable or writable by other users is refused.

    Raises:
        SigningKeyError: The file has loose permissions, another owner, or bad content.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        _create_key_file(path)
        st = path.stat()
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SigningKeyError(
            f"key file {path} must be a regular file owned by you with mode 0600: "
            f"run `chmod 600 {path}` or set {ENV_KEY}"
        )
    return decode_key(path.read_text(encoding="ascii"), source=str(path))


def _create_key_file(path: Path) -> None:
    # Write a temporary file, then hard-link it into place: link fails if another
    # process won the race, and nobody ever reads a half-written key.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
