"""Server settings and bearer tokens.

Secrets come only from the environment or a token file, never from the command line
(visible in ``ps``) or URLs (logged by proxies). Tokens are compared in constant time
over their SHA-256 digests, so neither content nor length leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sarsteer_guard.errors import GuardError
from sarsteer_guard.log import get_logger
from sarsteer_guard.server.protocol import MAX_NEW_TOKENS

log = get_logger(__name__)

#: Environment variable holding the worker token (may run turns, read health and metrics).
WORKER_TOKEN_ENV = "SARSTEER_GUARD_TOKEN"  # noqa: S105 - a variable name, not a secret
#: Environment variable holding the read-only token (health and metrics only).
READ_TOKEN_ENV = "SARSTEER_GUARD_READ_TOKEN"  # noqa: S105 - a variable name
#: Environment variable with web origins allowed to open ``/v1/turns`` (comma-separated).
ALLOWED_ORIGINS_ENV = "SARSTEER_GUARD_ALLOWED_ORIGINS"
#: Shorter tokens are guessable; the error says how to make a good one.
MIN_TOKEN_CHARS = 16
#: Default for ``ServerSettings.max_new_tokens_cap`` (``--max-new-tokens-cap``).
DEFAULT_MAX_NEW_TOKENS_CAP = 512
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}

Role = Literal["worker", "read"]


class ServerConfigError(GuardError):
    """A server setting that cannot work (missing token on a public host, bad token file)."""

    kind = "config"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class TokenSet:
    """Accepted bearer tokens per role, stored as SHA-256 digests."""

    worker: tuple[bytes, ...] = ()
    read: tuple[bytes, ...] = ()

    @classmethod
    def from_tokens(cls, worker: Iterable[str] = (), read: Iterable[str] = ()) -> TokenSet:
        """Build from plain tokens, refusing ones too short to be secret."""
        for token in (*worker, *read):
            if len(token) < MIN_TOKEN_CHARS:
                raise ServerConfigError(
                    f"a token is shorter than {MIN_TOKEN_CHARS} characters: generate one with "
                    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
                )
        return cls(worker=tuple(_digest(t) for t in worker), read=tuple(_digest(t) for t in read))

    @property
    def configured(self) -> bool:
        """True if any token is configured (then metrics need one too)."""
        return bool(self.worker or self.read)

    def role_of(self, token: str | None) -> Role | None:
        """The role a presented token grants, or None; constant time in the token."""
        if token is None:
            return None
        presented = _digest(token)
        worker = False
        read = False
        # Compare against every token, no early exit: timing says nothing about which matched.
        for candidate in self.worker:
            worker |= hmac.compare_digest(presented, candidate)
        for candidate in self.read:
            read |= hmac.compare_digest(presented, candidate)
        if worker:
            return "worker"
        if read:
            return "read"
        return None


def load_tokens(token_file: Path | None, environ: Mapping[str, str] | None = None) -> TokenSet:
    """Tokens from ``token_file`` (if given) plus the environment.

    The file holds ``worker: TOKEN`` / ``read: TOKEN`` lines (several per role allowed,
    for rotation; ``#`` comments) or a JSON object ``{"worker": [...], "read": [...]}``.
    """
    env = os.environ if environ is None else environ
    worker: list[str] = []
    read: list[str] = []
    if env.get(WORKER_TOKEN_ENV, "").strip():
        worker.append(env[WORKER_TOKEN_ENV].strip())
    if env.get(READ_TOKEN_ENV, "").strip():
        read.append(env[READ_TOKEN_ENV].strip())
    if token_file is not None:
        file_worker, file_read = _read_token_file(token_file)
        worker.extend(file_worker)
        read.extend(file_read)
    return TokenSet.from_tokens(worker, read)


def _read_token_file(path: Path) -> tuple[list[str], list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as error:
        raise ServerConfigError(
            f"cannot read token file {path}: {error.strerror}; check --token-file"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("server.token_file_permissions", path=str(path), hint="chmod 600 it")
    roles: dict[str, list[str]] = {"worker": [], "read": []}
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ServerConfigError(
                f"{path}:{error.lineno}: token file is not valid JSON: {error.msg}"
            ) from None
        for role, values in data.items():
            items = [values] if isinstance(values, str) else values
            if role not in roles or not isinstance(items, list):
                raise ServerConfigError(
                    f'{path}: expected {{"worker": [...], "read": [...]}}, got key {role!r}'
                )
            roles[role].extend(str(v).strip() for v in items)
        return roles["worker"], roles["read"]
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        role, sep, token = line.partition(":")
        role = role.strip()
        if not sep or role not in roles or not token.strip():
            raise ServerConfigError(f"{path}:{number}: expected 'worker: TOKEN' or 'read: TOKEN'")
        roles[role].append(token.strip())
    return roles["worker"], roles["read"]


def normalize_origin(value: str) -> str:
    """The canonical form of a web origin (``scheme://host[:port]``), as browsers send it.

    Scheme and host are lowercased and a default port (80 for http, 443 for https) is
    dropped, so ``HTTPS://App.Example:443/`` and ``https://app.example`` compare equal.
    Raises :class:`ServerConfigError` for anything that is not an origin (a path, a
    query, credentials, ``null``, ``*``).
    """
    text = value.strip()
    problem = (
        f"{value!r} is not a web origin: write scheme://host[:port], e.g. "
        "https://console.example.com (no path, no wildcard)"
    )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ServerConfigError(problem) from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if (
        not _SCHEME_RE.match(scheme)
        or not host
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
        or parts.password is not None
        or "*" in host
    ):
        raise ServerConfigError(problem)
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def load_allowed_origins(
    origins: Iterable[str] = (), environ: Mapping[str, str] | None = None
) -> tuple[str, ...]:
    """Allowed web origins from ``--allow-origin`` values plus ``SARSTEER_GUARD_ALLOWED_ORIGINS``.

    Returned normalised and de-duplicated, in order.
    """
    env = os.environ if environ is None else environ
    values = [*origins, *env.get(ALLOWED_ORIGINS_ENV, "").split(",")]
    normalized = (normalize_origin(v) for v in values if v.strip())
    return tuple(dict.fromkeys(normalized))


def is_loopback(host: str) -> bool:
    """True if ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server enforces; build it once at start-up.

    Args:
        host / port: where uvicorn listens (loopback unless told otherwise).
        tokens: accepted bearer tokens; empty = unauthenticated (loopback only).
        max_message_bytes: largest WebSocket message handled; up to 4x that is answered
            with a ``bad_request`` error, beyond it the connection closes with 1009.
        max_turn_s: longest audio accepted in one turn.
        rate_limit_per_s: turn starts per second per connection (token bucket, burst of
            the same size); 0 disables.
        turn_timeout_s: turn.end to the final event; a slower turn is cancelled.
        shutdown_grace_s: how long SIGTERM waits for in-flight turns before cancelling them.
        max_open_turns: turns one connection may have open at once (bounds memory; a
            worker multiplexes all its calls over one connection, so keep it generous).
        allowed_origins: web origins whose pages may open ``/v1/turns``. A WebSocket
            handshake carrying any other ``Origin`` header is refused with 403 (cross-site
            WebSocket hijacking); clients that send no ``Origin`` (RemoteGuard, any
            non-browser client) are unaffected. Normalised on construction.
        max_new_tokens_cap: a turn's ``max_new_tokens`` above this is lowered to it (one
            long turn holds its whole generation batch on the GPU).
        send_timeout_s: deadline of every message the server sends; a client that has not
            taken a message by then stopped reading, and its connection is cut (turns freed).
        max_audio_mb: audio (after conversion to 16 kHz mono) all connections together may
            hold, in MiB; a turn that would pass it ends with ``rate_limited``.
        max_audio_mb_per_connection: the same budget for one connection.
        max_connections: open turn sockets; the next handshake gets HTTP 503.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    tokens: TokenSet = field(default_factory=TokenSet)
    max_message_bytes: int = 1 << 20
    max_turn_s: float = 30.0
    rate_limit_per_s: float = 20.0
    turn_timeout_s: float = 60.0
    shutdown_grace_s: float = 20.0
    max_open_turns: int = 64
    allowed_origins: tuple[str, ...] = ()
    max_new_tokens_cap: int = DEFAULT_MAX_NEW_TOKENS_CAP
    send_timeout_s: float = 10.0
    max_audio_mb: float = 512.0
    max_audio_mb_per_connection: float = 64.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        normalized = tuple(dict.fromkeys(normalize_origin(o) for o in self.allowed_origins))
        object.__setattr__(self, "allowed_origins", normalized)

    def origin_allowed(self, origin: str | None) -> bool:
        """True if a handshake with this ``Origin`` header (None = absent) may proceed."""
        if origin is None:
            return True  # not a browser: browsers always send Origin on WebSocket upgrades
        try:
            return normalize_origin(origin) in self.allowed_origins
        except ServerConfigError:
            return False  # "null", garbage: never allowed

    def clamp_max_new_tokens(self, requested: int | None) -> int | None:
        """A turn's ``max_new_tokens`` lowered to ``max_new_tokens_cap`` (None stays None)."""
        if requested is None:
            return None
        return min(requested, self.max_new_tokens_cap)

    def check(self) -> None:
        """Refuse settings that cannot be served safely (one-line errors)."""
        if not self.tokens.worker and not is_loopback(self.host):
            raise ServerConfigError(
                f"refusing to listen on {self.host} without a worker token: set "
                f"{WORKER_TOKEN_ENV} or pass --token-file (or use --host 127.0.0.1)"
            )
        if self.max_message_bytes < 1024:
            raise ServerConfigError("--max-message-bytes must be at least 1024")
        positive = {
            "--max-turn-s": self.max_turn_s,
            "--turn-timeout-s": self.turn_timeout_s,
            "--send-timeout-s": self.send_timeout_s,
            "--max-audio-mb": self.max_audio_mb,
            "--max-audio-mb-per-connection": self.max_audio_mb_per_connection,
            "--max-connections": self.max_connections,
        }
        for flag, value in positive.items():
            if value <= 0:
                raise ServerConfigError(f"{flag} must be greater than 0, got {value}")
        if self.rate_limit_per_s < 0 or self.shutdown_grace_s < 0:
            raise ServerConfigError("--rate-limit and --shutdown-grace-s must be >= 0")
        if self.max_open_turns < 1:
            raise ServerConfigError("--max-open-turns must be at least 1")
        if not 1 <= self.max_new_tokens_cap <= MAX_NEW_TOKENS:
            raise ServerConfigError(
                f"--max-new-tokens-cap must be from 1 to {MAX_NEW_TOKENS}, got "
                f"{self.max_new_tokens_cap}"
            )

    @property
    def hard_max_message_bytes(self) -> int:
        """Largest message uvicorn reads at all; bigger ones close the connection (1009)."""
        return 4 * self.max_message_bytes
