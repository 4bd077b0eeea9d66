"""The ``vllm`` generation backend: :class:`~.engine.VllmEngine` behind the Guard's seam.

``Guard(engine="vllm")`` (``--engine vllm``) opens this through the backend registry. vLLM's
``AsyncLLM`` is bound to the event loop it runs on, while the seam's ``load``/``start``/``stop``
and ``capture`` block their caller and rows are read on whichever loop submitted them. So the
backend owns one event loop on a daemon thread, where the engine lives; rows cross between the
two loops only as events (:class:`~sarsteer_guard.guard.backend.RowStream`, thread-safe) and
cancellations.

Invariants:

- ``load()`` builds vLLM and runs its steering self-check (:mod:`.selfcheck`); if either
  fails, nothing is left running and the error is one line (a configuration that cannot
  steer is refused, never served unsteered). Facts and captures work from then on.
- ``stop()`` fails every row in flight, shuts vLLM down and ends the loop thread; a later
  ``start()`` loads again (the engine holds accelerator memory, so a stopped backend keeps none).
- A row's steering is a :class:`~sarsteer_guard.guard.backend.SteeringSpec` turned into a
  vector-set table entry on the workers; alpha 0 rows are bit-identical to unsteered ones,
  whatever they are batched with (the engine's per-token steering writes exact zeros).
- Captures are unsteered vLLM requests like any other: steering is per request inside the
  workers, so a capture shares no state with served rows and needs no exclusive window.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, TypeVar

import torch

from sarsteer_guard.errors import GuardError, OverloadedError, one_line
from sarsteer_guard.guard.backend import RowDelta, RowDone, RowFailed, RowRequest, RowStream
from sarsteer_guard.log import get_logger
from sarsteer_guard.models.base import Message, ModelFacts

from .engine import RowDelta as EngineDelta
from .engine import RowDone as EngineDone
from .engine import RowFailed as EngineFailed
from .engine import SteeringSet, VllmEngine, VllmEngineConfig, VllmRow
from .resolve import ResolvedModel, resolve_model

__all__ = ["OPTIONS_ENV", "VllmBackend", "check_options", "env_options"]

log = get_logger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class _Row(RowStream):
    """A seam row whose cancel also aborts its vLLM request, and which ends exactly once."""

    abort: Callable[[], None] | None = field(default=None, repr=False)
    _ended: bool = field(default=False, repr=False)
    _end_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cancel(self) -> None:
        """Flag the row and abort its vLLM request at the next step (any thread)."""
        super().cancel()
        abort = self.abort
        if abort is not None:
            abort()

    def send(self, event: RowDelta | RowDone | RowFailed) -> None:
        """Deliver an event unless the row has already ended (stop() and the engine race)."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = not isinstance(event, RowDelta)
        self.put(event)


#: Environment variable with engine options as a JSON object (for the CLI and compose files).
OPTIONS_ENV = "SARSTEER_VLLM_OPTIONS"


def env_options() -> dict[str, Any]:
    """Engine options from ``$SARSTEER_VLLM_OPTIONS`` (a JSON object; empty when unset).

    Raises:
        GuardError: the variable is not a JSON object.
    """
    raw = os.environ.get(OPTIONS_ENV, "").strip()
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as error:
        raise GuardError(
            f'{OPTIONS_ENV} is not valid JSON ({error.msg}); use e.g. {{"tensor_parallel_size": 2}}'
        ) from error
    if not isinstance(options, dict):
        raise GuardError(f'{OPTIONS_ENV} must be a JSON object, e.g. {{"max_model_len": 4096}}')
    return options


def check_options(options: Mapping[str, object]) -> None:
    """Refuse option names :class:`~.engine.VllmEngineConfig` does not have (one line)."""
    fields = set(VllmEngineConfig.__dataclass_fields__) - {"model", "model_id"}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise GuardError(
            f"unknown vLLM engine option(s) {', '.join(unknown)}; use: {', '.join(sorted(fields))}"
        )


