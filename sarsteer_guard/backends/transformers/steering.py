"""One set of steering hooks per model, registered once, rewritten in place for every batch.

Forward hooks belong to modules, not to threads or batches, and compiled or graph-captured
code ignores hooks registered after it was built. So the model carries exactly one
:class:`~sarsteer_guard.steering.SteeringHooks` over every decoder layer for as long as any
transformers backend serves it: the first backend to start registers it, the last to stop
removes it. Between batches the hooks are disabled (outputs untouched). A batch writes its
vector set, beta, layers, positions and per-row alpha into the preallocated buffers and
enables them; rows with alpha 0 get exact zeros and stay bit-identical.

The model's lock (:attr:`ModelSteering.lock`) is held by every batch and every capture, so
two backends that share one loaded model take turns instead of mixing their steering.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from sarsteer_guard.guard.backend import SteeringSpec
from sarsteer_guard.models.base import AudioLanguageModel
from sarsteer_guard.steering import SteeringHooks

if TYPE_CHECKING:
    from sarsteer_guard.guard.vectors import LoadedVectors

__all__ = ["ModelSteering"]

# Models that some backend serves now -> their steering (an entry leaves with its last user).
_shared: dict[torch.nn.Module, ModelSteering] = {}
_shared_lock = threading.Lock()

#: Reads the prefill readout of the batch that just ran: one float per row, or None.
Readout = Callable[[], list[float] | None]


class ModelSteering:
    """The persistent steering hooks of one model (use :meth:`acquire` / :meth:`release`)."""

    def __init__(self, lm: AudioLanguageModel, max_rows: int) -> None:
        self._lm = lm
        self._max_rows = max(1, max_rows)
        self._hooks: SteeringHooks | None = None
        self._users = 0
        self._digest: str | None = None  # vector set now in the buffers
        self._beta: tuple[float, ...] | None = None
        #: Held by every batch and capture on this model.
        self.lock = threading.RLock()

    @classmethod
    def acquire(cls, lm: AudioLanguageModel, *, max_rows: int) -> ModelSteering:
        """The model's steering, registering its hooks if no other backend has."""
        with _shared_lock:
            steering = _shared.get(lm.model)
            if steering is None:
                steering = _shared[lm.model] = cls(lm, max_rows)
            with steering.lock:
                if steering._users == 0:
                    steering._register()
                steering._users += 1
            return steering

    @staticmethod
    def exclusive(lm: AudioLanguageModel) -> contextlib.AbstractContextManager[object]:
        """Hold the model's lock if some backend serves it (nothing to hold otherwise)."""
        with _shared_lock:
            steering = _shared.get(lm.model)
        return contextlib.nullcontext() if steering is None else steering.lock

    def release(self) -> None:
        """Give the steering back (once per :meth:`acquire`); the last user removes the hooks."""
        with _shared_lock, self.lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                if self._hooks is not None:
                    self._hooks.close()
                    self._hooks = None
                _shared.pop(self._lm.model, None)

    @property
    def hooks(self) -> SteeringHooks | None:
        """The registered hooks (None while no backend serves the model)."""
        return self._hooks

    def _register(self) -> None:
        lm = self._lm
        hooks = SteeringHooks(
            lm.decoder_layers,
            torch.zeros(lm.num_layers, lm.hidden_size),
            alpha=0.0,
            max_rows=self._max_rows,
        )
        hooks.set_enabled(False)
        hooks.start()
        self._hooks = hooks
        self._digest = None
        self._beta = None

    @contextlib.contextmanager
    def batch(self, spec: SteeringSpec, alphas: Sequence[float]) -> Iterator[Readout]:
        """Steer the next forward passes as ``spec`` with one alpha per row; off afterwards.

        Yields a callable that reads the batch's prefill readout (call it before leaving).
        Must run with :attr:`lock` held.
        """
        hooks, vectors = self._hooks, spec.vectors
        if vectors is None or hooks is None:
            yield _no_readout
            return
        self._configure(hooks, spec, vectors)
        rows = len(alphas)
        hooks.set_alpha(torch.tensor(list(alphas), dtype=torch.float32))
        hooks.set_enabled(True)
        try:
            yield lambda: _values(hooks, rows)
        finally:
            hooks.set_enabled(False)

    def _configure(self, hooks: SteeringHooks, spec: SteeringSpec, vectors: LoadedVectors) -> None:
        if vectors.digest != self._digest:
            hooks.set_vectors(vectors.tensor)
            self._digest = vectors.digest
        if spec.beta != self._beta:
            hooks.set_beta(spec.beta)
            self._beta = spec.beta
        hooks.set_layer_ids(spec.layer_ids)
        hooks.prompt_only = spec.prompt_only
        hooks.set_readout_layer(vectors.readout_layer)  # also forgets the last batch's readout


def _no_readout() -> list[float] | None:
    return None


def _values(hooks: SteeringHooks, rows: int) -> list[float] | None:
    values = hooks.readout()
    if values is None:
        return None
    return [float(v) for v in values.float().reshape(-1).tolist()[:rows]]
