"""Structured logging setup (structlog), shared by the CLI, the Guard and the server."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False


def configure_logging(*, json: bool | None = None, level: str | None = None) -> None:
    """Configure structlog once; JSON lines when not on a terminal, readable lines otherwise.

    Logs go to stderr so that ``--json`` output on stdout stays machine-readable.
    ``SARSTEER_LOG_LEVEL`` and ``SARSTEER_LOG_JSON`` override the defaults.
    """
    global _configured
    level_name = (level or os.environ.get("SARSTEER_LOG_LEVEL", "INFO")).upper()
    env_json = os.environ.get("SARSTEER_LOG_JSON")
    if json is None:
        json = env_json == "1" if env_json is not None else not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str) -> Any:
    """Return a structlog logger bound to ``name`` (configuring defaults on first use)."""
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
