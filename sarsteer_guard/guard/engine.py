"""Micro-batched, streaming, cancellable generation on one model.

One worker thread owns the model. Turns that arrive within a short batching window
and share a steering configuration (same vector set, layers, beta, positions) are
encoded together with left padding and run as one ``generate`` call, each row with
its own alpha (a row with alpha 0 is bit-identical to an unsteered run). Rows finish
independently: at their end-of-sequence token, at their own token budget, or when
their turn is cancelled (barge-in), checked by a stopping criterion on every decode
step. Tokens reach the asyncio side through ``call_soon_threadsafe``, so the event
loop never blocks on the model.

The worker thread is the model's only user: calibration (which hooks every layer) runs
as an exclusive job between batches via :meth:`GenerationEngine.run_exclusive`, because
forward hooks belong to modules, not threads, and would otherwise mix steering into
captured states and captures into served turns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from sarsteer_guard.errors import GuardError, OverloadedError
from sarsteer_guard.log import get_logger
from sarsteer_guard.models.base import AudioLanguageModel, Message
from sarsteer_guard.steering import SteeringHooks

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SteeringSpec:
    """How a row is steered; rows batch together only when everything but alpha matches."""

    vector_set_id: str | None = None
    vectors: torch.Tensor | None = None  # [layers, hidden] float32 (CPU), shared per set
    vectors_digest: str | None = None  # content digest: rows batch only with identical vectors
    layer_ids: tuple[int, ...] | None = None
    beta: tuple[float, ...] | None = None
    prompt_only: bool = False
    readout_layer: int | None = None

    @property
    def group(self) -> tuple[object, ...]:
        """Batch compatibility key (alpha deliberately excluded)."""
        return (
            self.vectors_digest,
            self.layer_ids,
            self.beta,
            self.prompt_only,
            self.readout_layer,
        )


@dataclass(frozen=True, slots=True)
class RowResult:
    """What one row produced."""

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


@dataclass(eq=False)
class GenerationRequest:
    """One row of a future batch, with its channel back to the caller's event loop."""

    conversation: Sequence[Message]
    alpha: float
    steering: SteeringSpec
    max_new_tokens: int
    loop: asyncio.AbstractEventLoop
    channel: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)
    tag: str = ""  # the turn id, for logs and observability

    def send(self, kind: str, payload: Any) -> None:
        """Deliver an item to the caller's loop (safe from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.channel.put_nowait, (kind, payload))
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self.cancelled.set()

    def cancel(self) -> None:
        """Stop this row at the next decode step (barge-in)."""
        self.cancelled.set()

    async def stream(self) -> AsyncIterator[tuple[str, Any]]:
        """Yield ``("delta", str)`` items, then ``("done", RowResult)`` or ``("error", exc)``."""
        while True:
            kind, payload = await self.channel.get()
            yield kind, payload
            if kind in ("done", "error"):
                return


class _RowStreamer(BaseStreamer):
    """Turns per-step token ids into per-row text deltas."""

    def __init__(self, engine: GenerationEngine, rows: Sequence[GenerationRequest]) -> None:
        self._engine = engine
        self._rows = rows
        self._ids: list[list[int]] = [[] for _ in rows]
        self._texts = ["" for _ in rows]
        self._done = [False] * len(rows)
        self._prompt_seen = False
        self.first_token_at: list[float | None] = [None] * len(rows)
        self.prefill_done_at: float | None = None
        eos = engine.eos_token_ids
        self._eos = eos

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        now = time.perf_counter()
        if self.prefill_done_at is None:
            self.prefill_done_at = now
        ids = value.reshape(len(self._rows), -1)[:, -1].tolist()
        for i, token in enumerate(ids):
            if self._done[i]:
                continue
            row = self._rows[i]
            if token in self._eos or row.cancelled.is_set():
                self._done[i] = True
                continue
            self._ids[i].append(int(token))
            if self.first_token_at[i] is None:
                self.first_token_at[i] = now
            if len(self._ids[i]) >= row.max_new_tokens:
                self._done[i] = True
            text = self._engine.decode(self._ids[i])
            if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
                continue
            self._emit(i, text)

    def _emit(self, i: int, text: str) -> None:
        sent = self._texts[i]
        if not text.startswith(sent):  # a tokenizer that rewrites earlier text: send the rest
            return
        delta = text[len(sent) :]
        if delta:
            self._texts[i] = text
            self._rows[i].send("delta", delta)

    def flush(self, i: int) -> str:
        """Send what is still held back (a trailing partial character) and return the text."""
        text = self.row_text(i)
        self._emit(i, text)
        return self._texts[i] if text.startswith(self._texts[i]) else text

    def end(self) -> None:
        """Nothing to flush: rows are finalised by the engine."""

    def row_text(self, i: int) -> str:
        return self._engine.decode(self._ids[i])

    def row_tokens(self, i: int) -> int:
        return len(self._ids[i])

    def row_done(self, i: int) -> bool:
        return self._done[i]


class _RowStops(StoppingCriteria):
    """Per-row stop flags: cancelled turns and rows past their own token budget."""

    def __init__(self, rows: Sequence[GenerationRequest], streamer: _RowStreamer) -> None:
        self._rows = rows
        self._streamer = streamer

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        flags = [
            row.cancelled.is_set() or self._streamer.row_done(i) for i, row in enumerate(self._rows)
        ]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]  # BoolTensor is a typing alias of Tensor


class _Job:
    """A callable run on the worker thread between batches (exclusive use of the model)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn())
        except BaseException as error:  # delivered to the waiting caller, never swallowed
            self.future.set_exception(error)


