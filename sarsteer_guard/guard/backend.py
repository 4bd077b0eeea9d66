"""The generation-backend seam: what the Guard needs from an engine that runs the model.

The Guard never touches a framework object. It submits rows (one conversation, its steering,
its alpha, its token budget) and reads each row's events; it asks the backend for the model's
facts and for captures when a vector set must be calibrated. ``transformers`` (static
micro-batches over ``generate``, :mod:`sarsteer_guard.backends.transformers`) is the default;
a second engine (vLLM with continuous batching) implements the same :class:`GenerationBackend`
and registers under its own name (:func:`sarsteer_guard.backends.register_backend`).

Contract, for every backend:

- Lifecycle: construction does no I/O; :meth:`~GenerationBackend.load` (blocking, idempotent)
  loads the model, after which :attr:`~GenerationBackend.facts` and
  :meth:`~GenerationBackend.capture` work; :meth:`~GenerationBackend.start` /
  :meth:`~GenerationBackend.stop` (blocking, idempotent) serve rows. ``stop`` ends every queued
  or running row with :class:`RowFailed`; a stopped backend can be started again.
- Rows: :meth:`~GenerationBackend.submit` is called on the caller's event loop, never blocks,
  and raises :class:`~sarsteer_guard.errors.OverloadedError` (queue full) or
  :class:`~sarsteer_guard.errors.GuardError` (not running) instead of queueing. The returned
  :class:`RowHandle` yields zero or more :class:`RowDelta`, then exactly one :class:`RowDone`
  or :class:`RowFailed`, on that loop. Deltas concatenate to ``RowDone.text``.
- Cancel: :meth:`RowHandle.cancel` stops the row at its next decode step (barge-in); the row
  still ends with ``RowDone(cancelled=True)`` (or ``RowFailed`` if it never started).
- Steering: a row's :class:`SteeringSpec` names its vector set, layers, beta and positions;
  alpha is per row. A row with alpha 0 must be bit-identical to an unsteered run, whatever it
  is batched with. Steering is a safety control: a backend that cannot apply a spec (compiled
  code that would skip it, an unknown layer) fails the row loudly, never serves it unsteered.
- Calibration: :meth:`~GenerationBackend.capture` returns unsteered last-position states of
  every decoder layer, ``[rows, layers, hidden]`` float32 on the CPU; it blocks its caller (a
  worker thread, never the event loop) and never shares the model with a running batch.
  :meth:`~GenerationBackend.run_exclusive` runs any such job with the model to itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import torch

    from sarsteer_guard.guard.vectors import LoadedVectors
    from sarsteer_guard.models.base import Message, ModelFacts

__all__ = [
    "GenerationBackend",
    "RowDelta",
    "RowDone",
    "RowEvent",
    "RowFailed",
    "RowHandle",
    "RowRequest",
    "RowStream",
    "SteeringSpec",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SteeringSpec:
    """How a row is steered; rows batch together only when everything but alpha matches.

    ``vectors`` None means unsteered. With vectors, the backend adds ``alpha * beta_l * v_l``
    at the last position of each layer in ``layer_ids`` (None = all), on the prefill only
    when ``prompt_only``, and reports the prefill readout at ``vectors.readout_layer``.
    """

    vectors: LoadedVectors | None = None
    layer_ids: tuple[int, ...] | None = None
    beta: tuple[float, ...] | None = None
    prompt_only: bool = False

    @property
    def vector_set_id(self) -> str | None:
        """Store id of the vector set (what decisions and audit records carry)."""
        return None if self.vectors is None else self.vectors.id

    @property
    def group(self) -> tuple[object, ...]:
        """Batch compatibility key (alpha deliberately excluded)."""
        digest = None if self.vectors is None else self.vectors.digest
        return (digest, self.layer_ids, self.beta, self.prompt_only)


@dataclass(frozen=True, slots=True)
class RowRequest:
    """One row to generate: a conversation and how to steer it."""

    conversation: Sequence[Message]
    steering: SteeringSpec
    alpha: float
    max_new_tokens: int
    tag: str = ""  # the turn id, for logs and observability


@dataclass(frozen=True, slots=True)
class RowDelta:
    """New text of a row (never empty; may end mid-word, never mid-character)."""

    text: str
    type: Literal["delta"] = "delta"


@dataclass(frozen=True, slots=True)
class RowDone:
    """What a row produced. Times are from submission; ``readout`` is None when unsteered.

    Backends that cannot tell (continuous batching has no fixed batch) report
    ``batch_size`` 0 and ``prefill_ms`` as the time to the first token.
    """

    text: str
    tokens: int
    cancelled: bool
    queue_ms: float
    prefill_ms: float
    first_token_ms: float
    total_ms: float
    batch_size: int
    readout: float | None
    tag: str = ""
    type: Literal["done"] = "done"


@dataclass(frozen=True, slots=True)
class RowFailed:
    """The row ended without a result: its own error, a shutdown, or cancelled before it ran."""

    error: BaseException
    type: Literal["failed"] = "failed"

    @property
    def kind(self) -> str:
        """The error's kind (``GuardError.kind``), ``cancelled``, or ``model``."""
        if isinstance(self.error, asyncio.CancelledError):
            return "cancelled"
        return str(getattr(self.error, "kind", "model"))


