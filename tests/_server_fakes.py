"""An in-memory stand-in for a Starlette WebSocket, to drive TurnConnection without sockets.

Fast enough for tens of thousands of messages, and deterministic: frames fed before the
connection reads them are all buffered, as on a real socket whose client pipelines.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any


class FakeSocket:
    """``receive()`` from a queue the test feeds; ``send_text`` recorded in ``sent``."""

    def __init__(self, *, block_sends: bool = False) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed_with: int | None = None
        self.block_sends = block_sends
        self._changed = asyncio.Event()

    def feed_text(self, message: dict[str, Any]) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})

    def feed_raw(self, text: str) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": text})

    def feed_bytes(self, frame: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": frame})

    def feed_disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def receive(self) -> dict[str, Any]:
        message = await self.inbox.get()
        self._changed.set()
        return message

    async def send_text(self, text: str) -> None:
        if self.block_sends:  # a client that stopped reading: the write never drains
            await asyncio.Event().wait()
        self.sent.append(json.loads(text))
        self._changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed_with = code
        self.feed_disconnect()
        self._changed.set()

    async def wait_for(self, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not check():
                self._changed.clear()
                await self._changed.wait()


def finals_by_turn(sent: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each turn's final messages as ``type`` or ``error:kind`` (one per turn is correct)."""
    finals: dict[str, list[str]] = {}
    for message in sent:
        kind = message.get("type")
        turn_id = message.get("turn_id")
        if turn_id is None or kind not in ("decision", "error", "cancelled"):
            continue
        label = f"error:{message['kind']}" if kind == "error" else str(kind)
        finals.setdefault(turn_id, []).append(label)
    return finals
