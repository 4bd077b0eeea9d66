"""The ``vllm.general_plugins`` entry point: register the steered model classes.

vLLM calls :func:`register` in every process it starts (front end, engine core, workers), so
registration must be idempotent and cheap: the model class is registered by its import path
and only imported where a model is built. Set ``SARSTEER_VLLM_PLUGIN=0`` to leave vLLM's stock
classes in place (the steered class behaves exactly as stock when no request is steered, at the
cost of a few tensor ops per layer). ``SARSTEER_VLLM_MODEL_CLASS=module:Class`` registers
another class over Qwen2-Audio (tests use it to run a deliberately broken hook-based class and
check that the engine's self-check refuses to start).
"""

from __future__ import annotations

import os

__all__ = ["STEERED_ARCHITECTURES", "register"]

#: Architecture name -> import path of the steered class that replaces vLLM's.
STEERED_ARCHITECTURES: dict[str, str] = {
    "Qwen2AudioForConditionalGeneration": (
        "sarsteer_guard.backends.vllm.models:SteeredQwen2AudioForConditionalGeneration"
    ),
}


def register() -> None:
    """Register every steered architecture with vLLM's model registry (idempotent)."""
    if os.environ.get("SARSTEER_VLLM_PLUGIN", "1") == "0":
        return
    from vllm import ModelRegistry

    override = os.environ.get("SARSTEER_VLLM_MODEL_CLASS")
    for arch, path in STEERED_ARCHITECTURES.items():
        ModelRegistry.register_model(arch, override or path)
