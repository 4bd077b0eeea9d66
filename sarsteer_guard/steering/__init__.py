"""SARSteer math and hooks: vector sets, extraction, capture and steering (torch only).

This package knows nothing of Redis, policies, audio files or model families: it works on
tensors and on any list of decoder-layer modules.
"""

from sarsteer_guard.steering.extract import (
    mean_difference,
    principal_directions,
    project_out,
    refusal_vectors,
)
from sarsteer_guard.steering.hooks import AlphaLike, LastPositionCapture, SteeringHooks, steer
from sarsteer_guard.steering.vectors import SteeringVectors, VectorMeta

__all__ = [
    "AlphaLike",
    "LastPositionCapture",
    "SteeringHooks",
    "SteeringVectors",
    "VectorMeta",
    "mean_difference",
    "principal_directions",
    "project_out",
    "refusal_vectors",
    "steer",
]
