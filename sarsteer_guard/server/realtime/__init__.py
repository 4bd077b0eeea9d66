"""The OpenAI Realtime API subset at ``/v1/realtime``: any realtime client, one URL changed.

Text output only; the guard's decision rides along as a ``sarsteer.decision`` event and
in the response's ``metadata``. See docs/realtime.md and docs/realtime.schema.json.
"""

from __future__ import annotations

from sarsteer_guard.server.realtime.connection import RealtimeConnection

#: The endpoint's path (clients append ``?model=...``, which is echoed, not used).
REALTIME_PATH = "/v1/realtime"

__all__ = ["REALTIME_PATH", "RealtimeConnection"]
