"""Prometheus metrics for the Guard (process-wide, as Prometheus client libraries expect)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from sarsteer_guard.guard.events import TurnDecision

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)

TURNS = Counter(
    "sarsteer_turns_total", "Turns answered, by policy and outcome", ["policy", "outcome"]
)
REFUSALS = Counter(
    "sarsteer_refusals_total", "Turns judged refused, by policy and rule", ["policy", "rule"]
)
FAILURES = Counter("sarsteer_failures_total", "Turns that failed, by kind", ["kind"])
FIRST_TOKEN_SECONDS = Histogram(
    "sarsteer_first_token_seconds",
    "Turn submitted to first generated token",
    buckets=_LATENCY_BUCKETS,
)
TURN_SECONDS = Histogram(
    "sarsteer_turn_seconds", "Turn submitted to final decision", buckets=_LATENCY_BUCKETS
)
QUEUE_DEPTH = Gauge("sarsteer_queue_depth", "Turns waiting for a generation batch")
BATCH_SIZE = Histogram(
    "sarsteer_batch_size", "Rows per generation batch", buckets=(1, 2, 4, 8, 16, 32, 64)
)
AUDIT_FAILURES = Counter(
    "sarsteer_audit_failures_total", "Audit records that could not be written or spooled"
)


def record_turn(event: TurnDecision, batch_size: int) -> None:
    """Count a decided turn: outcome, refusal, latencies and the batch it ran in (0: none)."""
    outcome = "refused" if event.refused else "answered"
    TURNS.labels(policy=event.policy, outcome=outcome).inc()
    if event.refused:
        REFUSALS.labels(policy=event.policy, rule=event.rule or "defaults").inc()
    TURN_SECONDS.observe(event.timings.total_ms / 1000)
    if event.tokens:
        FIRST_TOKEN_SECONDS.observe(event.timings.first_token_ms / 1000)
    if batch_size:
        BATCH_SIZE.observe(batch_size)
