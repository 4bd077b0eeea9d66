"""Getting the right vector set for a policy decision: memory, then the store, then calibration.

A :class:`~sarsteer_guard.vector_request.VectorRequest` (what the policy asks for) is resolved
here, in one place, into the ``CalibrationConfig`` that would compute the set and the store's
``VectorSetKey``; the result is a :class:`LoadedVectors`, which owns the one tensor every row
steered with that set shares. Sets are keyed by content (model fingerprint, calibration digest,
refusal instruction and separator, k, lambda), so policies that differ only in alpha share one
set. A miss in the store is calibrated once across replicas (the store's ``get_or_create``
lock), through the generation backend's ``capture``; activations are kept in memory so a rule
that changes only k or lambda recomputes the projection instead of re-running the model.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sarsteer_guard.calibration import (
    Activations,
    CalibrationConfig,
    CalibrationResult,
    CaptureSource,
    calibrate,
    vector_set_key,
)
from sarsteer_guard.errors import VectorsError
from sarsteer_guard.log import get_logger
from sarsteer_guard.manifest import Manifest, load_manifest
from sarsteer_guard.steering import SteeringVectors, VectorMeta
from sarsteer_guard.steering.extract import refusal_vectors
from sarsteer_guard.store import VectorSetKey, VectorStore
from sarsteer_guard.vector_request import VectorRequest

__all__ = ["CalibrationPlan", "LoadedVectors", "VectorProvider", "VectorRequest"]

log = get_logger(__name__)


@dataclass(frozen=True, eq=False)
class LoadedVectors:
    """A verified vector set, ready to steer with.

    Attributes:
        id: the set's store id, ``VectorSetKey.id``: what ``TurnDecision.vector_set_id`` and the
            audit record's ``vector_set_id`` carry. For a set given directly (``Guard(vectors=)``)
            it is the id the store would file it under (``vectors push`` prints the same).
        vectors: the set itself (provenance, digest).
        tensor: ``[layers, hidden]`` float32 on the CPU, taken once and shared by every row
            steered with this set; never edit it.
        readout_layer: where the refusal score is read (the layer whose ``v_l`` is longest).
    """

    id: str
    vectors: SteeringVectors
    tensor: torch.Tensor = field(init=False, repr=False)
    readout_layer: int = field(init=False)

    def __post_init__(self) -> None:
        tensor = self.vectors.vectors  # a fresh clone on every access: take it once
        object.__setattr__(self, "tensor", tensor)
        object.__setattr__(self, "readout_layer", int(tensor.norm(dim=-1).argmax()))

    @classmethod
    def given(cls, vectors: SteeringVectors) -> LoadedVectors:
        """A set passed in directly, under the id the store would give it."""
        return cls(VectorSetKey.from_metadata(vectors.meta.to_strings()).id, vectors)

    @property
    def digest(self) -> str:
        """Content digest: rows batch together only with identical vectors."""
        return self.vectors.digest


@dataclass(frozen=True)
class CalibrationPlan:
    """A calibration request resolved for one model: turns, config, and the key it files under."""

    harmful: Manifest
    benign: Manifest
    config: CalibrationConfig
    key: VectorSetKey

    @property
    def activation_key(self) -> tuple[str, str, str, str]:
        """What the captured states depend on (not k or lambda: those only re-project)."""
        key = self.key
        return (
            key.model_fingerprint,
            key.calibration_digest,
            key.refusal_instruction,
            key.refusal_separator,
        )


class VectorProvider:
    """Thread-safe, in-process cache in front of a :class:`VectorStore`.

    Args:
        source: where calibration captures states (the Guard's generation backend).
        store: the vector store.
        batch_size: calibration rows per capture.
        progress: show progress bars while calibrating.
        fixed: a set used for every request instead of the store (checked by the caller).
    """

    def __init__(
        self,
        source: CaptureSource,
        store: VectorStore,
        *,
        batch_size: int = 8,
        progress: bool = False,
        fixed: SteeringVectors | None = None,
    ) -> None:
        self._source = source
        self._store = store
        self._batch_size = batch_size
        self._progress = progress
        self._cache: dict[VectorRequest, LoadedVectors] = {}
        self._activations: dict[tuple[str, str, str, str], tuple[Activations, VectorMeta]] = {}
        self._lock = threading.Lock()
        self._manifests: dict[Path, Manifest] = {}  # reading one hashes every clip: once only
        self._fixed = None if fixed is None else LoadedVectors.given(fixed)

    def cached(self, request: VectorRequest) -> LoadedVectors | None:
        """The set for ``request`` if already in memory (never blocks on I/O)."""
        return self._fixed or self._cache.get(request)

    def get(self, request: VectorRequest) -> LoadedVectors:
        """Return the set for ``request`` (blocking: may calibrate on a miss)."""
        if self._fixed is not None:
            return self._fixed
        with self._lock:
            cached = self._cache.get(request)
            if cached is not None:
                return cached
            loaded = self._fetch(request)
            self._cache[request] = loaded
            return loaded

    def plan(self, request: VectorRequest) -> CalibrationPlan:
        """Resolve a calibration request for this model: the one place config and key are made."""
        harmful = self._manifest(request.harmful)
        benign = self._manifest(request.benign)
        config = CalibrationConfig.from_request(request, batch_size=self._batch_size)
        key = vector_set_key(self._source.facts, harmful, benign, config)
        return CalibrationPlan(harmful, benign, config, key)

    def _manifest(self, path: Path) -> Manifest:
        manifest = self._manifests.get(path)
        if manifest is None:
            manifest = self._manifests[path] = load_manifest(path)
        return manifest

    def _fetch(self, request: VectorRequest) -> LoadedVectors:
        if request.vector_set_id is not None:
            vectors = self._verified(self._store.get(request.vector_set_id))
            return LoadedVectors(request.vector_set_id, vectors)
        plan = self.plan(request)
        vectors = self._verified(self._store.get_or_create(plan.key, lambda: self._create(plan)))
        if vectors.meta.k != request.k or vectors.meta.lam != request.lam:
            raise VectorsError(
                f"vector set {plan.key.id} holds k={vectors.meta.k}, lambda={vectors.meta.lam} "
                f"but k={request.k}, lambda={request.lam} was asked for: delete it and recalibrate"
            )
        return LoadedVectors(plan.key.id, vectors)

    def _verified(self, blob: bytes) -> SteeringVectors:
        facts = self._source.facts
        vectors = SteeringVectors.from_bytes(blob)
        vectors.check_compatible(
            num_layers=facts.num_layers,
            hidden_size=facts.hidden_size,
            fingerprint=facts.fingerprint,
        )
        return vectors

    def _create(self, plan: CalibrationPlan) -> bytes:
        """Calibrate (or re-project known activations) and serialise the set for the store."""
        known = self._activations.get(plan.activation_key)
        if known is None:
            log.info("vectors.calibrating", key=plan.key.id, model=self._source.facts.model_id)
            result: CalibrationResult = calibrate(
                self._source, plan.harmful, plan.benign, plan.config, progress=self._progress
            )
            self._activations[plan.activation_key] = (result.activations, result.vectors.meta)
            return result.vectors.to_bytes()
        activations, meta = known
        config = plan.config
        log.info("vectors.reprojecting", key=plan.key.id, k=config.k, lam=config.lam)
        tensor = refusal_vectors(
            activations.harmful_base,
            activations.harmful_refusal,
            activations.benign_base,
            k=config.k,
            lam=config.lam,
        )
        meta = dataclasses.replace(meta, k=config.k, lam=config.lam)
        return SteeringVectors(vectors=tensor, meta=meta).to_bytes()
