"""What a loaded Guard holds besides its engine and policy: stores, audit, vectors.

Opened together by :func:`open_resources` once the engine has loaded its model (vector sets
are checked against it, and calibration captures through it), closed together by
:meth:`Resources.close`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sarsteer_guard.audit.base import AuditLog
    from sarsteer_guard.guard.auditing import AuditWriter
    from sarsteer_guard.guard.backend import GenerationBackend
    from sarsteer_guard.guard.vectors import VectorProvider
    from sarsteer_guard.models.base import ModelFacts
    from sarsteer_guard.steering import SteeringVectors
    from sarsteer_guard.store import VectorStore

__all__ = ["Resources", "check_store_keys", "open_resources"]


@dataclass(frozen=True)
class Resources:
    """A loaded Guard's model facts, vector store, audit log and writer, and vector provider."""

    facts: ModelFacts
    store: VectorStore
    audit_log: AuditLog
    auditor: AuditWriter
    vectors: VectorProvider

    def close(self) -> None:
        """Finish queued audit writes, then close the audit log and the store (best effort)."""
        self.auditor.close()
        for resource in (self.audit_log, self.store):
            with contextlib.suppress(Exception):
                resource.close()


def open_resources(
    engine: GenerationBackend,
    *,
    store: str | Path | VectorStore | None,
    audit: str | Path | AuditLog | None,
    vectors: str | Path | SteeringVectors | None,
    calibration_batch_size: int,
    progress: bool,
) -> Resources:
    """Open the stores (URLs or objects; None = embedded defaults) for a loaded engine."""
    from sarsteer_guard.guard.auditing import AuditWriter
    from sarsteer_guard.guard.vectors import VectorProvider

    facts = engine.facts
    vector_store = _open_store(store)
    opened: list[VectorStore | AuditLog] = [vector_store]
    try:
        if vectors is None:
            check_store_keys(vector_store)
        audit_log = _open_audit_log(audit)
        opened.append(audit_log)
        # Connects and, for a spooling log, replays what a crashed process left in its
        # spool now rather than on the first record written (never raises for a backend
        # that is merely down: the spool takes the records meanwhile).
        audit_log.open()
        provider = VectorProvider(
            engine,
            vector_store,
            batch_size=calibration_batch_size,
            progress=progress,
            fixed=None if vectors is None else _fixed_vectors(vectors, facts),
        )
    except BaseException:
        for resource in reversed(opened):  # a failed start leaves nothing open
            with contextlib.suppress(Exception):
                resource.close()
        raise
    return Resources(facts, vector_store, audit_log, AuditWriter(audit_log, facts), provider)


def _open_store(spec: str | Path | VectorStore | None) -> VectorStore:
    if spec is None or isinstance(spec, str | Path):
        from sarsteer_guard.store import open_store

        return open_store(None if spec is None else str(spec))
    return spec


def check_store_keys(store: VectorStore) -> None:
    """Refuse a store whose signing key can never work (missing, malformed, too short).

    Without this the key is read inside the first turn that needs vectors, and a Guard
    that reported ready would answer every turn with a fail-closed refusal (or, under
    ``fail_open``, unsteered). Stores that are not ours (test doubles) are not checked.

    Raises:
        SigningKeyError: with a one-line message that says how to set the key.
    """
    from sarsteer_guard.store import BaseVectorStore, CachedVectorStore

    inner = store.inner if isinstance(store, CachedVectorStore) else store
    if isinstance(inner, BaseVectorStore):
        inner.check_keys()


def _open_audit_log(spec: str | Path | AuditLog | None) -> AuditLog:
    if spec is None or isinstance(spec, str | Path):
        from sarsteer_guard.audit import open_audit_log

        return open_audit_log(None if spec is None else str(spec))
    return spec


def _fixed_vectors(spec: str | Path | SteeringVectors, facts: ModelFacts) -> SteeringVectors:
    """A set given directly (file or object), refused unless it was made for this model."""
    from sarsteer_guard.steering import SteeringVectors

    vectors = spec if isinstance(spec, SteeringVectors) else SteeringVectors.load(spec)
    vectors.check_compatible(
        num_layers=facts.num_layers, hidden_size=facts.hidden_size, fingerprint=facts.fingerprint
    )
    return vectors
