"""Who may use the server: bearer tokens and roles, web origins, a per-connection rate limit.

Checked before a WebSocket opens or an HTTP endpoint answers, so a refused client never
reaches the guard. Tokens and origins are configured in :mod:`.settings` (from the
environment, never the command line); this module only applies them to a request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from starlette.responses import JSONResponse, Response

from sarsteer_guard.log import get_logger
from sarsteer_guard.server import metrics
from sarsteer_guard.server.settings import Role, ServerSettings

log = get_logger(__name__)

#: How much of a peer-chosen Origin header goes to logs and back to the peer.
_ORIGIN_SHOWN_CHARS = 200


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def role_of(settings: ServerSettings, headers: Mapping[str, str]) -> tuple[str | None, Role | None]:
    """(presented token, role it grants) for a request's headers."""
    token = bearer_token(headers)
    return token, settings.tokens.role_of(token)


def denied(token: str | None) -> Response:
    """401 for a missing token (with a ``WWW-Authenticate`` challenge), 403 for a wrong one."""
    metrics.AUTH_FAILURES.inc()
    if token is None:
        return JSONResponse(
            {"error": "missing bearer token: send 'Authorization: Bearer <token>'"},
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="sarsteer-guard"'},
        )
    return JSONResponse({"error": "this token may not use this endpoint"}, status_code=403)


def websocket_refusal(settings: ServerSettings, headers: Mapping[str, str]) -> Response | None:
    """Why a WebSocket upgrade to a turn endpoint is refused (origin first, then token), or None.

    Browsers always send ``Origin`` on a WebSocket upgrade and let any page open one (no
    CORS), so without the origin check any site the operator visits could use the guard.
    """
    origin = headers.get("origin")
    if origin is not None and not settings.origin_allowed(origin):
        shown = origin[:_ORIGIN_SHOWN_CHARS]
        metrics.ORIGIN_REFUSALS.inc()
        log.warning("server.origin_refused", origin=shown)
        body = {
            "error": f"web origin {shown!r} may not open this socket: allow it with "
            "--allow-origin or SARSTEER_GUARD_ALLOWED_ORIGINS"
        }
        return JSONResponse(body, status_code=403)
    if settings.tokens.worker:
        token, granted = role_of(settings, headers)
        if granted != "worker":
            return denied(token)
    return None


def metrics_refusal(settings: ServerSettings, headers: Mapping[str, str]) -> Response | None:
    """Why ``/metrics`` is refused: any configured token makes it need one of either role."""
    if not settings.tokens.configured:
        return None
    token, granted = role_of(settings, headers)
    return denied(token) if granted is None else None


class TokenBucket:
    """Allows ``rate`` events per second with bursts of ``rate`` (0 = unlimited)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> bool:
        """Spend one token if there is one."""
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
