"""A scripted stand-in for the Guard: ``sarsteer-guard serve --scripted`` and adapter tests.

It implements :class:`~sarsteer_guard.guard.SpeechGuard` exactly (streaming,
cancellation, error events) without a model, so protocol and adapter tests can check
ordering and barge-in deterministically; end-to-end tests use the real Guard with the
tiny model. It lives beside the server because the (hidden, test-only) ``--scripted``
flag serves it; the test kit re-exports it as ``sarsteer_guard.testing.scripted``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from sarsteer_guard.guard.events import GuardEvent, TextDelta, Turn, TurnDecision, TurnError


@dataclass
class ScriptedGuard:
    """Answers every turn with ``reply`` word by word, ``delay_s`` apart.

    ``refuse=True`` marks turns refused and serves ``refusal_message``. Every turn
    received is kept in ``turns``; cancelled turn ids in ``cancelled``.
    """

    reply: str = "Sure, here are the steps."
    delay_s: float = 0.01
    refuse: bool = False
    refusal_message: str = "I can't help with that."
    fail_with: str | None = None
    turns: list[Turn] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    started: bool = False
    closed: bool = False

    forgotten: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Started and not closed."""
        return self.started and not self.closed

    @property
    def queue_depth(self) -> int | None:
        """None: there is no model queue to see (turns are answered at once)."""
        return None

    def forget_session(self, session_id: str) -> None:
        """Record the request (tests assert that integrations forget ended sessions)."""
        self.forgotten.append(session_id)

    async def start(self) -> None:
        """Mark started (idempotent)."""
        self.started = True

    async def close(self) -> None:
        """Mark closed (idempotent)."""
        self.closed = True

    async def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        """Stream the scripted reply; a closed iterator records the cancellation."""
        self.turns.append(turn)
        if self.fail_with is not None:
            yield TurnError(turn_id=turn.turn_id, kind="model", message=self.fail_with)
            return
        text = self.refusal_message if self.refuse else self.reply
        words = text.split(" ")
        try:
            for i, word in enumerate(words):
                await asyncio.sleep(self.delay_s)
                yield TextDelta(turn_id=turn.turn_id, text=word if i == 0 else " " + word)
        except (GeneratorExit, asyncio.CancelledError):
            self.cancelled.append(turn.turn_id)
            raise
        yield TurnDecision(
            turn_id=turn.turn_id,
            session_id=turn.session_id,
            refused=self.refuse,
            text=text,
            model_text=text,
            policy="scripted",
            policy_version="1",
            policy_hash="0" * 64,
            rule=None,
            mode="enforce",
            alpha=0.1,
            steered=True,
            tokens=len(words),
        )

    @staticmethod
    def audio_seconds(turn: Turn) -> float:
        """Duration of a turn's audio, for asserting what an integration sent."""
        if isinstance(turn.audio, np.ndarray):
            frames = int(turn.audio.shape[0])
        else:
            width = 2 if turn.sample_format == "int16" else 4
            frames = len(turn.audio) // (width * turn.channels)
        return frames / turn.sample_rate
