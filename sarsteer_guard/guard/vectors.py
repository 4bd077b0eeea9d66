"""Getting the right vector set for a policy decision: memory, then the store, then calibration.

Vector sets are keyed by content (model fingerprint, calibration digest, refusal
instruction, k, lambda), so policies that differ only in alpha share one set. A miss
in the store is calibrated once across replicas (the store's ``get_or_create`` lock);
activations are kept in memory so a rule that changes only k or lambda recomputes
the projection instead of re-running the model.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarsteer_guard.calibration import (
    Activations,
    CalibrationConfig,
    CalibrationResult,
    calibrate,
    calibration_digest,
)
from sarsteer_guard.defaults import (
    DEFAULT_BENIGN,
    DEFAULT_HARMFUL,
    DEFAULT_PROMPT,
    DEFAULT_REFUSAL_INSTRUCTION,
)
from sarsteer_guard.errors import VectorsError
from sarsteer_guard.log import get_logger
from sarsteer_guard.manifest import Manifest, load_manifest
from sarsteer_guard.models.base import AudioLanguageModel
from sarsteer_guard.steering import SteeringVectors, VectorMeta
from sarsteer_guard.steering.extract import refusal_vectors
from sarsteer_guard.store import VectorSetKey, VectorStore

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class VectorRequest:
    """Everything a vector set depends on, as the policy names it (alpha is not here)."""

    harmful: Path = DEFAULT_HARMFUL
    benign: Path = DEFAULT_BENIGN
    refusal_instruction: str = DEFAULT_REFUSAL_INSTRUCTION
    prompt: str = DEFAULT_PROMPT
    k: int = 10
    lam: float = 1.0
    text_only: bool = False
    vector_set_id: str | None = None  # a stored set chosen by id instead of a calibration spec


@dataclass(frozen=True, slots=True)
class LoadedVectors:
    """A verified vector set and its store id."""

    id: str
    vectors: SteeringVectors


class VectorProvider:
    """Thread-safe, in-process cache in front of a :class:`VectorStore`."""

    def __init__(
        self,
        lm: AudioLanguageModel,
        store: VectorStore,
        *,
        batch_size: int = 8,
        progress: bool = False,
        fixed: SteeringVectors | None = None,
        exclusive: Callable[[Callable[[], Any]], Any] | None = None,
    ) -> None:
        self._lm = lm
        self._store = store
        self._batch_size = batch_size
        self._progress = progress
        self._cache: dict[object, LoadedVectors] = {}
        self._activations: dict[tuple[str, str, str, str], tuple[Activations, VectorMeta]] = {}
        self._lock = threading.Lock()
        self._manifests: dict[Path, Manifest] = {}  # reading one hashes every clip: once only
        # Calibration hooks every layer: it must run where nothing else uses the model
        # (the engine's worker thread, between batches).
        self._exclusive: Callable[[Callable[[], Any]], Any] = exclusive or (lambda fn: fn())
        self._fixed = None if fixed is None else LoadedVectors(fixed.digest[:32], fixed)

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

    def _manifest(self, path: Path) -> Manifest:
        manifest = self._manifests.get(path)
        if manifest is None:
            manifest = self._manifests[path] = load_manifest(path)
        return manifest

    def _fetch(self, request: VectorRequest) -> LoadedVectors:
        lm = self._lm
        if request.vector_set_id is not None:
            blob = self._store.get(request.vector_set_id)
            vectors = SteeringVectors.from_bytes(blob)
            vectors.check_compatible(
                num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint
            )
            return LoadedVectors(request.vector_set_id, vectors)
        harmful = self._manifest(request.harmful)
        benign = self._manifest(request.benign)
        config = CalibrationConfig(
            prompt=request.prompt,
            refusal_instruction=request.refusal_instruction,
            k=request.k,
            lam=request.lam,
            batch_size=self._batch_size,
            text_only=request.text_only,
        )
        digest = calibration_digest(harmful, benign, config)
        key = VectorSetKey(
            model_fingerprint=lm.fingerprint,
            calibration_digest=digest,
            refusal_instruction=request.refusal_instruction,
            k=request.k,
            lam=request.lam,
        )

        def create() -> bytes:
            activation_key = (lm.fingerprint, digest, request.refusal_instruction, request.prompt)
            known = self._activations.get(activation_key)
            if known is None:
                log.info("vectors.calibrating", key=key.id, model=lm.model_id)
                result: CalibrationResult = self._exclusive(
                    lambda: calibrate(lm, harmful, benign, config, progress=self._progress)
                )
                self._activations[activation_key] = (result.activations, result.vectors.meta)
                return result.vectors.to_bytes()
            activations, meta = known
            log.info("vectors.reprojecting", key=key.id, k=request.k, lam=request.lam)
            tensor = refusal_vectors(
                activations.harmful_base,
                activations.harmful_refusal,
                activations.benign_base,
                k=request.k,
                lam=request.lam,
            )
            meta = dataclasses.replace(meta, k=request.k, lam=request.lam)
            return SteeringVectors(vectors=tensor, meta=meta).to_bytes()

        blob = self._store.get_or_create(key, create)
        vectors = SteeringVectors.from_bytes(blob)
        vectors.check_compatible(
            num_layers=lm.num_layers, hidden_size=lm.hidden_size, fingerprint=lm.fingerprint
        )
        if vectors.meta.k != request.k or vectors.meta.lam != request.lam:
            raise VectorsError(
                f"vector set {key.id} holds k={vectors.meta.k}, lambda={vectors.meta.lam} but "
                f"k={request.k}, lambda={request.lam} was asked for: delete it and recalibrate"
            )
        return LoadedVectors(key.id, vectors)
