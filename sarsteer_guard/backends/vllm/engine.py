"""``VllmEngine``: streaming, cancellable, continuously batched generation on vLLM, steered.

Each row (one turn) is one vLLM request: the conversation rendered with the checkpoint's chat
template (:mod:`.render`), its audio as multimodal data, its steering in
``SamplingParams.extra_args`` (:mod:`.protocol`) and a prefix-cache salt per steering. Rows
join the running batch at vLLM's next step; text deltas stream as tokens arrive; cancelling a
row aborts its request and frees its slot. Vector sets are uploaded to every worker once, into
one of ``max_sets`` table slots (least recently used set without rows in flight is replaced).

Semantics match the transformers engine (``guard/engine.py``): greedy decoding; per-row alpha;
a row with alpha 0 is bit-identical to an unsteered row; the readout is the projection of the
readout layer's state at the last prompt token (before that layer's offset) onto ``unit(v)``.

``start()`` refuses configurations that cannot steer and runs a canary self-check
(:mod:`.selfcheck`): if steering does not change the canary's readout and tokens in the mode
the engine actually runs, start fails with one line and the engine is shut down.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sarsteer_guard.errors import GuardError, ModelLoadError, OverloadedError, one_line
from sarsteer_guard.log import get_logger
from sarsteer_guard.models.base import Message

from .facts import ModelFacts, read_facts
from .protocol import EXTRA_KEY, RowSteering, cache_salt
from .render import ChatRenderer

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = [
    "RowDelta",
    "RowDone",
    "RowEvent",
    "RowFailed",
    "RowHandle",
    "SteeringSet",
    "VllmEngine",
    "VllmEngineConfig",
    "VllmRow",
]

log = get_logger(__name__)

_WORKER_EXTENSION = "sarsteer_guard.backends.vllm.worker.SarsteerWorkerExtension"
#: Vector-set slots per worker; must equal ``models.DEFAULT_MAX_SETS`` (checked at start).
MAX_SETS = 16


class SteeringUnavailableError(ModelLoadError):
    """The vLLM engine cannot steer in the configuration it runs (fatal at start)."""

    kind = "steering"


@dataclass(frozen=True, slots=True)
class VllmEngineConfig:
    """Knobs of the vLLM backend (names as vLLM's engine arguments where they exist).

    Attributes:
        model: checkpoint directory in the hub layout (see ``models.hub_layout``).
        model_id: name reported in model facts (default: ``model``).
        dtype: ``auto`` (vLLM's choice: bfloat16 on CPU), ``float32``, ``bfloat16``...
        tensor_parallel_size: GPUs the model is split over.
        gpu_memory_utilization: fraction of GPU memory vLLM may take (GPU only).
        max_num_seqs: requests decoded together (vLLM's batch slots).
        max_model_len: longest prompt + reply (default: the model's).
        enforce_eager: run without torch.compile / CUDA graphs.
        enable_prefix_caching: reuse key/values of shared prompt prefixes (salted per steering).
        max_num_batched_tokens: tokens per step (chunked-prefill chunk size).
        kv_cache_gib: CPU KV-cache size (``VLLM_CPU_KVCACHE_SPACE``); ignored on GPUs.
        max_audios_per_prompt: audio clips one conversation may carry.
        block_size: KV-cache block size in tokens (prefix caching shares whole blocks).
        num_kv_blocks: fixed number of KV blocks (None: sized from memory); small values force
            preemption, which tests use.
        self_check: run the canary self-check at start (never disable in production).
        seed: vLLM's seed (greedy decoding does not depend on it).
    """

    model: str
    model_id: str | None = None
    dtype: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 32
    max_model_len: int | None = None
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    max_num_batched_tokens: int | None = None
    kv_cache_gib: int | None = 1
    max_audios_per_prompt: int = 8
    block_size: int | None = None
    num_kv_blocks: int | None = None
    self_check: bool = True
    seed: int = 0


@dataclass(frozen=True, eq=False)
class SteeringSet:
    """A vector set as the workers hold it: ``beta_l * v_l`` on ``layer_ids``, zero elsewhere.

    ``set_id`` names the content (vectors digest, layers, beta), so equal settings share a slot.
    """

    vectors: torch.Tensor  # [layers, hidden] float32
    digest: str
    layer_ids: tuple[int, ...] | None = None
    beta: tuple[float, ...] | None = None

    @property
    def set_id(self) -> str:
        """Content id of the table entry (vectors, layers, beta)."""
        payload = repr((self.digest, self.layer_ids, self.beta)).encode("utf-8")
        return hashlib.sha256(payload).hexdigest()[:24]


@dataclass(frozen=True, eq=False)
class VllmRow:
    """One turn to generate."""

    conversation: Sequence[Message]
    max_new_tokens: int
    steering: SteeringSet | None = None
    alpha: float = 0.0
    prompt_only: bool = False
    readout_layer: int | None = None
    tag: str = ""
    min_new_tokens: int = 0  # end-of-sequence is ignored before this many (benchmarks)


@dataclass(frozen=True, slots=True)
class RowDelta:
    """New text of a row."""

    text: str


@dataclass(frozen=True, slots=True)
class RowDone:
    """A row ended (end of sequence, budget, or cancelled)."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    readout: float | None
    cancelled: bool
    first_token_ms: float
    total_ms: float
    tag: str = ""


@dataclass(frozen=True, slots=True)
class RowFailed:
    """A row could not be generated (bad input or engine failure); others go on."""

    error: Exception


RowEvent = RowDelta | RowDone | RowFailed


@dataclass(eq=False)
class RowHandle:
    """A submitted row: iterate :meth:`events`; :meth:`cancel` aborts it (barge-in)."""

    rid: str
    row: VllmRow
    queue: asyncio.Queue[RowEvent] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    started: bool = False  # first output arrived
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    first_token_at: float | None = None

    def cancel(self) -> None:
        """Abort the request at vLLM's next step; the stream ends with a cancelled RowDone."""
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def events(self) -> AsyncIterator[RowEvent]:
        """Deltas, then exactly one :class:`RowDone` or :class:`RowFailed`."""
        while True:
            event = await self.queue.get()
            yield event
            if not isinstance(event, RowDelta):
                return

    async def result(self) -> RowDone:
        """Wait for the end; raise the row's error if it failed."""
        async for event in self.events():
            if isinstance(event, RowFailed):
                raise event.error
            if isinstance(event, RowDone):
                return event
        raise GuardError("row stream ended without a result")  # pragma: no cover


class _SetSlots:
    """Which vector set is in which worker slot; least recently used idle set is replaced."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: OrderedDict[str, int] = OrderedDict()
        self._busy: dict[str, int] = {}

    def find(self, set_id: str) -> int | None:
        slot = self._slots.get(set_id)
        if slot is not None:
            self._slots.move_to_end(set_id)
        return slot

    def claim(self, set_id: str) -> int:
        """A slot for a set not yet uploaded (evicting an idle one if all are taken)."""
        used = set(self._slots.values())
        free = [s for s in range(self.size) if s not in used]
        if free:
            slot = free[0]
        else:
            idle = [k for k in self._slots if self._busy.get(k, 0) == 0]
            if not idle:
                raise OverloadedError(
                    f"all {self.size} vector-set slots have turns in flight; retry shortly"
                )
            slot = self._slots.pop(idle[0])
        self._slots[set_id] = slot
        return slot

    def hold(self, set_id: str) -> None:
        self._busy[set_id] = self._busy.get(set_id, 0) + 1

    def release(self, set_id: str) -> None:
        left = self._busy.get(set_id, 0) - 1
        if left > 0:
            self._busy[set_id] = left
        else:
            self._busy.pop(set_id, None)


class VllmEngine:
    """Steered generation on vLLM's ``AsyncLLM`` (front end in this process)."""

    def __init__(self, config: VllmEngineConfig) -> None:
        self.config = config
        self._llm: AsyncLLM | None = None
        self._renderer: ChatRenderer | None = None
        self._facts: ModelFacts | None = None
        self._slots = _SetSlots(MAX_SETS)
        self._upload_lock: asyncio.Lock | None = None
        self._ids = itertools.count()
        self._prefix = f"sg{os.getpid()}-{id(self) & 0xFFFF:04x}"
        self._inflight: dict[str, RowHandle] = {}
        self.worker_facts: dict[str, Any] = {}

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def facts(self) -> ModelFacts:
        """Model facts (model_id, fingerprint, num_layers, hidden_size, sampling_rate)."""
        if self._facts is None:
            raise GuardError("the vLLM engine is not started: await engine.start() first")
        return self._facts

    @property
    def renderer(self) -> ChatRenderer:
        """The checkpoint's chat renderer (its processor and tokenizer); after :meth:`start`."""
        if self._renderer is None:
            raise GuardError("the vLLM engine is not started: await engine.start() first")
        return self._renderer

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._llm is not None

    @property
    def queue_depth(self) -> int:
        """Rows submitted that have not produced their first output yet."""
        return sum(1 for h in self._inflight.values() if not h.started)

    async def start(self) -> None:
        """Build the engine, bind the steering runtime, run the self-check (idempotent).

        Raises:
            SteeringUnavailableError: the configuration cannot steer or the self-check failed.
            ModelLoadError: the checkpoint cannot be served.
        """
        if self._llm is not None:
            return
        config = self.config
        self._check_config()
        path = config.model
        self._facts, self._renderer = await asyncio.to_thread(self._read_checkpoint, path)
        self._upload_lock = asyncio.Lock()
        self._llm = self._build(path)
        try:
            await self._attach()
            if config.self_check:
                from .selfcheck import run_self_check

                await run_self_check(self)
        except BaseException:
            await self.stop()
            raise

    def _read_checkpoint(self, path: str) -> tuple[ModelFacts, ChatRenderer]:
        directory = str(Path(path).expanduser())
        facts = read_facts(directory, model_id=self.config.model_id or path)
        return facts, ChatRenderer.from_pretrained(directory)

    async def stop(self) -> None:
        """Cancel rows in flight and shut vLLM down (idempotent)."""
        llm, self._llm = self._llm, None
        for handle in list(self._inflight.values()):
            handle.cancel()
        if llm is not None:
            llm.shutdown()

    # -- rows ------------------------------------------------------------------------------
    def submit(self, row: VllmRow) -> RowHandle:
        """Start generating ``row``; returns at once (events stream through the handle)."""
        if self._llm is None:
            raise GuardError("the vLLM engine is not started: await engine.start() first")
        if row.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {row.max_new_tokens}")
        handle = RowHandle(rid=f"{self._prefix}-{next(self._ids)}", row=row)
        self._inflight[handle.rid] = handle
        handle.task = asyncio.get_running_loop().create_task(self._drive(handle))
        return handle

    async def generate(self, row: VllmRow) -> RowDone:
        """Submit and wait for the result."""
        return await self.submit(row).result()

    async def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        """Last-prompt-position state of every layer per conversation, ``[rows, L, H]`` float32.

        Unsteered; each conversation is a one-token request, all batched together.
        """
        llm = self._require()
        facts = self.facts
        rids = [f"{self._prefix}-cap{next(self._ids)}" for _ in conversations]
        await asyncio.gather(
            *(
                self._run_once(llm, rid, conv, RowSteering(rid=rid, capture=True))
                for rid, conv in zip(rids, conversations, strict=True)
            )
        )
        results = await self._pop(rids)
        out = torch.empty(len(rids), facts.num_layers, facts.hidden_size, dtype=torch.float32)
        for i, rid in enumerate(rids):
            data = results.get(rid, (None, None))[1]
            if data is None:
                raise GuardError(f"no capture came back for conversation {i}; retry calibration")
            array = np.frombuffer(data, dtype=np.float32).reshape(
                facts.num_layers, facts.hidden_size
            )
            out[i] = torch.from_numpy(array.copy())
        return out

    async def worker_stats(self) -> dict[str, int]:
        """The first worker's steering counters (steps, chunked prefills, resumed, steered)."""
        replies = await self._require().collective_rpc("sarsteer_stats")
        return {str(k): int(v) for k, v in replies[0].items()}

    # -- internals -------------------------------------------------------------------------
    def _require(self) -> AsyncLLM:
        if self._llm is None:
            raise GuardError("the vLLM engine is not started: await engine.start() first")
        return self._llm

    def _check_config(self) -> None:
        config = self.config
        if config.tensor_parallel_size < 1 or config.max_num_seqs < 1:
            raise SteeringUnavailableError(
                "tensor_parallel_size and max_num_seqs must be >= 1; fix the vLLM settings"
            )

    def _build(self, path: str) -> AsyncLLM:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        path = os.path.expanduser(path)
        config = self.config
        if config.kv_cache_gib is not None:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(config.kv_cache_gib)))
        kwargs: dict[str, Any] = {
            "model": path,
            "dtype": config.dtype,
            "tensor_parallel_size": config.tensor_parallel_size,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "max_num_seqs": config.max_num_seqs,
            "max_model_len": config.max_model_len,
            "enforce_eager": config.enforce_eager,
            "enable_prefix_caching": config.enable_prefix_caching,
            "worker_extension_cls": _WORKER_EXTENSION,
            "limit_mm_per_prompt": {"audio": config.max_audios_per_prompt},
            "seed": config.seed,
        }
        optional = {
            "max_num_batched_tokens": config.max_num_batched_tokens,
            "block_size": config.block_size,
            "num_gpu_blocks_override": config.num_kv_blocks,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if torch.cuda.is_available() and not config.enforce_eager:
            # Full CUDA graphs would capture the outer model's forward, which writes the
            # steering buffers; piecewise graphs leave it eager and replay the layers' adds.
            kwargs["compilation_config"] = {"cudagraph_mode": "PIECEWISE"}
        try:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        except Exception as error:
            raise ModelLoadError(f"vLLM cannot serve {path}: {one_line(error)}") from error

    async def _attach(self) -> None:
        llm = self._require()
        try:
            replies = await llm.collective_rpc("sarsteer_attach")
        except Exception as error:
            raise SteeringUnavailableError(
                f"vLLM loaded no steerable model ({one_line(error)}); refusing to serve unsteered"
            ) from error
        for reply in replies:
            if not reply.get("steerable"):
                raise SteeringUnavailableError(
                    f"vLLM runs {reply.get('model_class')}, which cannot steer; refusing to start"
                )
            if int(reply.get("max_sets", 0)) != MAX_SETS:
                raise SteeringUnavailableError("worker vector-set table size mismatch; reinstall")
            facts = self.facts
            if (int(reply["num_layers"]), int(reply["hidden_size"])) != (
                facts.num_layers,
                facts.hidden_size,
            ):
                raise SteeringUnavailableError("worker model shape differs from the checkpoint")
        self.worker_facts = dict(replies[0])

    async def _slot_for(self, steering: SteeringSet) -> int:
        llm = self._require()
        lock = self._upload_lock
        assert lock is not None  # noqa: S101  # set by start()
        async with lock:
            set_id = steering.set_id
            slot = self._slots.find(set_id)
            if slot is not None:
                return slot
            facts = self.facts
            vectors = steering.vectors.detach().to("cpu", torch.float32).contiguous()
            if tuple(vectors.shape) != (facts.num_layers, facts.hidden_size):
                raise ValueError(
                    f"vectors have shape {tuple(vectors.shape)}, the model needs "
                    f"({facts.num_layers}, {facts.hidden_size}): recalibrate for this model"
                )
            beta = list(steering.beta) if steering.beta else [1.0] * facts.num_layers
            layers = list(steering.layer_ids) if steering.layer_ids is not None else None
            if layers is None:
                layers = list(range(facts.num_layers))
            slot = self._slots.claim(set_id)
            await llm.collective_rpc(
                "sarsteer_put_set",
                args=(slot, set_id, vectors.numpy().tobytes(), beta, layers),
            )
            return slot

    def _request(
        self,
        rid: str,
        conversation: Sequence[Message],
        steering: RowSteering,
        max_tokens: int,
        min_tokens: int = 0,
    ) -> tuple[dict[str, Any], Any]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        renderer = self._renderer
        assert renderer is not None  # noqa: S101  # set by start()
        rendered = renderer.render(conversation)
        prompt: dict[str, Any] = {"prompt": rendered.text}
        if rendered.audios:
            rate = renderer.sampling_rate
            prompt["multi_modal_data"] = {"audio": [(a, rate) for a in rendered.audios]}
        salt = cache_salt(steering)
        if salt is not None:
            prompt["cache_salt"] = salt
        params = SamplingParams(
            max_tokens=max_tokens,
            min_tokens=min(min_tokens, max_tokens),
            temperature=0.0,
            output_kind=RequestOutputKind.DELTA,
            extra_args={EXTRA_KEY: steering.to_extra()},
        )
        return prompt, params

    async def _run_once(
        self, llm: AsyncLLM, rid: str, conversation: Sequence[Message], steering: RowSteering
    ) -> None:
        prompt, params = self._request(rid, conversation, steering, 1)
        async for _ in llm.generate(prompt, params, request_id=rid):
            pass

    async def _pop(self, rids: list[str]) -> dict[str, tuple[float | None, bytes | None]]:
        replies = await self._require().collective_rpc("sarsteer_pop", args=(rids,))
        merged: dict[str, tuple[float | None, bytes | None]] = {}
        for reply in reversed(replies):  # rank 0 last, so it wins (all ranks agree)
            merged.update({str(k): (v[0], v[1]) for k, v in reply.items()})
        return merged

    async def _drive(self, handle: RowHandle) -> None:
        row = handle.row
        held: str | None = None
        try:
            llm = self._require()
            slot: int | None = None
            if row.steering is not None:
                slot = await self._slot_for(row.steering)
                held = row.steering.set_id
                self._slots.hold(held)
            steering = RowSteering(
                rid=handle.rid,
                slot=slot,
                set_id=held,
                alpha=float(row.alpha) if slot is not None else 0.0,
                prompt_only=row.prompt_only,
                readout_layer=row.readout_layer if slot is not None else None,
            )
            await self._stream(llm, handle, steering)
        except asyncio.CancelledError:  # cancel(): vLLM aborts the request as generate() unwinds
            handle.queue.put_nowait(self._done(handle, cancelled=True))
        except Exception as error:
            log.warning("vllm.row_failed", tag=row.tag, error=one_line(error))
            handle.queue.put_nowait(RowFailed(error))
        finally:
            if held is not None:
                self._slots.release(held)
            self._inflight.pop(handle.rid, None)

    async def _stream(self, llm: AsyncLLM, handle: RowHandle, steering: RowSteering) -> None:
        row = handle.row
        prompt, params = self._request(
            handle.rid, row.conversation, steering, row.max_new_tokens, row.min_new_tokens
        )
        async for output in llm.generate(prompt, params, request_id=handle.rid):
            handle.started = True
            handle.prompt_tokens = len(output.prompt_token_ids or ())
            completion = output.outputs[0]
            if completion.token_ids and handle.first_token_at is None:
                handle.first_token_at = time.perf_counter()
            handle.token_ids.extend(completion.token_ids)
            if completion.text:
                handle.text.append(completion.text)
                handle.queue.put_nowait(RowDelta(completion.text))
        readout = None
        if steering.readout_layer is not None:
            readout = (await self._pop([handle.rid])).get(handle.rid, (None, None))[0]
            if readout is None:
                raise GuardError("the readout was not recorded; the engine is inconsistent")
        handle.queue.put_nowait(self._done(handle, readout))

    @staticmethod
    def _done(
        handle: RowHandle, readout: float | None = None, *, cancelled: bool = False
    ) -> RowDone:
        now = time.perf_counter()
        return RowDone(
            text="".join(handle.text),
            token_ids=tuple(handle.token_ids),
            prompt_tokens=handle.prompt_tokens,
            readout=readout,
            cancelled=cancelled,
            first_token_ms=((handle.first_token_at or now) - handle.submitted) * 1000,
            total_ms=(now - handle.submitted) * 1000,
            tag=handle.row.tag,
        )
