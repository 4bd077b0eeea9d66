"""Running one turn on the guard for a connection, whatever its wire format.

A connection hands a complete :class:`~sarsteer_guard.guard.events.Turn` to
:func:`run_turn` as a task and gets the guard's events back through a
:class:`TurnOutput` (the ``sarsteer.v1`` connection writes them as JSON messages;
another endpoint may write them differently). Here live the rules every endpoint shares:
the turn timeout, cancellation by the client, by the drain or by a disconnect, the
event iterator always closed (:func:`~sarsteer_guard.connect.turn_events`), and exactly
one final message per turn unless the peer is gone.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, Protocol

from sarsteer_guard.connect import turn_events
from sarsteer_guard.guard.events import (
    GuardEvent,
    SpeechGuard,
    TextDelta,
    Turn,
    TurnDecision,
    TurnError,
)
from sarsteer_guard.log import get_logger
from sarsteer_guard.server import metrics

log = get_logger(__name__)

#: Who cancelled a running turn: the client (barge-in), the drain, or a lost connection.
CancelReason = Literal["client", "shutdown", "disconnect"]
#: How a turn ended, as counted in ``sarsteer_server_turns_total{outcome}``.
Outcome = Literal["decision", "error", "cancelled", "disconnected"]


class TurnOutput(Protocol):
    """Where a running turn's messages go; each method sends one message."""

    async def event(self, event: GuardEvent) -> None:
        """A guard event: text delta, decision or the guard's own turn error."""

    async def error(self, turn_id: str, kind: str, message: str) -> None:
        """A final error raised by the server side (timeout, shutdown, internal)."""

    async def cancelled(self, turn_id: str) -> None:
        """The final message of a turn the client cancelled."""


@dataclass
class RunningTurn:
    """A turn whose guard events are being streamed to a connection.

    ``ended_at`` is ``time.perf_counter()`` when the client ended the turn (the start of
    the end-to-first-token latency). ``final_sent`` turns cancelling into a no-op: a
    cancel that crosses the final message on the wire gets no second final message.

    ``started`` is set by :func:`run_turn` in the task's first step. A task cancelled
    before that step would die without running its ``try/finally`` (no final message,
    the turn never closed), so :meth:`cancel` only records the reason for a task that
    has not started, and :func:`run_turn` reports it when the task begins.
    """

    turn: Turn
    ended_at: float
    task: asyncio.Task[None] | None = None
    cancel_reason: CancelReason | None = None
    final_sent: bool = False
    started: bool = False
    outcome: Outcome = "error"

    @property
    def turn_id(self) -> str:
        """The turn's id."""
        return self.turn.turn_id

    def cancel(self, reason: CancelReason) -> bool:
        """Cancel the task once, unless the turn already has its final message."""
        if self.cancel_reason is not None or self.final_sent:
            return False
        self.cancel_reason = reason
        if self.task is not None and self.started:
            self.task.cancel()
        return True


async def run_turn(
    guard: SpeechGuard, running: RunningTurn, output: TurnOutput, *, timeout_s: float
) -> None:
    """Stream ``running.turn``'s events to ``output``; sets ``running.outcome``.

    Raises only a cancellation that is not the server's own (the event loop stopping).
    Call it first thing in the turn's task (see :attr:`RunningTurn.started`).
    """
    turn_id = running.turn_id
    running.started = True
    if running.cancel_reason is not None:  # cancelled before the task's first step
        await _report_cancel(running, output)
        return
    try:
        await _stream(guard, running, output, timeout_s)
    except TimeoutError:
        running.final_sent = True
        await output.error(
            turn_id,
            "timeout",
            f"the turn took longer than {timeout_s:g} s and was cancelled: retry, or raise "
            "--turn-timeout-s",
        )
    except asyncio.CancelledError:
        if running.cancel_reason is None:
            raise
        await _report_cancel(running, output)
    except Exception as error:
        log.exception("server.turn_failed", turn_id=turn_id)
        running.final_sent = True
        await output.error(
            turn_id, "internal", f"the server failed on this turn ({type(error).__name__})"
        )


async def _stream(
    guard: SpeechGuard, running: RunningTurn, output: TurnOutput, timeout_s: float
) -> None:
    first = True
    async with asyncio.timeout(timeout_s), turn_events(guard, running.turn) as events:
        async for event in events:
            if first and isinstance(event, TextDelta):
                first = False
                metrics.END_TO_FIRST_TOKEN_SECONDS.observe(time.perf_counter() - running.ended_at)
            final = isinstance(event, TurnDecision | TurnError)
            if final:
                running.final_sent = True
            await output.event(event)
            if isinstance(event, TurnError):
                metrics.ERRORS.labels(kind=event.kind).inc()
            if final:
                running.outcome = "decision" if isinstance(event, TurnDecision) else "error"
                return
    running.final_sent = True
    await output.error(running.turn_id, "internal", "the guard ended the turn without a decision")


async def _report_cancel(running: RunningTurn, output: TurnOutput) -> None:
    if running.cancel_reason == "client":
        running.outcome = "cancelled"
        await output.cancelled(running.turn_id)
    elif running.cancel_reason == "shutdown":
        await output.error(
            running.turn_id,
            "shutting_down",
            "the server shut down before the turn finished: retry it",
        )
    else:
        running.outcome = "disconnected"
