"""Server events of the realtime endpoint, and one response's event stream.

:class:`ResponseStream` is a :class:`~sarsteer_guard.server.turns.TurnOutput`: the shared
turn runner (timeout, cancellation, iterator always closed) drives it, and it writes the
OpenAI response lifecycle: ``response.created``, the assistant item and its text part as
the first delta arrives, ``response.output_text.delta`` per guard delta, then the item's
``done`` events, ``sarsteer.decision`` and ``response.done`` (completed, cancelled or
failed). Invariant: exactly one ``response.done`` per response unless the peer is gone.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from sarsteer_guard.guard.events import GuardEvent, TextDelta, TurnDecision
from sarsteer_guard.server.protocol import event_to_message
from sarsteer_guard.server.realtime.errors import RealtimeError, error_body

Send = Callable[[dict[str, Any]], Awaitable[None]]
CancelReason = Literal["client_cancelled", "turn_detected"]
#: The extra event carrying the guard's decision; unaware clients ignore unknown types.
DECISION_EVENT = "sarsteer.decision"


def new_id(prefix: str) -> str:
    """An OpenAI-style id (``evt_...``, ``resp_...``, ``item_...``)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def server_event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event with a fresh ``event_id``."""
    return {"type": kind, "event_id": new_id("event"), **fields}


def error_event(error: RealtimeError) -> dict[str, Any]:
    """An ``error`` event."""
    return server_event("error", error=error_body(error))


def message_item(
    item_id: str, role: str, content: list[dict[str, Any]], status: str = "completed"
) -> dict[str, Any]:
    """A ``message`` conversation item."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": role,
        "content": content,
    }


def user_audio_item(item_id: str) -> dict[str, Any]:
    """A committed user turn: audio, no transcript (the guard does not transcribe)."""
    return message_item(item_id, "user", [{"type": "input_audio", "transcript": None}])


def decision_metadata(decision: TurnDecision) -> dict[str, str]:
    """The decision as response metadata (OpenAI metadata values are strings)."""
    score = decision.refusal_score
    return {
        "sarsteer_refused": "true" if decision.refused else "false",
        "sarsteer_policy": decision.policy,
        "sarsteer_rule": decision.rule or "",
        "sarsteer_alpha": f"{decision.alpha:g}",
        "sarsteer_refusal_score": "" if score is None or not math.isfinite(score) else f"{score:g}",
        "sarsteer_audit_id": decision.audit_id or "",
        "sarsteer_mode": decision.mode,
    }


class ResponseStream:
    """One response's server events; the TurnOutput of the guard turn behind it."""

    def __init__(
        self,
        send: Send,
        *,
        response_id: str,
        metadata: Mapping[str, str],
        previous_item_id: str | None,
        on_item: Callable[[dict[str, Any]], None],
    ) -> None:
        self.send = send
        self.id = response_id
        self.item_id = new_id("item")
        self.metadata = dict(metadata)
        self.previous_item_id = previous_item_id
        self.on_item = on_item
        self.text: list[str] = []
        self.final_text: str | None = None  # the decision's text: what the listener got
        self.item_open = False
        self.cancel_reason: CancelReason = "client_cancelled"
        self.done = False

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "realtime.response",
            "status": status,
            "output_modalities": ["text"],
            "metadata": self.metadata,
            **extra,
        }

    def _item(self, text: str, status: str = "completed") -> dict[str, Any]:
        content = [{"type": "output_text", "text": text}] if self.item_open else []
        return message_item(self.item_id, "assistant", content, status)

    async def created(self) -> None:
        """``response.created``."""
        await self.send(
            server_event(
                "response.created",
                response=self._response("in_progress", output=[], status_details=None, usage=None),
            )
        )

    async def _open_item(self) -> None:
        self.item_open = True
        item = message_item(self.item_id, "assistant", [], "in_progress")
        await self.send(
            server_event(
                "response.output_item.added", response_id=self.id, output_index=0, item=item
            )
        )
        await self.send(
            server_event(
                "conversation.item.added", previous_item_id=self.previous_item_id, item=item
            )
        )
        await self.send(
            server_event(
                "response.content_part.added",
                **self._part_ref(),
                part={"type": "output_text", "text": ""},
            )
        )

    def _part_ref(self) -> dict[str, Any]:
        return {
            "response_id": self.id,
            "item_id": self.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    # -- TurnOutput ------------------------------------------------------------------------
    async def event(self, event: GuardEvent) -> None:
        """A guard event: a text delta, the decision, or the guard's turn error."""
        if isinstance(event, TextDelta):
            if not self.item_open:
                await self._open_item()
            self.text.append(event.text)
            await self.send(
                server_event("response.output_text.delta", **self._part_ref(), delta=event.text)
            )
        elif isinstance(event, TurnDecision):
            await self._completed(event)
        else:
            await self._failed(event.kind, event.message)

    async def error(self, turn_id: str, kind: str, message: str) -> None:
        """A server-side failure (timeout, shutdown, internal): a failed response."""
        await self._failed(kind, message)

    async def cancelled(self, turn_id: str) -> None:
        """The client cancelled or barged in: a cancelled response."""
        await self._finish("cancelled", {"type": "cancelled", "reason": self.cancel_reason})

    # -- endings ---------------------------------------------------------------------------
    async def _completed(self, decision: TurnDecision) -> None:
        """Close the item with the text the listener got, then the decision, then done."""
        if not self.item_open and decision.text:
            await self._open_item()
        text = decision.text if self.item_open else ""
        self.final_text = text
        if self.item_open:
            ref = self._part_ref()
            await self.send(server_event("response.output_text.done", **ref, text=text))
            await self.send(
                server_event(
                    "response.content_part.done", **ref, part={"type": "output_text", "text": text}
                )
            )
            item = self._item(text)
            await self.send(
                server_event(
                    "response.output_item.done", response_id=self.id, output_index=0, item=item
                )
            )
            await self.send(
                server_event(
                    "conversation.item.done", previous_item_id=self.previous_item_id, item=item
                )
            )
            self.on_item(item)
        self.metadata.update(decision_metadata(decision))
        await self.send(
            server_event(
                DECISION_EVENT,
                response_id=self.id,
                item_id=self.item_id,
                decision=event_to_message(decision),
            )
        )
        usage = {
            "total_tokens": decision.tokens,
            "input_tokens": 0,
            "output_tokens": decision.tokens,
        }
        await self._finish("completed", None, usage=usage)

    async def _failed(self, kind: str, message: str) -> None:
        error = RealtimeError(f"sarsteer_{kind}", message, error_type="server_error")
        await self._finish("failed", {"type": "failed", "error": error_body(error)})

    async def _finish(
        self, status: str, details: dict[str, Any] | None, usage: dict[str, Any] | None = None
    ) -> None:
        if self.done:
            return
        self.done = True
        text = self.final_text if self.final_text is not None else "".join(self.text)
        item_status = "completed" if status == "completed" else "incomplete"
        output = [self._item(text, item_status)] if self.item_open else []
        await self.send(
            server_event(
                "response.done",
                response=self._response(status, output=output, status_details=details, usage=usage),
            )
        )

    async def incomplete(self, reason: str) -> None:
        """End a response that had nothing to answer (no user audio since the last one)."""
        await self._finish("incomplete", {"type": "incomplete", "reason": reason})
