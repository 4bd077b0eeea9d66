"""Prometheus metrics for the WebSocket server (the Guard's own live in guard.metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("sarsteer_server_connections", "Open WebSocket connections")
OPEN_TURNS = Gauge("sarsteer_server_open_turns", "Turns receiving audio or generating")
TURNS = Counter(
    "sarsteer_server_turns_total",
    "Turns by final message (decision, error, cancelled)",
    ["outcome"],
)
ERRORS = Counter("sarsteer_server_errors_total", "Error messages sent, by kind", ["kind"])
AUTH_FAILURES = Counter(
    "sarsteer_server_auth_failures_total", "Requests refused for a missing or wrong token"
)
ORIGIN_REFUSALS = Counter(
    "sarsteer_server_origin_refusals_total",
    "WebSocket handshakes refused for a web Origin not in --allow-origin",
)
END_TO_FIRST_TOKEN_SECONDS = Histogram(
    "sarsteer_server_end_to_first_token_seconds",
    "turn.end received to first delta sent",
    buckets=(0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0),
)
