"""Steered vLLM model classes, registered over the stock architecture names by :mod:`.plugin`.

:class:`SteeredQwen2AudioForConditionalGeneration` is vLLM's Qwen2-Audio with two changes:

1. After ``load_weights`` every text decoder layer's class becomes
   :class:`SteeredQwen2DecoderLayer` (same instance, same parameter names, so weight loading is
   untouched) and gets the :class:`~.runtime.SteeringRuntime` tensors as non-persistent buffers.
2. Its ``forward`` (which vLLM runs eagerly; only the inner text model is compiled) fills those
   buffers in place before the text model runs and harvests readouts/captures after it.

The layer adds ``strength[t] * table[set_row[t]]`` to the residual with tensor ops only (no
Python branching on data), so compiled graphs and CUDA-graph replays apply it. vLLM's decoder
layer returns ``(hidden, residual)`` whose sum is the residual stream; adding the offset to
``residual`` steers the stream. The recorded state is ``hidden + residual`` gathered at each
row's recorded token, before this layer's offset, as the transformers readout is.

Qwen2.5-Omni's thinker runs the same ``Qwen2Model`` text stack (with M-RoPE positions): the same
two changes over ``Qwen2_5OmniThinkerForConditionalGeneration`` would steer it; positions in
the runtime are sequence indices, independent of M-RoPE.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer
from vllm.model_executor.models.qwen2_audio import Qwen2AudioForConditionalGeneration

from .runtime import SteeringRuntime

__all__ = ["SteeredQwen2AudioForConditionalGeneration", "SteeredQwen2DecoderLayer"]

#: Default number of vector-set slots per worker (tables are ``[slots, hidden]`` per layer).
DEFAULT_MAX_SETS = 16


class SteeredQwen2DecoderLayer(Qwen2DecoderLayer):  # type: ignore[misc]  # vllm is untyped here (follow_imports=skip)
    """A Qwen2 decoder layer that adds its per-token steering offset (never constructed)."""

    sarsteer_strength: torch.Tensor
    sarsteer_set_row: torch.Tensor
    sarsteer_rec_idx: torch.Tensor
    sarsteer_table: torch.Tensor
    sarsteer_rec: torch.Tensor

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stock layer, then record the stream at each row's token and add the offset."""
        hidden_states, residual = super().forward(positions, hidden_states, residual)
        n = hidden_states.shape[0]
        idx = self.sarsteer_rec_idx
        stream = hidden_states.index_select(0, idx) + residual.index_select(0, idx)
        self.sarsteer_rec.copy_(stream.float())
        rows = self.sarsteer_table.index_select(0, self.sarsteer_set_row[:n])
        delta = rows * self.sarsteer_strength[:n].unsqueeze(-1)
        return hidden_states, residual + delta.to(residual.dtype)


def install(
    layers: Iterable[nn.Module], runtime: SteeringRuntime, first_layer: int = 0
) -> list[nn.Module]:
    """Swap each decoder layer's class and register the runtime buffers on it."""
    steered: list[nn.Module] = []
    for offset, layer in enumerate(layers):
        if not isinstance(layer, Qwen2DecoderLayer):
            continue  # a pipeline-parallel placeholder: another rank owns this layer
        index = first_layer + offset
        layer.__class__ = SteeredQwen2DecoderLayer
        layer.register_buffer("sarsteer_strength", runtime.strength, persistent=False)
        layer.register_buffer("sarsteer_set_row", runtime.set_row, persistent=False)
        layer.register_buffer("sarsteer_rec_idx", runtime.rec_idx, persistent=False)
        layer.register_buffer("sarsteer_table", runtime.tables[index], persistent=False)
        layer.register_buffer("sarsteer_rec", runtime.recs[index], persistent=False)
        steered.append(layer)
    return steered


class SteeredQwen2AudioForConditionalGeneration(Qwen2AudioForConditionalGeneration):  # type: ignore[misc]  # vllm is untyped here
    """vLLM's Qwen2-Audio with per-request SARSteer steering (see the module docstring)."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        scheduler = vllm_config.scheduler_config
        self._sarsteer_limits = (
            int(scheduler.max_num_batched_tokens),
            int(scheduler.max_num_seqs),
        )
        self.sarsteer: SteeringRuntime | None = None

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load as stock, then turn the text layers into steered ones (names unchanged)."""
        loaded: set[str] = super().load_weights(weights)
        self._sarsteer_install()
        return loaded

    def _sarsteer_install(self) -> None:
        text = self.language_model.model
        config = text.config
        param = next(text.layers[text.start_layer].parameters())
        max_tokens, max_rows = self._sarsteer_limits
        runtime = SteeringRuntime(
            num_layers=int(config.num_hidden_layers),
            hidden=int(config.hidden_size),
            max_tokens=max_tokens,
            max_rows=max_rows,
            max_sets=DEFAULT_MAX_SETS,
            device=param.device,
        )
        layers = list(text.layers)[text.start_layer : text.end_layer]
        install(layers, runtime, first_layer=text.start_layer)
        self.sarsteer = runtime

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> Any:
        """Write this step's steering buffers, run the (compiled) text model, harvest records."""
        runtime = self.sarsteer
        if runtime is not None:
            runtime.before_step(int(positions.shape[-1]))
        out = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
        if runtime is not None:
            runtime.after_step()
        return out
