"""sarsteer-guard: SARSteer refusal steering for audio-language models in voice pipelines.

The public API: :class:`Guard` (speech turns in, guarded streamed responses out) and its
vocabulary (:class:`Turn`, :class:`TextDelta`, :class:`TurnDecision`, :class:`TurnError`),
adapters' plumbing (:func:`build_guard`, :class:`GuardHandle`, :func:`turn_events`),
the SARSteer building blocks (:class:`SteeringVectors`, :class:`SteeringHooks`,
:func:`calibrate`), model loading, policies, stores and the audit log. Heavy modules
(torch, transformers, redis) are imported on first use, so ``import sarsteer_guard``
stays cheap for tools that only read policies or audit logs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sarsteer_guard._version import __version__
from sarsteer_guard.errors import (
    AudioError,
    AuditChainError,
    AuditError,
    GuardError,
    ManifestError,
    ModelLoadError,
    OverloadedError,
    PolicyError,
    StoreUnavailableError,
    VectorIntegrityError,
    VectorsError,
)
from sarsteer_guard.guard.events import (
    GuardEvent,
    HistoryItem,
    SpeechGuard,
    TextDelta,
    Timings,
    Turn,
    TurnDecision,
    TurnError,
)

if TYPE_CHECKING:
    from sarsteer_guard.audit import AuditLog, open_audit_log
    from sarsteer_guard.calibration import CalibrationConfig, calibrate
    from sarsteer_guard.connect import GuardHandle, build_guard, turn_events
    from sarsteer_guard.guard.core import Guard
    from sarsteer_guard.models import AudioLanguageModel, Message, load_model
    from sarsteer_guard.policy import Policy, PolicyDecision, load_policy
    from sarsteer_guard.remote import RemoteGuard
    from sarsteer_guard.steering import SteeringHooks, SteeringVectors, VectorMeta
    from sarsteer_guard.store import VectorStore, open_store

_LAZY = {
    "Guard": "sarsteer_guard.guard.core",
    "RemoteGuard": "sarsteer_guard.remote",
    "GuardHandle": "sarsteer_guard.connect",
    "build_guard": "sarsteer_guard.connect",
    "turn_events": "sarsteer_guard.connect",
    "AudioLanguageModel": "sarsteer_guard.models",
    "Message": "sarsteer_guard.models",
    "load_model": "sarsteer_guard.models",
    "SteeringVectors": "sarsteer_guard.steering",
    "SteeringHooks": "sarsteer_guard.steering",
    "VectorMeta": "sarsteer_guard.steering",
    "CalibrationConfig": "sarsteer_guard.calibration",
    "calibrate": "sarsteer_guard.calibration",
    "Policy": "sarsteer_guard.policy",
    "PolicyDecision": "sarsteer_guard.policy",
    "load_policy": "sarsteer_guard.policy",
    "VectorStore": "sarsteer_guard.store",
    "open_store": "sarsteer_guard.store",
    "AuditLog": "sarsteer_guard.audit",
    "open_audit_log": "sarsteer_guard.audit",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sarsteer_guard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AudioError",
    "AudioLanguageModel",
    "AuditChainError",
    "AuditError",
    "AuditLog",
    "CalibrationConfig",
    "Guard",
    "GuardError",
    "GuardEvent",
    "GuardHandle",
    "HistoryItem",
    "ManifestError",
    "Message",
    "ModelLoadError",
    "OverloadedError",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "RemoteGuard",
    "SpeechGuard",
    "SteeringHooks",
    "SteeringVectors",
    "StoreUnavailableError",
    "TextDelta",
    "Timings",
    "Turn",
    "TurnDecision",
    "TurnError",
    "VectorIntegrityError",
    "VectorMeta",
    "VectorStore",
    "VectorsError",
    "__version__",
    "build_guard",
    "calibrate",
    "load_model",
    "load_policy",
    "open_audit_log",
    "open_store",
    "turn_events",
]
