"""The guard as a network service: WebSocket turn protocol, health, metrics, auth.

Voice-agent workers on CPU hosts reach a guard on a GPU host through this server
(``sarsteer-guard serve``) with :class:`~sarsteer_guard.remote.RemoteGuard`. The
app lives in :mod:`sarsteer_guard.server.app` (Starlette, imported on demand), the
wire format in :mod:`sarsteer_guard.server.protocol` (no web framework, shared with
the client). See ``docs/server.md``.
"""

from sarsteer_guard.server.protocol import PROTOCOL, TURNS_PATH, ProtocolError
from sarsteer_guard.server.settings import ServerConfigError, ServerSettings, TokenSet, load_tokens

__all__ = [
    "PROTOCOL",
    "TURNS_PATH",
    "ProtocolError",
    "ServerConfigError",
    "ServerSettings",
    "TokenSet",
    "load_tokens",
]
