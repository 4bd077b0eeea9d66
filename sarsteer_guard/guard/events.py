"""The Guard's public vocabulary: a turn in, a stream of events out.

Integrations (Pipecat, LiveKit, the WebSocket server) depend on these types and on
:class:`SpeechGuard` only, so an in-process :class:`~sarsteer_guard.Guard` and a
:class:`~sarsteer_guard.RemoteGuard` are interchangeable. No torch here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # numpy stays unimported for tools that only read policies or audit logs
    import numpy as np

ContextValue = str | int | float | bool
TurnContext = Mapping[str, ContextValue]


def new_turn_id() -> str:
    """A fresh, unguessable turn id."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """A previous exchange, when the caller keeps the conversation itself."""

    role: Literal["user", "assistant"]
    text: str = ""
    audio: np.ndarray | None = None  # float32 mono at 16 kHz for user turns
    sample_rate: int = 16000


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn: their speech plus what the policy rules need to know.

    ``audio`` is PCM ``bytes`` (``sample_format`` int16 or float32, interleaved when
    ``channels`` is 2) or a numpy array (``[samples]`` or ``[samples, channels]``).
    ``history=None`` lets the Guard keep the session's history itself.
    """

    audio: bytes | np.ndarray
    sample_rate: int = 16000
    channels: int = 1
    sample_format: Literal["int16", "float32"] = "int16"
    session_id: str = field(default_factory=new_turn_id)  # no id: a private, one-turn session
    context: TurnContext = field(default_factory=dict)
    history: Sequence[HistoryItem] | None = None
    turn_id: str = field(default_factory=new_turn_id)
    max_new_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New response text, as tokens are generated (concatenate them for the full text)."""

    turn_id: str
    text: str
    type: Literal["delta"] = "delta"


@dataclass(frozen=True, slots=True)
class Timings:
    """Where a turn's time went, in milliseconds."""

    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class TurnDecision:
    """The final event of a turn: what was served and why."""

    turn_id: str
    session_id: str
    refused: bool
    text: str  # what the listener got (the fixed refusal message when one was served)
    model_text: str  # what the model generated
    policy: str
    policy_version: str
    policy_hash: str
    rule: str | None
    mode: Literal["enforce", "shadow"]
    alpha: float
    steered: bool
    refusal_keyword: str | None = None
    refusal_score: float | None = None
    vector_set_id: str | None = None
    tokens: int = 0
    flags: tuple[str, ...] = ()
    shadow: Mapping[str, object] | None = None  # what enforce would have done (shadow mode)
    timings: Timings = field(default_factory=Timings)
    audit_id: str | None = None
    type: Literal["decision"] = "decision"

    @property
    def enforce_refused(self) -> bool:
        """The policy's verdict: refused (enforce) or would have refused (shadow).

        In shadow mode the listener got the unsteered answer (``refused`` describes that)
        while a steered shadow row ran beside it; this is that row's verdict. Without a
        shadow row (alpha 0, no vectors) enforce would have served the same answer.
        """
        if self.mode == "shadow" and self.shadow is not None and "refused" in self.shadow:
            return self.shadow["refused"] is True
        return self.refused


@dataclass(frozen=True, slots=True)
class TurnError:
    """A turn that failed on its own; the session and the guard go on."""

    turn_id: str
    kind: str  # "audio", "overloaded", "model", "vectors", "cancelled", ...
    message: str  # one line, says what to do next
    type: Literal["error"] = "error"


GuardEvent = TextDelta | TurnDecision | TurnError


@runtime_checkable
class SpeechGuard(Protocol):
    """What integrations need: an in-process Guard or a RemoteGuard."""

    @property
    def ready(self) -> bool:
        """True while the guard can take turns (model loaded / server connected)."""
        ...

    @property
    def queue_depth(self) -> int | None:
        """Turns waiting for the model; None when this guard cannot see its queue."""
        ...

    def forget_session(self, session_id: str) -> None:
        """Drop a session's conversation history, if this guard keeps any (call ended)."""
        ...

    async def start(self) -> None:
        """Acquire resources (idempotent)."""

    async def close(self) -> None:
        """Release resources (idempotent)."""

    def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        """Stream a turn's events; closing the iterator early cancels the turn (barge-in)."""
        ...
