"""Per-session conversation history, bounded so a long call cannot grow a prompt forever.

A voice bot holds a multi-turn conversation: each user turn is audio, each reply is
text. The budget is counted in estimated model tokens (audio at the encoder's token
rate, text at about four characters per token) as well as in turns, and whole
exchanges are dropped oldest first so a user turn never loses its reply.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from sarsteer_guard.guard.events import HistoryItem

if TYPE_CHECKING:
    from sarsteer_guard.models.base import Message

#: Qwen2-Audio's encoder emits about 25 tokens per second of audio after pooling.
AUDIO_TOKENS_PER_SECOND = 25.0
CHARS_PER_TOKEN = 4.0


def estimate_tokens(item: HistoryItem) -> int:
    """A cheap, model-independent token estimate used only for budgeting."""
    tokens = len(item.text) / CHARS_PER_TOKEN
    if item.audio is not None:
        tokens += item.audio.shape[0] / item.sample_rate * AUDIO_TOKENS_PER_SECOND
    return int(tokens) + 4  # role and separator tokens


@dataclass(frozen=True, slots=True)
class Exchange:
    """A user turn and the reply that was served for it."""

    user: HistoryItem
    assistant: HistoryItem

    @property
    def tokens(self) -> int:
        """Estimated tokens of the pair."""
        return estimate_tokens(self.user) + estimate_tokens(self.assistant)


def exchange_bytes(exchange: Exchange) -> int:
    """Memory an exchange holds: its audio samples plus its reply text (UTF-8 upper bound)."""
    audio = exchange.user.audio
    return (0 if audio is None else int(audio.nbytes)) + 4 * len(exchange.assistant.text)


@dataclass(slots=True)
class _Session:
    touched: float
    exchanges: deque[Exchange]
    bytes: int = 0


class ConversationStore:
    """Thread-safe histories for many sessions, least recently used evicted first.

    Bounded four ways, because every exchange holds the user's audio (1.9 MiB for 30 s at
    16 kHz float32) and a client may open a fresh session per turn: per session in
    exchanges, estimated tokens and bytes (oldest exchanges dropped first), and across
    sessions in count and in bytes (least recently used sessions dropped first), plus an
    idle expiry. Invariant after every call: ``bytes <= max_bytes`` and no session holds
    more than ``max_session_bytes``.
    """

    #: True when calls do blocking I/O (a network store): the guard then runs them in a
    #: worker thread, never on its event loop. This in-memory store only takes a lock.
    blocking: ClassVar[bool] = False

    def __init__(
        self,
        *,
        max_exchanges: int = 8,
        max_tokens: int = 2048,
        max_sessions: int = 10_000,
        idle_expiry_s: float = 3600.0,
        max_session_bytes: int = 8 * 1024 * 1024,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.max_exchanges = max(0, max_exchanges)
        self.max_tokens = max(0, max_tokens)
        self.max_sessions = max(1, max_sessions)
        self.idle_expiry_s = idle_expiry_s
        self.max_session_bytes = max(0, max_session_bytes)
        self.max_bytes = max(0, max_bytes)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Bytes of audio and text held across all sessions."""
        with self._lock:
            return self._bytes

    def history(self, session_id: str) -> list[HistoryItem]:
        """The session's retained exchanges, oldest first, as alternating items."""
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                return []
            items: list[HistoryItem] = []
            for exchange in session.exchanges:
                items.extend((exchange.user, exchange.assistant))
            return items

    def append(self, session_id: str, user_audio: np.ndarray, rate: int, reply: str) -> None:
        """Record a served exchange and trim the session and the store to their budgets."""
        if self.max_exchanges == 0:
            return
        exchange = Exchange(
            HistoryItem(role="user", audio=user_audio, sample_rate=rate),
            HistoryItem(role="assistant", text=reply),
        )
        with self._lock:
            self._expire()
            session = self._sessions.pop(session_id, None) or _Session(0.0, deque())
            session.touched = time.monotonic()
            session.exchanges.append(exchange)
            session.bytes += exchange_bytes(exchange)
            self._bytes += exchange_bytes(exchange)
            self._trim(session)
            if session.exchanges:
                self._sessions[session_id] = session
            while self._sessions and (
                len(self._sessions) > self.max_sessions or self._bytes > self.max_bytes
            ):
                self._drop(next(iter(self._sessions)))

    def _trim(self, session: _Session) -> None:
        """Drop the session's oldest exchanges until it fits its per-session budgets.

        A session never holds more than the whole store may, so evicting the other
        sessions always brings the store back under ``max_bytes``.
        """
        exchanges = session.exchanges
        limit = min(self.max_session_bytes, self.max_bytes)
        while exchanges and (
            len(exchanges) > self.max_exchanges
            or sum(e.tokens for e in exchanges) > self.max_tokens
            or session.bytes > limit
        ):
            size = exchange_bytes(exchanges.popleft())
            session.bytes -= size
            self._bytes -= size

    def forget(self, session_id: str) -> None:
        """Drop a session's history (call end, user request)."""
        with self._lock:
            self._drop(session_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        """Release what the store holds open (nothing, for memory)."""

    def _drop(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            self._bytes -= session.bytes

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.idle_expiry_s
        while self._sessions:
            session_id, session = next(iter(self._sessions.items()))
            if session.touched >= cutoff:
                break
            self._drop(session_id)


def turn_conversation(
    *,
    system_prompt: str | None,
    history: Sequence[HistoryItem],
    prompt: str,
    audio: np.ndarray,
    rate: int,
) -> list[Message]:
    """The messages a turn is generated from: system prompt, history, then the user's turn.

    History audio is resampled to the model's ``rate``; the turn's ``audio`` already is.
    """
    from sarsteer_guard.audio import resample
    from sarsteer_guard.models.base import Message

    messages: list[Message] = []
    if system_prompt:
        messages.append(Message(role="system", text=system_prompt))
    for item in history:
        clip = item.audio
        if clip is not None and item.sample_rate != rate:
            clip = resample(clip, item.sample_rate, rate)
        messages.append(Message(role=item.role, text=item.text, audio=clip))
    messages.append(Message(role="user", text=prompt, audio=audio))
    return messages