class VllmBackend:
    """Continuously batched, per-request steered generation on vLLM.

    Args:
        model: a built-in name (``tiny``), a checkpoint directory in the hub layout, or a hub
            id present in the local Hugging Face cache. A loaded transformers model is refused:
            vLLM loads its own weights.
        max_batch_size: vLLM's concurrent sequences (``max_num_seqs``) unless that is given.
        batch_window_s: unused (vLLM batches continuously; accepted for the seam's signature).
        max_queue: rows allowed to wait for their first token; beyond it ``submit`` raises
            :class:`OverloadedError`.
        default_system_prompt: system message for conversations without one (``...``: none,
            Qwen2-Audio's own default, as on the transformers engine).
        min_new_tokens: end-of-sequence is ignored before this many tokens (benchmarks only,
            like ``generation_config.min_new_tokens`` on the transformers engine).
        **engine_options: :class:`~.engine.VllmEngineConfig` fields (``tensor_parallel_size``,
            ``gpu_memory_utilization``, ``max_num_seqs``, ``max_model_len``, ``enforce_eager``,
            ``dtype``, ...), over those in ``$SARSTEER_VLLM_OPTIONS`` (JSON); an unknown name
            is a one-line error.
    """

    name = "vllm"

    def __init__(
        self,
        model: object,
        *,
        max_batch_size: int = 16,
        batch_window_s: float = 0.01,
        max_queue: int = 64,
        default_system_prompt: str | EllipsisType | None = ...,
        min_new_tokens: int = 0,
        **engine_options: Any,
    ) -> None:
        del batch_window_s  # continuous batching: a row joins the running batch at once
        if importlib.util.find_spec("vllm") is None:
            raise GuardError(
                "engine 'vllm' needs vllm, which is not installed: pip install "
                "'sarsteer-guard[vllm]' (CPU: see docs/vllm.md for the torch wheels to remove)"
            )
        if not isinstance(model, str):
            raise GuardError(
                "the vLLM engine loads its own weights: pass a model name or directory, not a "
                "loaded model (or use engine='transformers')"
            )
        engine_options = {**env_options(), **engine_options}
        check_options(engine_options)
        engine_options.setdefault("max_num_seqs", max(1, max_batch_size))
        self._model_spec = model
        self._options = engine_options
        self._system = (
            None if isinstance(default_system_prompt, EllipsisType) else default_system_prompt
        )
        self.max_queue = max(1, max_queue)
        self.min_new_tokens = max(0, min_new_tokens)
        self._resolved: ResolvedModel | None = None
        self._engine: VllmEngine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._facts: ModelFacts | None = None
        self._accepting = False
        self._lock = threading.Lock()
        self._rows: set[_Row] = set()
        self._waiting = 0  # rows submitted without a first token yet

    # -- model -------------------------------------------------------------------------------
    @property
    def facts(self) -> ModelFacts:
        """The served model's facts (after :meth:`load`; kept after :meth:`stop`)."""
        if self._facts is None:
            raise GuardError("the vLLM backend has no model yet: call load() first")
        return self._facts

    @property
    def engine(self) -> VllmEngine:
        """The running engine (tests and benchmarks read its counters)."""
        if self._engine is None:
            raise GuardError("the vLLM backend is not loaded: call load() first")
        return self._engine

    def load(self) -> None:
        """Build vLLM, bind the steering runtime and pass the self-check (blocking, idempotent).

        Raises:
            ModelLoadError: the model cannot be served, or cannot be steered (one line).
        """
        with self._lock:
            if self._engine is not None:
                return
            resolved = self._resolved or resolve_model(self._model_spec)
            self._resolved = resolved
            config = VllmEngineConfig(
                model=str(resolved.path), model_id=resolved.model_id, **self._options
            )
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="sarsteer-vllm", daemon=True)
            thread.start()
            engine = VllmEngine(config)
            try:
                asyncio.run_coroutine_threadsafe(engine.start(), loop).result()
            except BaseException:
                _end_loop(loop, thread)
                raise
            self._engine, self._loop, self._thread = engine, loop, thread
            self._facts = self._seam_facts(engine, resolved)
        atexit.register(self.stop)
        log.info(
            "vllm.loaded",
            model=resolved.model_id,
            eager=config.enforce_eager,
            max_num_seqs=config.max_num_seqs,
            tensor_parallel_size=config.tensor_parallel_size,
        )

    def _seam_facts(self, engine: VllmEngine, resolved: ResolvedModel) -> ModelFacts:
        facts = engine.facts
        return ModelFacts(
            model_id=resolved.model_id,
            fingerprint=facts.fingerprint,
            num_layers=facts.num_layers,
            hidden_size=facts.hidden_size,
            sampling_rate=facts.sampling_rate,
            is_test_model=resolved.is_test_model,
            default_system_prompt=self._system,
        )

    def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        """Unsteered last-prompt states ``[rows, layers, hidden]`` float32 CPU, through vLLM."""
        engine = self.engine
        convs = [self._with_system(c) for c in conversations]
        return self._call(engine.capture(convs))

    def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` now: vLLM keeps steering per request, so no window needs clearing.

        Served rows and captures never share mutable model state here (each request carries
        its own steering into the workers), unlike the transformers engine's module hooks.
        """
        return fn()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Load if needed and accept rows (blocking, idempotent)."""
        self.load()
        self._accepting = True

    def stop(self) -> None:
        """Refuse rows, fail those in flight, shut vLLM down (blocking, idempotent)."""
        with self._lock:
            self._accepting = False
            engine, loop, thread = self._engine, self._loop, self._thread
            self._engine = self._loop = self._thread = None
            rows, self._rows = list(self._rows), set()
        if engine is None or loop is None or thread is None:
            return
        atexit.unregister(self.stop)
        for row in rows:  # ended here, so the engine's cancellation adds nothing after it
            row.send(RowFailed(GuardError("the guard is shutting down; retry on another replica")))
        try:
            asyncio.run_coroutine_threadsafe(engine.stop(), loop).result(timeout=60)
        except Exception as error:  # shutting down anyway: log, never raise from stop()
            log.warning("vllm.stop_failed", error=one_line(error))
        finally:
            _end_loop(loop, thread)

    @property
    def running(self) -> bool:
        """Started, its engine alive, accepting rows."""
        return self._accepting and self._engine is not None and self._engine.running

    @property
    def queue_depth(self) -> int:
        """Rows submitted that have not produced their first token."""
        return self._waiting

    # -- rows --------------------------------------------------------------------------------
    def submit(self, request: RowRequest) -> RowStream:
        """Start one row in the running batch (on the caller's loop; never blocks)."""
        with self._lock:
            loop = self._loop
            if not self.running or loop is None:
                raise GuardError("the guard is not running: await guard.start() first")
            if self._waiting >= self.max_queue:
                raise OverloadedError(
                    f"{self._waiting} turns are already waiting; retry shortly or add replicas"
                )
            row = _Row(request, asyncio.get_running_loop())
            self._rows.add(row)
            self._waiting += 1
        asyncio.run_coroutine_threadsafe(self._drive(row), loop)
        return row

    async def _drive(self, row: _Row) -> None:
        """On the engine's loop: run the row, translate its events, always end it once."""
        waiting = True
        try:
            if row.cancelled.is_set():
                row.send(RowFailed(asyncio.CancelledError()))
                return
            handle = self.engine.submit(self._engine_row(row.request))
            row.abort = _threadsafe(asyncio.get_running_loop(), handle.cancel)
            if row.cancelled.is_set():
                handle.cancel()
            async for event in handle.events():
                if waiting:
                    waiting = False
                    self._left_queue()
                self._forward(row, event)
        except Exception as error:  # a bad row fails alone
            log.warning("vllm.row_failed", tag=row.tag, error=one_line(error))
            row.send(RowFailed(error))
        finally:
            if waiting:
                self._left_queue()
            with self._lock:
                self._rows.discard(row)

    def _left_queue(self) -> None:
        with self._lock:
            self._waiting = max(0, self._waiting - 1)

    def _forward(self, row: _Row, event: EngineDelta | EngineDone | EngineFailed) -> None:
        if isinstance(event, EngineDelta):
            if event.text:
                row.send(RowDelta(event.text))
        elif isinstance(event, EngineFailed):
            row.send(RowFailed(event.error))
        else:
            row.send(self._done(row, event))

    def _done(self, row: _Row, done: EngineDone) -> RowDone:
        eos = self._resolved.eos_token_ids if self._resolved is not None else frozenset()
        ids = list(done.token_ids)
        if ids and ids[-1] in eos:
            ids.pop()  # counted as on the transformers engine: the end token is not a reply token
        text = self._flush(row, done.text, ids)
        ended = time.perf_counter()
        return RowDone(
            text=text,
            tokens=len(ids),
            cancelled=done.cancelled or row.cancelled.is_set(),
            queue_ms=0.0,
            prefill_ms=done.first_token_ms,
            first_token_ms=done.first_token_ms,
            total_ms=(ended - row.submitted) * 1000,
            batch_size=0,
            readout=done.readout,
            tag=row.tag,
        )

    def _flush(self, row: _Row, sent: str, ids: Sequence[int]) -> str:
        """The row's final text, decoded as the transformers engine decodes it.

        vLLM's incremental detokenizer holds back an unfinished multi-byte character forever;
        the transformers engine sends the full decode at the end. Sending the rest here keeps
        both engines' texts equal for the same tokens (deltas still concatenate to the text).
        """
        tokenizer: Any = getattr(self.engine.renderer.processor, "tokenizer", None)
        if tokenizer is None:
            return sent
        full = str(tokenizer.decode(list(ids), skip_special_tokens=True))
        if not full.startswith(sent):  # a tokenizer that rewrites earlier text: keep what was sent
            return sent
        if len(full) > len(sent):
            row.send(RowDelta(full[len(sent) :]))
        return full

    def _engine_row(self, request: RowRequest) -> VllmRow:
        spec = request.steering
        conversation = self._with_system(request.conversation)
        if spec.vectors is None:
            return VllmRow(
                conversation,
                request.max_new_tokens,
                tag=request.tag,
                min_new_tokens=self.min_new_tokens,
            )
        steering = SteeringSet(
            vectors=spec.vectors.tensor,
            digest=spec.vectors.digest,
            layer_ids=spec.layer_ids,
            beta=spec.beta,
        )
        return VllmRow(
            conversation,
            request.max_new_tokens,
            steering=steering,
            alpha=float(request.alpha),
            prompt_only=spec.prompt_only,
            readout_layer=spec.vectors.readout_layer,
            tag=request.tag,
            min_new_tokens=self.min_new_tokens,
        )

    def _with_system(self, conversation: Sequence[Message]) -> list[Message]:
        """The conversation as the transformers adapter renders it (default system prompt)."""
        if self._system and not any(m.role == "system" for m in conversation):
            return [Message(role="system", text=self._system), *conversation]
        return list(conversation)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise GuardError("the vLLM backend is not loaded: call load() first")
        if threading.current_thread() is self._thread:
            coro.close()
            raise GuardError("blocking call on the vLLM engine's own thread")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` made callable from any thread: it runs on ``loop`` (a no-op once that is closed)."""

    def call() -> None:
        # RuntimeError: the engine's loop is gone, and its requests with it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn)

    return call


def _end_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    if not thread.is_alive():
        loop.close()
