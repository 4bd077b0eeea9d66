"""Serve on vLLM with per-request SARSteer steering that survives compilation.

The package is importable without vLLM installed: only :mod:`.engine`, :mod:`.plugin`,
:mod:`.models`, :mod:`.runtime` and :mod:`.worker` import vLLM (lazily where they can), so the
rest of sarsteer-guard, its type checks and its tests run in environments without it.

Pieces:

- :mod:`.protocol`: what a request carries to the workers (``SamplingParams.extra_args``) and
  the prefix-cache salt per steering. Pure Python.
- :mod:`.runtime`: the per-worker steering state: persistent device buffers written before every
  step, the ``[sets, hidden]`` tables per layer, readout and capture harvesting.
- :mod:`.models`: the steered model classes registered over vLLM's architecture names.
- :mod:`.plugin`: the ``vllm.general_plugins`` entry point that registers them.
- :mod:`.worker`: the worker extension reached through ``collective_rpc``.
- :mod:`.render`: conversations -> prompt text + audio, rendered as the transformers adapter does.
- :mod:`.engine`: :class:`~.engine.VllmEngine`, driving ``AsyncLLM`` in process.
"""
