"""The ``transformers`` generation backend: static micro-batches over ``generate``.

One worker thread owns the model. Rows that arrive within a short batching window and share
a steering configuration (same vector set, layers, beta, positions; alpha is per row) run as
one batch (:mod:`.batch`). Tokens reach the asyncio side through ``call_soon_threadsafe``, so
the event loop never blocks on the model.

The worker thread is the model's only user while the backend serves: calibration captures
and other exclusive jobs run on it between batches (:meth:`TransformersBackend.run_exclusive`),
because forward hooks belong to modules, not threads, and would otherwise mix steering into
captured states and captures into served turns. Steering hooks are registered once, when the
backend starts, and rewritten per batch (:mod:`.steering`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import EllipsisType
from typing import Any, TypeVar

import torch

from sarsteer_guard.errors import GuardError, OverloadedError
from sarsteer_guard.guard.backend import RowDone, RowFailed, RowRequest, RowStream
from sarsteer_guard.log import get_logger
from sarsteer_guard.models.base import AudioLanguageModel, Message, ModelFacts

from .batch import Decoder, EncodeError, run_batch
from .steering import ModelSteering

__all__ = ["TransformersBackend"]

log = get_logger(__name__)

T = TypeVar("T")


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


_Item = RowStream | _Job | None


class TransformersBackend:
    """Micro-batched, streaming, cancellable generation on one transformers model.

    Args:
        model: a hub id, a checkpoint directory, a built-in name, or a loaded
            :class:`AudioLanguageModel` (then ``device``, ``dtype`` and
            ``default_system_prompt`` are the model's own).
        max_batch_size: rows per ``generate`` call.
        batch_window_s: how long the first row of a batch waits for company (under load).
        max_queue: rows allowed to wait; beyond it ``submit`` raises ``OverloadedError``.
        device, dtype, default_system_prompt: passed to ``load_model``.
    """

    name = "transformers"

    def __init__(
        self,
        model: str | AudioLanguageModel,
        *,
        max_batch_size: int = 16,
        batch_window_s: float = 0.01,
        max_queue: int = 64,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        default_system_prompt: str | EllipsisType | None = ...,
    ) -> None:
        self._model_spec = model
        self._load_options: dict[str, Any] = {
            "device": device,
            "dtype": dtype,
            "default_system_prompt": default_system_prompt,
        }
        self._lm: AudioLanguageModel | None = (
            model if isinstance(model, AudioLanguageModel) else None
        )
        self.max_batch_size = max(1, max_batch_size)
        self.batch_window_s = max(0.0, batch_window_s)
        self.max_queue = max(1, max_queue)
        self._pending: queue.Queue[_Item] = queue.Queue()
        self._backlog: list[RowStream] = []
        self._jobs_after_batch: list[_Job] = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._steering: ModelSteering | None = None
        self._decode: Decoder | None = None
        self.batches_run = 0
        self.batch_sizes: deque[int] = deque(maxlen=1024)
        #: Recent row outcomes (cancelled rows included), for observability and tests.
        self.completed: deque[RowDone] = deque(maxlen=256)

    # -- model ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model (blocking, idempotent)."""
        if self._lm is None:
            from sarsteer_guard.models import load_model

            self._lm = load_model(str(self._model_spec), **self._load_options)
        if self._decode is None:
            self._decode = Decoder(self._lm)

    @property
    def lm(self) -> AudioLanguageModel:
        """The loaded model adapter (transformers objects; the Guard never uses it)."""
        if self._lm is None:
            raise GuardError("the transformers backend has no model yet: call load() first")
        return self._lm

    @property
    def facts(self) -> ModelFacts:
        """The served model's facts (after :meth:`load`)."""
        return self.lm.facts

    def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        """Unsteered last-position states ``[rows, layers, hidden]`` (float32, CPU).

        Runs between batches on the worker (inline while stopped), with the model's lock held.
        """
        from sarsteer_guard.calibration import capture_last_states

        lm = self.lm

        # Between batches the steering hooks are disabled, so the states are unsteered.
        return self.run_exclusive(lambda: capture_last_states(lm, conversations))

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Load if needed, register the model's steering hooks, start the worker (idempotent)."""
        self.load()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if self._steering is None:
                self._steering = ModelSteering.acquire(self.lm, max_rows=self.max_batch_size)
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="sarsteer-generation", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new rows, let the running batch end, join the thread, fail what was queued.

        Idempotent. If the running batch outlasts ``timeout_s`` the thread is left to finish
        on its own and stays registered (its hooks too), so a later ``start()`` cannot launch
        a second worker on the same model.
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
                if self._steering is not None:
                    self._steering.release()
                    self._steering = None
            leftovers = self._drain()
        for item in leftovers:
            if isinstance(item, _Job):
                item.future.cancel()
            else:
                item.put(
                    RowFailed(GuardError("the guard is shutting down; retry on another replica"))
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

    # -- submission ----------------------------------------------------------------------------
    def submit(self, request: RowRequest) -> RowStream:
        """Queue one row; raises :class:`OverloadedError` when the queue is full."""
        with self._lock:  # shared with stop(): a row is either queued before the drain or refused
            if not self.running:
                raise GuardError("the guard is not running: await guard.start() first")
            if self.queue_depth >= self.max_queue:
                raise OverloadedError(
                    f"{self.queue_depth} turns are already waiting; retry shortly or add replicas"
                )
            row = RowStream(request, asyncio.get_running_loop())
            self._pending.put(row)
        return row

    def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with the model to itself (between batches); blocks until it is done.

        Called from the worker thread, or while the backend is stopped, it runs inline. Either
        way it holds the model's lock, which also keeps out another backend serving the same
        loaded model.
        """
        lm = self._lm

        def locked() -> T:
            if lm is None:
                return fn()
            with ModelSteering.exclusive(lm):
                return fn()

        thread = self._thread
        if thread is None or not thread.is_alive() or threading.current_thread() is thread:
            return locked()
        job = _Job(locked)
        with self._lock:
            if self._stopping.is_set():
                raise GuardError("the guard is shutting down; retry on another replica")
            self._pending.put(job)
        result: T = job.future.result()
        return result

    # -- worker ----------------------------------------------------------------------------------
    def _drain(self) -> list[RowStream | _Job]:
        drained: list[RowStream | _Job] = [*self._backlog, *self._jobs_after_batch]
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

    def _first_row(self) -> RowStream | None:
        """The row a new batch starts with (running any job that comes first)."""
        if self._backlog:
            return self._backlog.pop(0)
        item = self._pending.get()
        if isinstance(item, _Job):
            item.run()
            return None
        return item

    def _next_batch(self) -> list[RowStream]:
        first = self._first_row()
        if first is None:
            return []
        batch = [first]
        group = first.request.steering.group
        keep: list[RowStream] = []
        for row in self._backlog:
            if row.request.steering.group == group and len(batch) < self.max_batch_size:
                batch.append(row)
            else:
                keep.append(row)
        self._backlog = keep
        self._gather(batch, group)
        return [r for r in batch if not r.cancelled.is_set() or _notify_cancelled(r)]

    def _gather(self, batch: list[RowStream], group: tuple[object, ...]) -> None:
        """Add queued rows of the same group until the window closes or the batch is full."""
        # Wait for company only under load: a lone turn after a lone batch goes at once,
        # so a quiet guard does not add the window to every first token.
        last_size = self.batch_sizes[-1] if self.batch_sizes else 0
        quiet = last_size <= 1 and self._pending.empty() and not self._backlog
        deadline = time.perf_counter() + (0.0 if quiet else self.batch_window_s)
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                if remaining > 0:
                    item = self._pending.get(timeout=remaining)
                else:
                    item = self._pending.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._stopping.set()
                return
            if isinstance(item, _Job):
                self._jobs_after_batch.append(item)
            elif item.request.steering.group == group:
                batch.append(item)
            else:
                self._backlog.append(item)

    def _run(self) -> None:
        while not self._stopping.is_set():
            batch = self._next_batch()
            if batch:
                self._generate_isolated(batch)
            jobs, self._jobs_after_batch = self._jobs_after_batch, []
            for job in jobs:
                job.run()

    def _generate_isolated(self, batch: list[RowStream]) -> None:
        """Run a batch; if it fails, retry its rows alone so one bad row fails only itself."""
        try:
            self._generate(batch)
        except EncodeError as error:  # nothing was generated yet: isolate the bad row(s)
            if len(batch) == 1:
                log.warning("engine.row_rejected", tag=batch[0].tag, error=str(error.cause))
                batch[0].put(RowFailed(error.cause))
                return
            log.warning("engine.batch_encode_failed", rows=len(batch), error=str(error.cause))
            for row in batch:
                if row.cancelled.is_set():
                    _notify_cancelled(row)
                else:
                    self._generate_isolated([row])
        except Exception as error:  # one failed batch must not kill the worker
            log.exception("engine.batch_failed", rows=len(batch))
            for row in batch:
                row.put(RowFailed(error))

    def _generate(self, batch: list[RowStream]) -> None:
        steering, decode = self._steering, self._decode
        if steering is None or decode is None:  # pragma: no cover - start() sets both
            raise GuardError("the transformers backend is not started")
        self.batches_run += 1
        self.batch_sizes.append(len(batch))
        results = run_batch(self.lm, batch, steering, decode)
        for row, result in zip(batch, results, strict=True):
            self.completed.append(result)
            row.put(result)


def _notify_cancelled(row: RowStream) -> bool:
    row.put(RowFailed(asyncio.CancelledError()))
    return False
