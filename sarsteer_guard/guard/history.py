"""Session history as the Guard uses it: which store, and calls that never cost a turn.

The stores (:class:`~sarsteer_guard.guard.conversation.ConversationStore` in memory,
:class:`~sarsteer_guard.guard.history_redis.RedisConversationStore` shared by replicas, or
a caller's object) keep the budgets; this module is the Guard's side of them, split out of
:mod:`sarsteer_guard.guard.core` so the Guard reads as the turn's path and the rules for
history sit in one place.

Invariants:

- history is context, not a safety control: a store call that raises is logged
  (``history.failed``) and the turn goes on without the context or without being
  remembered; nothing here raises for a store's failure;
- a turn that brings its own history (``Turn.history``) neither reads nor writes the
  session's: the caller owns that conversation;
- a store that declares itself ``blocking`` (network I/O) is never called on the event
  loop: reads and appends go to a worker thread, and a forget from a running loop is
  handed to the default executor (the store's expiry ends the history if it fails).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sarsteer_guard.errors import one_line
from sarsteer_guard.guard.conversation import ConversationStore
from sarsteer_guard.log import get_logger

if TYPE_CHECKING:
    from sarsteer_guard.guard.events import HistoryItem, Turn
    from sarsteer_guard.guard.turn import PreparedTurn

__all__ = ["forget_session", "open_history", "remember", "session_history"]

log = get_logger(__name__)


def open_history(
    spec: str | ConversationStore | None,
    turns: int,
    tokens: int,
    session_bytes: int,
    total_bytes: int,
    /,
) -> ConversationStore:
    """The Guard's history store: in memory (None), Redis (a URL) or the store given.

    The budgets are the Guard's ``history_turns``, ``history_tokens``,
    ``history_session_bytes`` and ``history_total_bytes``; a Redis store gets the same ones,
    a store object keeps its own. Opening a Redis store does no I/O.
    """
    store = ConversationStore(
        max_exchanges=turns,
        max_tokens=tokens,
        max_session_bytes=session_bytes,
        max_bytes=total_bytes,
    )
    if isinstance(spec, str):
        from sarsteer_guard.guard.history_redis import redis_history

        return redis_history(spec, like=store)
    return store if spec is None else spec


async def session_history(store: ConversationStore, turn: Turn) -> list[HistoryItem]:
    """The turn's history: its own, or the session's (off the loop for a network store).

    A store that fails costs the context, never the turn.
    """
    if turn.history is not None:
        return list(turn.history)
    try:
        if store.blocking:
            return await asyncio.to_thread(store.history, turn.session_id)
        return store.history(turn.session_id)
    except Exception as error:
        log.warning("history.failed", op="history", error=one_line(error))
        return []


async def remember(store: ConversationStore, prepared: PreparedTurn, rate: int, reply: str) -> None:
    """Append the served exchange to the session's history; a failure is only logged.

    ``rate`` is the sampling rate of ``prepared.audio`` (the model's).
    """
    turn = prepared.turn
    if turn.history is not None:
        return
    args = (turn.session_id, prepared.audio, rate, reply)
    try:
        if store.blocking:
            await asyncio.to_thread(store.append, *args)
        else:
            store.append(*args)
    except Exception as error:
        log.warning("history.failed", op="append", error=one_line(error))


def forget_session(store: ConversationStore, session_id: str) -> None:
    """Drop a session's history; from a running loop a blocking store forgets in a thread."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if store.blocking and loop is not None:
        loop.run_in_executor(None, store.forget, session_id)
    else:
        store.forget(session_id)