RowEvent = RowDelta | RowDone | RowFailed


@runtime_checkable
class RowHandle(Protocol):
    """A submitted row, read on the event loop that submitted it."""

    @property
    def tag(self) -> str:
        """The request's tag."""
        ...

    def cancel(self) -> None:
        """Stop the row at its next decode step (safe from any thread, idempotent)."""
        ...

    def events(self) -> AsyncIterator[RowEvent]:
        """Deltas, then one :class:`RowDone` or :class:`RowFailed`; read it once."""
        ...


@runtime_checkable
class GenerationBackend(Protocol):
    """An engine that runs one model for the Guard (see the module docstring for the rules)."""

    @property
    def name(self) -> str:
        """Registry name (``transformers``, ``vllm``...)."""
        ...

    @property
    def facts(self) -> ModelFacts:
        """The served model's facts; valid after :meth:`load`."""
        ...

    @property
    def running(self) -> bool:
        """Started and accepting rows."""
        ...

    @property
    def queue_depth(self) -> int:
        """Rows accepted but not yet generating."""
        ...

    def load(self) -> None:
        """Load the model (blocking, idempotent); rows are not served until :meth:`start`."""
        ...

    def start(self) -> None:
        """Start serving rows (blocking, idempotent; loads first if needed)."""
        ...

    def stop(self) -> None:
        """Stop serving (blocking, idempotent): refuse new rows, fail queued and running ones."""
        ...

    def submit(self, request: RowRequest) -> RowHandle:
        """Queue one row; call it on the event loop that will read its events."""
        ...

    def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the model to itself (between batches); blocks until it is done."""
        ...

    def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        """Unsteered last-position states of every layer: ``[rows, layers, hidden]`` float32 CPU."""
        ...


@dataclass(eq=False)
class RowStream:
    """A :class:`RowHandle` for backends that generate on their own threads.

    Events are put from any thread (:meth:`put`) and read on the loop that submitted the row;
    cancellation is a thread-safe flag the generating side polls at every decode step.
    """

    request: RowRequest
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    _queue: asyncio.Queue[RowEvent] = field(default_factory=asyncio.Queue)

    @property
    def tag(self) -> str:
        """The request's tag."""
        return self.request.tag

    def put(self, event: RowEvent) -> None:
        """Deliver an event to the reading loop (safe from any thread)."""
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the reader's loop is closed: nobody is listening any more
            self.cancelled.set()

    def cancel(self) -> None:
        """Stop this row at the next decode step (barge-in)."""
        self.cancelled.set()

    async def events(self) -> AsyncIterator[RowEvent]:
        """Deltas, then one :class:`RowDone` or :class:`RowFailed`."""
        while True:
            event = await self._queue.get()
            yield event
            if not isinstance(event, RowDelta):
                return
