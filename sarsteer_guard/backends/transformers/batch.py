"""One micro-batch through transformers' ``generate``: streamed per row, stoppable per row.

Rows are encoded together with left padding and run as one ``generate`` call, steered through
the model's persistent hooks (:mod:`.steering`). Rows finish independently: at their
end-of-sequence token, at their own token budget, or when cancelled (barge-in), checked by a
stopping criterion on every decode step. Text reaches each row's stream as it is decoded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from sarsteer_guard.guard.backend import RowDelta, RowDone, RowStream
from sarsteer_guard.models.base import AudioLanguageModel

from .steering import ModelSteering

__all__ = ["Decoder", "EncodeError", "run_batch"]


class EncodeError(Exception):
    """A batch's inputs could not be built (before any token was generated)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Decoder:
    """Token ids to text (no special tokens), and the ids that end a row."""

    def __init__(self, lm: AudioLanguageModel) -> None:
        self._tokenizer: Any = getattr(lm.processor, "tokenizer", lm.processor)
        eos = lm.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_token_ids: frozenset[int] = frozenset(int(i) for i in ids)

    def __call__(self, ids: Sequence[int]) -> str:
        """The text of ``ids``."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))


class _RowStreamer(BaseStreamer):
    """Turns per-step token ids into per-row text deltas."""

    def __init__(self, decode: Decoder, rows: Sequence[RowStream]) -> None:
        self._decode = decode
        self._rows = rows
        self._ids: list[list[int]] = [[] for _ in rows]
        self._texts = ["" for _ in rows]
        self._done = [False] * len(rows)
        self._prompt_seen = False
        self.first_token_at: list[float | None] = [None] * len(rows)
        self.prefill_done_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt ids
            self._prompt_seen = True
            return
        now = time.perf_counter()
        if self.prefill_done_at is None:
            self.prefill_done_at = now
        ids = value.reshape(len(self._rows), -1)[:, -1].tolist()
        for i, token in enumerate(ids):
            if not self._done[i]:
                self._take(i, int(token), now)

    def _take(self, i: int, token: int, now: float) -> None:
        row = self._rows[i]
        if token in self._decode.eos_token_ids or row.cancelled.is_set():
            self._done[i] = True
            return
        self._ids[i].append(token)
        if self.first_token_at[i] is None:
            self.first_token_at[i] = now
        if len(self._ids[i]) >= row.request.max_new_tokens:
            self._done[i] = True
        text = self._decode(self._ids[i])
        if not text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for more
            self._emit(i, text)

    def _emit(self, i: int, text: str) -> None:
        sent = self._texts[i]
        if not text.startswith(sent):  # a tokenizer that rewrites earlier text: send the rest
            return
        delta = text[len(sent) :]
        if delta:
            self._texts[i] = text
            self._rows[i].put(RowDelta(delta))

    def flush(self, i: int) -> str:
        """Send what is still held back (a trailing partial character) and return the text."""
        text = self._decode(self._ids[i])
        self._emit(i, text)
        return self._texts[i] if text.startswith(self._texts[i]) else text

    def end(self) -> None:
        """Nothing to flush: rows are finalised by :func:`run_batch`."""

    def row_tokens(self, i: int) -> int:
        return len(self._ids[i])

    def row_done(self, i: int) -> bool:
        return self._done[i]


class _RowStops(StoppingCriteria):
    """Per-row stop flags: cancelled turns and rows past their own token budget."""

    def __init__(self, rows: Sequence[RowStream], streamer: _RowStreamer) -> None:
        self._rows = rows
        self._streamer = streamer

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        flags = [
            row.cancelled.is_set() or self._streamer.row_done(i) for i, row in enumerate(self._rows)
        ]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]  # BoolTensor is a typing alias of Tensor


def run_batch(
    lm: AudioLanguageModel,
    rows: list[RowStream],
    steering: ModelSteering,
    decode: Decoder,
) -> list[RowDone]:
    """Generate ``rows`` as one batch, streaming deltas; returns each row's result, unsent.

    Raises:
        EncodeError: the inputs could not be built (nothing was generated).
    """
    started = time.perf_counter()
    try:
        inputs = lm.encode([list(r.request.conversation) for r in rows])
    except Exception as error:
        raise EncodeError(error) from error
    streamer = _RowStreamer(decode, rows)
    spec = rows[0].request.steering
    alphas = [r.request.alpha if spec.vectors is not None else 0.0 for r in rows]
    with steering.lock, torch.inference_mode(), steering.batch(spec, alphas) as readout:
        lm.generate(
            inputs,
            max_new_tokens=max(r.request.max_new_tokens for r in rows),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_RowStops(rows, streamer)]),
            # Eager decode steps: generate() may compile them (static caches on GPUs), and the
            # hooks must have been registered before any compilation to apply there.
            disable_compile=True,
        )
        values = readout()
    finished = time.perf_counter()
    prefill_at = streamer.prefill_done_at or finished
    results = []
    for i, row in enumerate(rows):
        result = RowDone(
            text=streamer.flush(i),
            tokens=streamer.row_tokens(i),
            cancelled=row.cancelled.is_set(),
            queue_ms=(started - row.submitted) * 1000,
            prefill_ms=(prefill_at - started) * 1000,
            first_token_ms=((streamer.first_token_at[i] or finished) - row.submitted) * 1000,
            total_ms=(finished - row.submitted) * 1000,
            batch_size=len(rows),
            readout=None if values is None else values[i],
            tag=row.tag,
        )
        results.append(result)
    return results
