"""A deliberately broken steered class: steering by forward hooks, as naive plugins do.

Hooks registered after vLLM has compiled the text model (here: when the engine attaches, as
plugins that add hooks over ``collective_rpc`` do) run in eager mode but compiled code ignores
them, which silently dropped steering in vLLM's default (compiled) mode. Tests register these
classes (``SARSTEER_VLLM_MODEL_CLASS``) to check that the engine's startup self-check catches
exactly that failure and refuses to start. Never used for serving.
"""

from __future__ import annotations

from typing import Any

import torch

from sarsteer_guard.backends.vllm.models import SteeredQwen2AudioForConditionalGeneration

__all__ = ["HookSteeredQwen2Audio", "InertSteeredQwen2Audio"]


class HookSteeredQwen2Audio(SteeredQwen2AudioForConditionalGeneration):
    """Same buffers and runtime as the real class, but the offset is added by forward hooks."""

    @staticmethod
    def layer_hook(layer: Any, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
        """Record the layer's state and add the steering offset (the naive plugin's hook)."""
        return _hook(layer, args, output)

    def _sarsteer_install(self) -> None:
        super()._sarsteer_install()
        text = self.language_model.model
        layers = list(text.layers)[text.start_layer : text.end_layer]
        for layer in layers:
            layer.__class__ = type(layer).__mro__[1]  # back to the stock layer class
        runtime = self.sarsteer
        assert runtime is not None  # noqa: S101  # set by super()
        attach = runtime.attach
        hook = self.layer_hook

        def attach_and_hook(runner: Any) -> None:  # after warm-up compiled the text model
            attach(runner)
            for layer in layers:
                layer.register_forward_hook(hook)

        runtime.attach = attach_and_hook  # type: ignore[method-assign]  # the broken variant


def _hook(layer: Any, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
    hidden, residual = output
    n = hidden.shape[0]
    idx = layer.sarsteer_rec_idx
    layer.sarsteer_rec.copy_((hidden.index_select(0, idx) + residual.index_select(0, idx)).float())
    rows = layer.sarsteer_table.index_select(0, layer.sarsteer_set_row[:n])
    delta = rows * layer.sarsteer_strength[:n].unsqueeze(-1)
    return hidden, residual + delta.to(residual.dtype)


class InertSteeredQwen2Audio(HookSteeredQwen2Audio):
    """Attaches and records like a steered class, but never adds the offset, in any mode.

    A stand-in for any bug that leaves steering ineffective while everything else looks
    healthy: the startup self-check must refuse it even in eager mode.
    """

    @staticmethod
    def layer_hook(layer: Any, args: Any, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
        """Record the layer's state; leave the stream as it is."""
        hidden, residual = output
        idx = layer.sarsteer_rec_idx
        layer.sarsteer_rec.copy_(
            (hidden.index_select(0, idx) + residual.index_select(0, idx)).float()
        )
        return output
