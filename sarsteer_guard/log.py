"""Structured logging setup (structlog), shared by the CLI, the Guard and the server.

One renderer for everything the process logs: structlog events and the standard
library's records (uvicorn, transformers, ...), which a root handler renders with the
same processors, so a JSON log never carries a raw line and a terminal never mixes
formats. The format is chosen once per process (:func:`resolve_format`): the command
line, then ``SARSTEER_LOG_FORMAT``, then the legacy ``SARSTEER_LOG_JSON``, then the
command's own default (``serve`` logs JSON for log collectors), then readable lines on a
terminal and JSON otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.processors import TimeStamper
from structlog.typing import Processor

#: Environment variable choosing the log format: ``json`` or ``text``.
LOG_FORMAT_ENV = "SARSTEER_LOG_FORMAT"
LOG_FORMATS = ("json", "text")
LogFormat = Literal["json", "text"]

_configured = False


def resolve_format(
    explicit: str | None = None,
    *,
    default: LogFormat | None = None,
    environ: Mapping[str, str] | None = None,
    tty: bool | None = None,
) -> LogFormat:
    """The log format to use; ``ValueError`` (one line) for an unknown explicit or env value.

    Precedence: ``explicit`` (``--log-format``), ``SARSTEER_LOG_FORMAT``, the legacy
    ``SARSTEER_LOG_JSON=1|0``, ``default`` (the command's), text on a terminal, else JSON.
    """
    env = os.environ if environ is None else environ
    for value, origin in ((explicit, "--log-format"), (env.get(LOG_FORMAT_ENV), LOG_FORMAT_ENV)):
        if value is None or not value.strip():
            continue
        chosen = value.strip().lower()
        if chosen == "json":
            return "json"
        if chosen == "text":
            return "text"
        raise ValueError(f"{origin}={value!r} is not a log format: use json or text")
    legacy = env.get("SARSTEER_LOG_JSON")
    if legacy is not None:
        return "json" if legacy == "1" else "text"
    if default is not None:
        return default
    is_tty = sys.stderr.isatty() if tty is None else tty
    return "text" if is_tty else "json"


def configure_logging(
    *, json: bool | None = None, level: str | None = None, fmt: LogFormat | None = None
) -> None:
    """Configure structlog and the stdlib root handler; safe to call again (last call wins).

    ``fmt`` (or the older ``json`` flag) picks the format; without either it is
    :func:`resolve_format`'s choice, an unknown ``SARSTEER_LOG_FORMAT`` counting as unset
    here (``serve`` refuses it with a one-line error). Logs go to stderr so that
    ``--json`` output on stdout stays machine-readable. ``SARSTEER_LOG_LEVEL`` sets the level.
    """
    global _configured
    level_name = (level or os.environ.get("SARSTEER_LOG_LEVEL", "INFO")).upper()
    if fmt is None and json is not None:
        fmt = "json" if json else "text"
    if fmt is None:
        try:
            fmt = resolve_format()
        except ValueError:
            fmt = resolve_format(environ={})
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_STDERR),
        cache_logger_on_first_use=False,
    )
    _route_stdlib(renderer, stamp)
    _configured = True


class _CurrentStderr:
    """A file that is whatever ``sys.stderr`` is when written to.

    Bound once at configuration, the real stream could be one a test swapped in and has
    since closed; looked up per write, logs always reach the live stderr.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


#: Typed as the stream structlog's factory asks for; it only ever calls write and flush.
_STDERR: TextIO = cast("TextIO", _CurrentStderr())


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _STDERR.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def _route_stdlib(renderer: Processor, stamp: TimeStamper) -> None:
    """Render standard-library records (uvicorn's among them) like structlog events.

    The root logger's level is left alone (libraries' INFO chatter stays off); only our
    handler is replaced, so calling this twice never doubles lines.
    """
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            stamp,
            structlog.processors.format_exc_info,
        ],
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root.addHandler(handler)


def get_logger(name: str) -> Any:
    """Return a structlog logger bound to ``name`` (configuring defaults on first use)."""
    if not _configured:
        configure_logging()
    return structlog.get_logger(name)
