"""Worker extension (``worker_extension_cls``): the control plane reached by ``collective_rpc``.

vLLM mixes this class into its worker class in every worker process; the engine calls its
methods by name. Payloads are plain bytes, lists and numbers so they cross vLLM's msgpack
transport without pickling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .runtime import SteeringRuntime

__all__ = ["WORKER_EXTENSION", "SarsteerWorkerExtension"]

#: Qualified name passed as ``worker_extension_cls``.
WORKER_EXTENSION = "sarsteer_guard.backends.vllm.worker.SarsteerWorkerExtension"


class SarsteerWorkerExtension:
    """Methods added to the vLLM worker; ``self`` is the worker (it has ``model_runner``)."""

    model_runner: Any

    def _sarsteer_runtime(self) -> SteeringRuntime:
        model = self.model_runner.get_model()
        runtime = getattr(model, "sarsteer", None)
        if not isinstance(runtime, SteeringRuntime):
            raise RuntimeError(
                f"{type(model).__name__} is not a steered model class: install sarsteer-guard "
                "in the vLLM environment so its plugin registers the steered classes"
            )
        return runtime

    def sarsteer_attach(self) -> dict[str, int | str]:
        """Bind the runtime to this worker's model runner; return the model's facts."""
        runtime = self._sarsteer_runtime()
        runtime.attach(self.model_runner)
        model = self.model_runner.get_model()
        return {
            "model_class": type(model).__name__,
            "steerable": 1,
            "num_layers": runtime.num_layers,
            "hidden_size": runtime.hidden,
            "max_sets": runtime.max_sets,
            "max_rows": runtime.max_rows,
            "max_tokens": runtime.max_tokens,
        }

    def sarsteer_put_set(
        self,
        slot: int,
        set_id: str,
        vectors: bytes,
        beta: list[float],
        layer_ids: list[int],
    ) -> bool:
        """Store a vector set (float32 ``[layers, hidden]`` bytes) in table slot ``slot``."""
        runtime = self._sarsteer_runtime()
        array = np.frombuffer(vectors, dtype=np.float32).reshape(runtime.num_layers, runtime.hidden)
        runtime.put_set(slot, set_id, array, np.asarray(beta, dtype=np.float32), layer_ids)
        return True

    def sarsteer_pop(self, rids: list[str]) -> dict[str, tuple[float | None, bytes | None]]:
        """Readouts and captures (float32 bytes) recorded for these requests, then forgotten."""
        out: dict[str, tuple[float | None, bytes | None]] = {}
        for rid, result in self._sarsteer_runtime().pop(rids).items():
            capture = None if result.capture is None else result.capture.tobytes()
            out[rid] = (result.readout, capture)
        return out

    def sarsteer_stats(self) -> dict[str, int]:
        """Counters of the runtime (steps, chunked prefills, resumed requests) for tests."""
        return self._sarsteer_runtime().stats()
