"""Who may use the review console: named tokens, signed session cookies, sign-in limits.

- **Tokens** are named (the name is what labels and the access log record) and have a
  role: ``reviewer`` (read, play, label, export up to a limit) or ``admin`` (also prune,
  export everything, read the access log). They come only from the environment
  (``SARSTEER_CONSOLE_REVIEWER_TOKENS`` / ``SARSTEER_CONSOLE_ADMIN_TOKENS``, as
  ``name=TOKEN,name=TOKEN``) or a token file, never from the command line, and are never
  logged or shown. They are compared in constant time over SHA-256 digests.
- **Sessions** are stateless cookies: JSON (session id, CSRF token, expiry, name, role,
  a fingerprint of the token used) plus an HMAC-SHA256 over it with the console secret
  (``SARSTEER_CONSOLE_SECRET``, else random per process: restarts sign everyone out). A
  session whose token is no longer configured is refused; signing out revokes its id.
- **CSRF**: every session, signed in or not, carries a random token that forms repeat
  (synchronizer token pattern); the cookie is HttpOnly, so another site cannot read it.
- **Sign-in limits**: attempts per client address in a sliding minute (bounded memory).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sarsteer_guard.errors import GuardError
from sarsteer_guard.log import get_logger

log = get_logger(__name__)

Role = Literal["reviewer", "admin"]
ROLES: tuple[Role, ...] = ("reviewer", "admin")
REVIEWER_TOKENS_ENV = "SARSTEER_CONSOLE_REVIEWER_TOKENS"
ADMIN_TOKENS_ENV = "SARSTEER_CONSOLE_ADMIN_TOKENS"
SECRET_ENV = "SARSTEER_CONSOLE_SECRET"  # noqa: S105 - a variable name, not a secret
#: Shorter tokens are guessable.
MIN_TOKEN_CHARS = 16
MIN_SECRET_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_DOMAIN = b"sarsteer-guard/console-session/v1\x00"
_HOW = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"


class ConsoleConfigError(GuardError):
    """A console setting that cannot work (a public bind without tokens, a bad token file)."""

    kind = "config"


@dataclass(frozen=True)
class Principal:
    """A signed-in person: the token's name and role."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        """Admins may also prune, export everything and read the access log."""
        return self.role == "admin"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class TokenBook:
    """Accepted tokens as (SHA-256 digest, name, role)."""

    entries: tuple[tuple[bytes, str, Role], ...] = ()

    @classmethod
    def from_named(cls, named: Iterable[tuple[Role, str, str]]) -> TokenBook:
        """Build from (role, name, token) triples, refusing weak tokens and bad names.

        Raises:
            ConsoleConfigError: a short token, a bad or repeated name, a repeated token.
        """
        entries: list[tuple[bytes, str, Role]] = []
        names: dict[str, Role] = {}
        for role, name, token in named:
            if not _NAME.match(name):
                raise ConsoleConfigError(
                    f"token name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
                    "(it names the reviewer in labels and the access log)"
                )
            if len(token) < MIN_TOKEN_CHARS:
                raise ConsoleConfigError(
                    f"the token of {name!r} is shorter than {MIN_TOKEN_CHARS} characters; {_HOW}"
                )
            if names.get(name, role) != role:
                raise ConsoleConfigError(f"{name!r} has both a reviewer and an admin token")
            digest = _digest(token)
            if any(hmac.compare_digest(digest, d) for d, _, _ in entries):
                raise ConsoleConfigError(f"the token of {name!r} is also another name's token")
            names[name] = role
            entries.append((digest, name, role))
        return cls(tuple(entries))

    @property
    def configured(self) -> bool:
        """Whether any token is configured (otherwise: local open mode, loopback only)."""
        return bool(self.entries)

    def match(self, token: str) -> tuple[Principal, str] | None:
        """(principal, token fingerprint) for a presented token; constant time in it."""
        presented = _digest(token)
        found: tuple[bytes, str, Role] | None = None
        for entry in self.entries:  # no early exit: timing says nothing about which matched
            if hmac.compare_digest(presented, entry[0]):
                found = entry
        if found is None:
            return None
        return Principal(found[1], found[2]), fingerprint(found[0])

    def still_valid(self, name: str, role: str, token_fp: str) -> bool:
        """Whether a session's token is still configured with the same name and role."""
        return any(
            n == name and r == role and hmac.compare_digest(fingerprint(d), token_fp)
            for d, n, r in self.entries
        )


def fingerprint(digest: bytes) -> str:
    """A token digest's public fingerprint (what sessions carry; reveals nothing usable)."""
    return hashlib.sha256(b"sarsteer-guard/console-token\x00" + digest).hexdigest()[:32]


def _pairs(value: str, source: str) -> list[tuple[str, str]]:
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, token = item.partition("=")
        if not sep or not name.strip() or not token.strip():
            raise ConsoleConfigError(f"{source} must be name=TOKEN[,name=TOKEN...]")
        out.append((name.strip(), token.strip()))
    return out


