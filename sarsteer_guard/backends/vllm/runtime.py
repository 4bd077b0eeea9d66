"""Per-worker steering state: persistent buffers written before each step, read in the layers.

Why buffers and not hooks: vLLM compiles the text model (torch.compile, and CUDA graphs on
GPUs) and compiled code ignores Python hooks. The steered decoder layers
(:mod:`.models`) instead read these tensors, registered on each layer as non-persistent
buffers, with plain tensor ops; this object rewrites them **in place** (same storage, so the
compiled graph and any captured CUDA graph replay the new values) from the outer model's
``forward``, which vLLM runs eagerly before the compiled text model:

- ``strength[max_tokens]`` float32: per token of the step, the request's alpha where the token
  is steered (see :mod:`.protocol`), else 0.
- ``set_row[max_tokens]`` int64: per token, its request's vector-set slot.
- ``rec_idx[max_rows]`` int64: per request row, the token whose states are recorded.
- per layer ``table[max_sets, hidden]`` float32: ``beta_l * v_l`` of each uploaded set (zero
  where the set does not steer layer ``l``), and ``rec[max_rows, hidden]`` float32: the
  recorded residual-stream state (before this layer's offset).

Memory is ``O(max_tokens + layers * (max_sets + max_rows) * hidden)``, never
``max_tokens * layers * hidden``. After the step, rows whose last prompt token was in it and
that asked for a readout or a capture are read back once (one host copy per such step).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .protocol import RowSteering

__all__ = ["RowResult", "SteeringRuntime", "VectorSetError"]

#: Results kept for requests nobody collected (aborted turns); oldest dropped first.
_MAX_RESULTS = 4096
_NEVER = np.iinfo(np.int64).max


class VectorSetError(RuntimeError):
    """A request references a set that is not in its slot: steering would be wrong."""


@dataclass(frozen=True, slots=True)
class RowResult:
    """What a worker recorded for one request at its last prompt token."""

    readout: float | None
    capture: npt.NDArray[np.float32] | None  # [layers, hidden]


@dataclass(frozen=True, slots=True)
class _Set:
    set_id: str
    units: torch.Tensor  # [layers, hidden] float32 on CPU: unit(v_l), for readouts


@dataclass(frozen=True, slots=True)
class _Row:
    steering: RowSteering | None
    alpha: float
    slot: int
    lo: int  # first steered position
    hi: int  # last steered position
    prompt_len: int


class SteeringRuntime:
    """The buffers of one model replica and the code that fills them (worker process)."""

    def __init__(
        self,
        *,
        num_layers: int,
        hidden: int,
        max_tokens: int,
        max_rows: int,
        max_sets: int,
        device: torch.device,
    ) -> None:
        self.num_layers = num_layers
        self.hidden = hidden
        self.max_tokens = max_tokens
        self.max_rows = max_rows
        self.max_sets = max_sets
        self.device = device
        f32, i64 = torch.float32, torch.int64
        self.strength = torch.zeros(max_tokens, dtype=f32, device=device)
        self.set_row = torch.zeros(max_tokens, dtype=i64, device=device)
        self.rec_idx = torch.zeros(max_rows, dtype=i64, device=device)
        self.tables = [
            torch.zeros(max_sets, hidden, dtype=f32, device=device) for _ in range(num_layers)
        ]
        self.recs = [
            torch.zeros(max_rows, hidden, dtype=f32, device=device) for _ in range(num_layers)
        ]
        self._strength_host = np.zeros(max_tokens, dtype=np.float32)
        self._set_row_host = np.zeros(max_tokens, dtype=np.int64)
        self._rec_idx_host = np.zeros(max_rows, dtype=np.int64)
        self._written = 0  # tokens written last step (the tail to clear next step)
        self._sets: dict[int, _Set] = {}
        self._rows: dict[str, _Row] = {}
        self._pending: list[tuple[int, _Row]] = []
        self._results: OrderedDict[str, RowResult] = OrderedDict()
        self._lock = threading.Lock()  # results are popped from the RPC thread
        self.runner: Any = None
        self._stats = {"steps": 0, "partial_prefills": 0, "resumed": 0, "steered_tokens": 0}

    # -- control plane (collective_rpc) ------------------------------------------------------
    def attach(self, runner: Any) -> None:
        """Bind the model runner whose batch layout each step is read from."""
        self.runner = runner

    @torch.no_grad()
    def put_set(
        self,
        slot: int,
        set_id: str,
        vectors: npt.NDArray[np.float32],
        beta: npt.NDArray[np.float32],
        layer_ids: list[int],
    ) -> None:
        """Write set ``set_id`` into table slot ``slot`` of every layer (in place)."""
        if not 0 <= slot < self.max_sets:
            raise ValueError(f"slot {slot} is outside [0, {self.max_sets})")
        if vectors.shape != (self.num_layers, self.hidden):
            raise ValueError(
                f"vectors have shape {vectors.shape}, the model needs "
                f"({self.num_layers}, {self.hidden})"
            )
        v = torch.from_numpy(np.array(vectors, dtype=np.float32, copy=True))
        scale = torch.zeros(self.num_layers, dtype=torch.float32)
        for layer in layer_ids:
            scale[layer] = float(beta[layer])
        for layer, table in enumerate(self.tables):
            table[slot].copy_((v[layer] * scale[layer]).to(self.device))
        norms = v.norm(dim=1, keepdim=True)
        units = torch.where(norms > 0, v / norms.clamp_min(1e-30), torch.zeros_like(v))
        self._sets[slot] = _Set(set_id=set_id, units=units)

    def pop(self, rids: list[str]) -> dict[str, RowResult]:
        """Hand over (and forget) the results recorded for these requests."""
        with self._lock:
            return {rid: self._results.pop(rid) for rid in rids if rid in self._results}

    # -- data plane (every step) -------------------------------------------------------------
    @torch.no_grad()
    def before_step(self, n_tokens: int) -> None:
        """Fill the per-token buffers for the step the runner has just prepared."""
        self._stats["steps"] += 1
        layout = self._layout(n_tokens)
        if layout is None:
            self._clear()
            return
        qsl, computed, rows = layout
        num_reqs = len(rows)
        total = int(qsl[num_reqs])
        counts = np.diff(qsl)
        owner = np.repeat(np.arange(num_reqs), counts)
        pos = computed[owner] + (np.arange(total) - qsl[owner])
        alpha = np.array([r.alpha for r in rows], dtype=np.float32)
        slot = np.array([r.slot for r in rows], dtype=np.int64)
        lo = np.array([r.lo for r in rows], dtype=np.int64)
        hi = np.array([r.hi for r in rows], dtype=np.int64)
        steer = (pos >= lo[owner]) & (pos <= hi[owner])
        self._strength_host[:total] = np.where(steer, alpha[owner], np.float32(0.0))
        self._set_row_host[:total] = slot[owner]
        rec = qsl[1:] - 1
        self._pending = []
        self._count(rows, computed, counts, int(steer.sum()))
        for i, row in enumerate(rows):
            last_prompt = row.prompt_len - 1
            start = int(computed[i])
            if start <= last_prompt < start + int(counts[i]) and self._wants_record(row):
                rec[i] = qsl[i] + (last_prompt - start)
                self._pending.append((i, row))
        self._rec_idx_host[:num_reqs] = rec
        self._rec_idx_host[num_reqs:] = 0
        end = max(total, self._written)
        self._strength_host[total:end] = 0.0  # last step's longer tail: exact zeros
        self.strength[:end].copy_(torch.from_numpy(self._strength_host[:end]))
        self.set_row[:end].copy_(torch.from_numpy(self._set_row_host[:end]))
        self.rec_idx.copy_(torch.from_numpy(self._rec_idx_host))
        self._written = total

    @torch.no_grad()
    def after_step(self) -> None:
        """Read back the recorded states of rows whose last prompt token was in this step."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        index = torch.tensor([i for i, _ in pending], dtype=torch.int64, device=self.device)
        states = torch.stack([rec.index_select(0, index) for rec in self.recs], dim=1).cpu()
        with self._lock:
            for j, (_, row) in enumerate(pending):
                steering = row.steering
                if steering is None:
                    continue
                readout = None
                if steering.readout_layer is not None and steering.slot is not None:
                    unit = self._sets[steering.slot].units[steering.readout_layer]
                    readout = float(states[j, steering.readout_layer] @ unit)
                capture = states[j].numpy().copy() if steering.capture else None
                self._results[steering.rid] = RowResult(readout=readout, capture=capture)
                while len(self._results) > _MAX_RESULTS:
                    self._results.popitem(last=False)

    def stats(self) -> dict[str, int]:
        """Counters of steps, prefill chunks and steered tokens.

        ``partial_prefills``: chunks ending before the prompt's end (chunked prefill);
        ``resumed``: chunks recomputing generated tokens (a request resumed after preemption).
        """
        return dict(self._stats)

    # -- internals ---------------------------------------------------------------------------
    def _count(
        self,
        rows: list[_Row],
        computed: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int64],
        steered: int,
    ) -> None:
        self._stats["steered_tokens"] += steered
        for i, row in enumerate(rows):
            end = int(computed[i] + counts[i])
            if end < row.prompt_len:
                self._stats["partial_prefills"] += 1
            elif int(computed[i]) < row.prompt_len and end > row.prompt_len:
                self._stats["resumed"] += 1

    def _layout(
        self, n_tokens: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[_Row]] | None:
        """Query start offsets, computed-token counts and rows of the step, or None (no batch)."""
        runner = self.runner
        if runner is None:
            return None
        batch = runner.input_batch
        num_reqs = int(batch.num_reqs)
        if num_reqs == 0:
            return None
        qsl = np.asarray(runner.query_start_loc.np[: num_reqs + 1], dtype=np.int64)
        if int(qsl[num_reqs]) > min(n_tokens, self.max_tokens) or num_reqs > self.max_rows:
            return None  # a dummy/profiling run: not a real batch
        computed = np.asarray(batch.num_computed_tokens_cpu[:num_reqs], dtype=np.int64)
        rows = [self._row(rid, runner.requests[rid]) for rid in batch.req_ids[:num_reqs]]
        self._rows = {rid: row for rid, row in zip(batch.req_ids[:num_reqs], rows, strict=True)}
        return qsl, computed, rows

    def _row(self, rid: str, state: Any) -> _Row:
        known = self._rows.get(rid)
        prompt_len = int(state.num_prompt_tokens)
        if known is not None and known.prompt_len == prompt_len:
            return known
        params = state.sampling_params
        steering = RowSteering.from_extra(None if params is None else params.extra_args)
        last = prompt_len - 1
        if steering is None or steering.slot is None:
            return _Row(steering, 0.0, 0, _NEVER, _NEVER, prompt_len)
        held = self._sets.get(steering.slot)
        if held is None or held.set_id != steering.set_id:
            raise VectorSetError(
                f"request {steering.rid} needs vector set {steering.set_id} in slot "
                f"{steering.slot}, which holds {held.set_id if held else 'nothing'}"
            )
        hi = last if steering.prompt_only else _NEVER
        return _Row(steering, float(steering.alpha), steering.slot, last, hi, prompt_len)

    @staticmethod
    def _wants_record(row: _Row) -> bool:
        s = row.steering
        return s is not None and (s.readout_layer is not None or s.capture)

    def _clear(self) -> None:
        self._pending = []
        if self._written:
            self.strength[: self._written].zero_()
            self._strength_host[: self._written] = 0.0
            self._written = 0
        self.rec_idx.zero_()