_Item = GenerationRequest | _Job | None


class _EncodeError(Exception):
    """A batch's inputs could not be built (before any token was generated)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class GenerationEngine:
    """Owns the model's worker thread; ``submit`` is safe from any event loop."""

    def __init__(
        self,
        lm: AudioLanguageModel,
        *,
        max_batch_size: int = 16,
        batch_window_s: float = 0.01,
        max_queue: int = 64,
    ) -> None:
        self.lm = lm
        self.max_batch_size = max(1, max_batch_size)
        self.batch_window_s = max(0.0, batch_window_s)
        self.max_queue = max(1, max_queue)
        self._pending: queue.Queue[_Item] = queue.Queue()
        self._backlog: list[GenerationRequest] = []
        self._jobs_after_batch: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.batches_run = 0
        self.batch_sizes: deque[int] = deque(maxlen=1024)
        #: Recent row outcomes (cancelled rows included), for observability and tests.
        self.completed: deque[RowResult] = deque(maxlen=256)
        tokenizer = getattr(lm.processor, "tokenizer", lm.processor)
        self._tokenizer = tokenizer
        eos = lm.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_token_ids: frozenset[int] = frozenset(int(i) for i in ids)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="sarsteer-generation", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new rows, let the running batch end, join the thread, fail what was queued.

        Idempotent. If the running batch outlasts ``timeout_s`` the thread is left to finish
        on its own and stays registered, so a later ``start()`` cannot launch a second worker
        on the same model.
        """
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()
            self._pending.put(None)
        thread.join(timeout_s)
        with self._lock:
            if not thread.is_alive():
                self._thread = None
            leftovers = self._drain()
        for item in leftovers:
            if isinstance(item, _Job):
                item.future.cancel()
            else:
                item.send(
                    "error", GuardError("the guard is shutting down; retry on another replica")
                )

    @property
    def running(self) -> bool:
        """The worker thread is alive and accepting rows."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping.is_set()

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a batch."""
        return self._pending.qsize() + len(self._backlog)

    def decode(self, ids: Sequence[int]) -> str:
        """Decode token ids to text without special tokens."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    # -- submission ------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> GenerationRequest:
        """Queue one row; raises :class:`OverloadedError` when the queue is full."""
        with self._lock:  # shared with stop(): a row is either queued before the drain or refused
            if not self.running:
                raise GuardError("the guard is not running: await guard.start() first")
            if self.queue_depth >= self.max_queue:
                raise OverloadedError(
                    f"{self.queue_depth} turns are already waiting; retry shortly or add replicas"
                )
            self._pending.put(request)
        return request

    def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the model to itself (between batches); blocks until it is done.

        Called from the worker thread, or while the engine is stopped, it runs inline.
        """
        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            return fn()
        job = _Job(fn)
        with self._lock:
            if self._stopping.is_set():
                raise GuardError("the guard is shutting down; retry on another replica")
            self._pending.put(job)
        result: T = job.future.result()
        return result

    # -- worker ----------------------------------------------------------------------------
    def _drain(self) -> list[GenerationRequest | _Job]:
        drained: list[GenerationRequest | _Job] = [*self._backlog, *self._jobs_after_batch]
        self._backlog.clear()
        self._jobs_after_batch.clear()
        while True:
            try:
                item = self._pending.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                drained.append(item)
        return drained

    def _next_batch(self) -> list[GenerationRequest]:
        if self._backlog:
            first = self._backlog.pop(0)
        else:
            item = self._pending.get()
            if item is None:
                return []
            if isinstance(item, _Job):
                item.run()
                return []
            first = item
        batch = [first]
        group = first.steering.group
        # Wait for company only under load: a lone turn after a lone batch goes at once,
        # so a quiet guard does not add the window to every first token.
        last_size = self.batch_sizes[-1] if self.batch_sizes else 0
        quiet = last_size <= 1 and self._pending.empty() and not self._backlog
        deadline = time.perf_counter() + (0.0 if quiet else self.batch_window_s)
        keep: list[GenerationRequest] = []
        for request in self._backlog:
            if request.steering.group == group and len(batch) < self.max_batch_size:
                batch.append(request)
            else:
                keep.append(request)
        self._backlog = keep
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                if remaining > 0:
                    item = self._pending.get(timeout=remaining)
                else:
                    item = self._pending.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._stopping.set()
                break
            if isinstance(item, _Job):
                self._jobs_after_batch.append(item)
            elif item.steering.group == group:
                batch.append(item)
            else:
                self._backlog.append(item)
        return [r for r in batch if not r.cancelled.is_set() or _notify_cancelled(r)]

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._next_batch()
            if batch:
                self._generate_isolated(batch)
            jobs, self._jobs_after_batch = self._jobs_after_batch, []
            for job in jobs:
                job.run()

    def _generate_isolated(self, batch: list[GenerationRequest]) -> None:
        """Run a batch; if it fails, retry its rows alone so one bad row fails only itself."""
        try:
            self._generate(batch)
        except _EncodeError as error:  # nothing was generated yet: isolate the bad row(s)
            if len(batch) == 1:
                log.warning("engine.row_rejected", tag=batch[0].tag, error=str(error.cause))
                batch[0].send("error", error.cause)
                return
            log.warning("engine.batch_encode_failed", rows=len(batch), error=str(error.cause))
            for request in batch:
                if request.cancelled.is_set():
                    _notify_cancelled(request)
                else:
                    self._generate_isolated([request])
        except Exception as error:  # one failed batch must not kill the worker
            log.exception("engine.batch_failed", rows=len(batch))
            for request in batch:
                request.send("error", error)

    def _generate(self, batch: list[GenerationRequest]) -> None:
        started = time.perf_counter()
        lm = self.lm
        try:
            inputs = lm.encode([list(r.conversation) for r in batch])
        except Exception as error:
            raise _EncodeError(error) from error
        streamer = _RowStreamer(self, batch)
        stops = StoppingCriteriaList([_RowStops(batch, streamer)])
        max_new = max(r.max_new_tokens for r in batch)
        spec = batch[0].steering
        alphas = [r.alpha if spec.vectors is not None else 0.0 for r in batch]
        readout: list[float] | None = None
        generate_kwargs: dict[str, Any] = {
            "inputs": inputs,
            "max_new_tokens": max_new,
            "streamer": streamer,
            "stopping_criteria": stops,
            # generate() may compile decode steps (static caches on GPUs); compiled steps skip
            # forward hooks registered after compilation, which would silently drop steering.
            "disable_compile": True,
        }
        self.batches_run += 1
        self.batch_sizes.append(len(batch))
        with torch.inference_mode():
            vectors = spec.vectors
            steering = vectors is not None and (
                any(a != 0.0 for a in alphas) or spec.readout_layer is not None
            )
            if steering and vectors is not None:
                hooks = SteeringHooks(
                    lm.decoder_layers,
                    vectors,
                    alpha=torch.tensor(alphas, dtype=torch.float32),
                    beta=None if spec.beta is None else torch.tensor(spec.beta),
                    layer_ids=None if spec.layer_ids is None else list(spec.layer_ids),
                    prompt_only=spec.prompt_only,
                    readout_layer=spec.readout_layer,
                )
                with hooks:
                    lm.generate(**generate_kwargs)
                    readout = _readout_values(hooks, len(batch))
            else:
                lm.generate(**generate_kwargs)
        finished = time.perf_counter()
        prefill_at = streamer.prefill_done_at or finished
        for i, request in enumerate(batch):
            first = streamer.first_token_at[i] or finished
            text = streamer.flush(i)
            result = RowResult(
                text=text,
                tokens=streamer.row_tokens(i),
                cancelled=request.cancelled.is_set(),
                queue_ms=(started - request.submitted) * 1000,
                prefill_ms=(prefill_at - started) * 1000,
                first_token_ms=(first - request.submitted) * 1000,
                total_ms=(finished - request.submitted) * 1000,
                batch_size=len(batch),
                readout=None if readout is None else readout[i],
                tag=request.tag,
            )
            self.completed.append(result)
            request.send("done", result)


def _readout_values(hooks: SteeringHooks, rows: int) -> list[float] | None:
    values = hooks.readout()
    if values is None:
        return None
    flat = values.float().reshape(-1).tolist()
    return [float(v) for v in flat[:rows]]


def _notify_cancelled(request: GenerationRequest) -> bool:
    request.send("error", asyncio.CancelledError())
    return False