def _file_entries(path: Path) -> list[tuple[Role, str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except OSError as error:
        raise ConsoleConfigError(
            f"cannot read token file {path}: {error.strerror}; check --token-file"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("console.token_file_permissions", path=str(path), hint="chmod 600 it")
    if text.lstrip().startswith("{"):
        return _json_entries(text, path)
    out: list[tuple[Role, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 3 or words[0] not in ROLES:
            raise ConsoleConfigError(
                f"{path}:{number}: expected 'reviewer NAME TOKEN' or 'admin NAME TOKEN'"
            )
        role: Role = "admin" if words[0] == "admin" else "reviewer"
        out.append((role, words[1], words[2]))
    return out


def _json_entries(text: str, path: Path) -> list[tuple[Role, str, str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConsoleConfigError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
    out: list[tuple[Role, str, str]] = []
    for role_key, names in data.items():
        if role_key not in ROLES or not isinstance(names, dict):
            raise ConsoleConfigError(
                f'{path}: expected {{"reviewer": {{"NAME": "TOKEN"}}, "admin": {{...}}}}'
            )
        role: Role = "admin" if role_key == "admin" else "reviewer"
        out.extend((role, str(name), str(token)) for name, token in names.items())
    return out


def load_console_tokens(
    token_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> TokenBook:
    """Tokens from the environment plus ``token_file`` (``ROLE NAME TOKEN`` lines or JSON)."""
    env = os.environ if environ is None else environ
    named: list[tuple[Role, str, str]] = []
    for role, var in (("reviewer", REVIEWER_TOKENS_ENV), ("admin", ADMIN_TOKENS_ENV)):
        for name, token in _pairs(env.get(var, ""), var):
            named.append(("admin" if role == "admin" else "reviewer", name, token))
    if token_file is not None:
        named.extend(_file_entries(token_file))
    return TokenBook.from_named(named)


def load_secret(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The session secret from ``SARSTEER_CONSOLE_SECRET`` (hex or base64), or None.

    Raises:
        ConsoleConfigError: set but shorter than 32 bytes or not hex/base64.
    """
    env = os.environ if environ is None else environ
    value = env.get(SECRET_ENV, "").strip()
    if not value:
        return None
    try:
        raw = (
            bytes.fromhex(value)
            if re.fullmatch(r"[0-9a-fA-F]+", value) and len(value) % 2 == 0
            else base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        )
    except (ValueError, binascii.Error):
        raise ConsoleConfigError(f"{SECRET_ENV} is neither hex nor base64; {_HOW}") from None
    if len(raw) < MIN_SECRET_BYTES:
        raise ConsoleConfigError(f"{SECRET_ENV} must hold at least {MIN_SECRET_BYTES} bytes")
    return raw


@dataclass(frozen=True)
class Session:
    """A verified session cookie's content (anonymous when ``name`` is None)."""

    sid: str
    csrf: str
    expires: float
    name: str | None = None
    role: str | None = None
    token_fp: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Issues and checks signed session cookies; remembers revoked ids until they expire."""

    def __init__(self, secret: bytes, lifetime_s: float) -> None:
        self._secret = secret
        self.lifetime_s = lifetime_s
        self._revoked: dict[str, float] = {}
        self._lock = threading.Lock()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _DOMAIN + payload, hashlib.sha256).digest()

    def issue(self, principal: Principal | None = None, token_fp: str | None = None) -> Session:
        """A new session (new id, new CSRF token): at sign-in too, against fixation."""
        return Session(
            sid=secrets.token_urlsafe(18),
            csrf=secrets.token_urlsafe(32),
            expires=time.time() + self.lifetime_s,
            name=None if principal is None else principal.name,
            role=None if principal is None else principal.role,
            token_fp=token_fp,
        )

    def encode(self, session: Session) -> str:
        """The cookie value of ``session``."""
        payload = json.dumps(
            {
                "sid": session.sid,
                "csrf": session.csrf,
                "exp": session.expires,
                "name": session.name,
                "role": session.role,
                "tfp": session.token_fp,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode("utf-8")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def decode(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or None if absent, forged, expired or revoked."""
        if not cookie or cookie.count(".") != 1 or len(cookie) > 4096:
            return None
        body, mac = cookie.split(".")
        try:
            payload = _unb64(body)
            if not hmac.compare_digest(_unb64(mac), self._mac(payload)):
                return None
            data = json.loads(payload)
            session = Session(
                sid=str(data["sid"]),
                csrf=str(data["csrf"]),
                expires=float(data["exp"]),
                name=data.get("name"),
                role=data.get("role"),
                token_fp=data.get("tfp"),
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        now = time.time()
        if session.expires <= now:
            return None
        with self._lock:
            if session.sid in self._revoked:
                return None
        return session

    def revoke(self, session: Session) -> None:
        """Refuse this session id from now on (sign-out); forgotten once it would expire."""
        now = time.time()
        with self._lock:
            self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}
            self._revoked[session.sid] = session.expires


class SignInLimiter:
    """At most ``per_minute`` sign-in attempts per client address in any sliding minute."""

    def __init__(self, per_minute: int, *, max_clients: int = 10_000) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def attempt(self, client: str, now: float | None = None) -> float | None:
        """Count one attempt; None if allowed, else seconds until the next one may come."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.pop(client, None) or deque()
            while times and times[0] <= now - 60.0:
                times.popleft()
            self._seen[client] = times
            while len(self._seen) > self.max_clients:
                self._seen.popitem(last=False)
            if len(times) >= self.per_minute:
                return max(1.0, 60.0 - (now - times[0]))
            times.append(now)
            return None
