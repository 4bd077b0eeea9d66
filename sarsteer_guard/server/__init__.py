"""The guard as a network service: WebSocket turn protocol, health, metrics, auth.

Voice-agent workers on CPU hosts reach a guard on a GPU host through this server
(``sarsteer-guard serve``) with :class:`~sarsteer_guard.remote.RemoteGuard`.

- :mod:`.protocol`: the wire format, typed client messages (no web framework; shared
  with the client);
- :mod:`.settings`: limits, tokens and origins, built once at start-up;
- :mod:`.auth`: who may connect (tokens and roles, origins, the rate limit);
- :mod:`.service`: the guard's lifecycle, readiness and drain;
- :mod:`.turns`: running one turn on the guard for any connection;
- :mod:`.connection`: one ``sarsteer.v1`` socket's turn protocol;
- :mod:`.app`: the routes (Starlette, imported on demand); :mod:`.runner`: uvicorn;
- :mod:`.scripted`: a model-free guard for ``--scripted`` and tests.

See ``docs/server.md``.
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
