"""``sarsteer-guard serve``: the guard as a WebSocket service for remote voice workers."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarsteer_guard.cli._common import (
    AUDIT_DEFAULT,
    AUDIT_HELP,
    MODEL_REQUIRED_HELP,
    STORE_HELP,
    RefusedSecretFlag,
    require_model,
)

if TYPE_CHECKING:
    from sarsteer_guard.guard.events import SpeechGuard
    from sarsteer_guard.server.settings import ServerSettings

#: Redis URL for per-session history shared by replicas (docs/realtime.md, "Fleet").
HISTORY_URL_ENV = "SARSTEER_HISTORY_URL"
#: Test-only switch (also ``--scripted``): serve a ScriptedGuard instead of a model.
SCRIPTED_ENV = "SARSTEER_GUARD_SCRIPTED"
#: Where a worker token comes from, for the refused ``--token`` flag.
AUTH_HINT = "tokens come from SARSTEER_GUARD_TOKEN / SARSTEER_GUARD_READ_TOKEN or --token-file PATH"


def _rate(text: str) -> float:
    """Parse ``N`` or ``N/s``."""
    value = text.removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N/s, got {text!r}") from None
    if rate < 0:
        raise argparse.ArgumentTypeError("the rate must be >= 0 (0 disables the limit)")
    return rate


def register(subparsers: Any) -> None:
    """Add the ``serve`` command."""
    p = subparsers.add_parser(
        "serve",
        help="serve the guard over WebSocket (/v1/turns) with health and metrics endpoints",
        description="Run the guard as a network service for voice workers on other hosts "
        "(RemoteGuard). Tokens come from SARSTEER_GUARD_TOKEN / SARSTEER_GUARD_READ_TOKEN or "
        "--token-file, never from the command line. Listens on loopback unless --host says "
        "otherwise; a non-loopback host requires a worker token. SIGTERM drains open turns.",
    )
    _add_guard_options(p)
    _add_listen_options(p)
    _add_limit_options(p)
    _add_audio_limit_options(p)
    p.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=None,
        help="json (the default for serve, also SARSTEER_LOG_FORMAT) or text (readable lines)",
    )
    # Test-only: a ScriptedGuard, so protocol tests need no model. Hidden on purpose.
    p.add_argument("--scripted", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scripted-delay-s", type=float, default=0.01, help=argparse.SUPPRESS)
    p.add_argument("--scripted-reply", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _add_guard_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=MODEL_REQUIRED_HELP)
    p.add_argument("--policy", type=Path, default=None, help="policy YAML (hot reloaded)")
    p.add_argument("--store", default=None, help=STORE_HELP)
    p.add_argument("--audit", default=None, help=AUDIT_HELP + AUDIT_DEFAULT)
    p.add_argument("--engine", default="transformers", help="generation backend: transformers|vllm")
    p.add_argument("--max-batch-size", type=int, default=16, help="rows per generation batch")
    p.add_argument("--max-queue", type=int, default=64, help="turns allowed to wait")


def _add_listen_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 = all)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file with 'worker: TOKEN' / 'read: TOKEN' lines (or JSON), chmod 600",
    )
    p.add_argument(
        "--token",
        action=RefusedSecretFlag,
        metavar="TOKEN",
        hint=AUTH_HINT,
        help="not accepted (the command line is visible in ps): " + AUTH_HINT,
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="URL",
        help="web origin (scheme://host[:port]) whose pages may open /v1/turns; repeatable, "
        "also SARSTEER_GUARD_ALLOWED_ORIGINS (comma-separated). Handshakes with any other "
        "Origin header get 403; clients that send none (RemoteGuard) are unaffected",
    )


def _add_limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-message-bytes",
        type=int,
        default=1 << 20,
        help="largest WebSocket message handled (default 1 MiB)",
    )
    p.add_argument("--max-turn-s", type=float, default=30.0, help="longest audio per turn")
    p.add_argument(
        "--rate-limit",
        type=_rate,
        default=20.0,
        metavar="N/s",
        help="turn starts per second per connection (0 = unlimited)",
    )
    p.add_argument("--turn-timeout-s", type=float, default=60.0, help="turn.end to decision")
    p.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=20.0,
        help="on SIGTERM, how long open turns may run before they are cancelled",
    )
    p.add_argument(
        "--max-open-turns",
        type=int,
        default=64,
        help="turns one connection may have open at once (a worker's concurrent calls)",
    )
    p.add_argument(
        "--max-new-tokens-cap",
        type=int,
        default=512,
        help="a turn asking for more max_new_tokens gets this many (default 512)",
    )


def _add_audio_limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--send-timeout-s",
        type=float,
        default=10.0,
        help="deadline of each message sent; a client that stops reading is disconnected "
        "(default 10)",
    )
    p.add_argument(
        "--max-audio-mb",
        type=float,
        default=512.0,
        help="audio all open turns may hold, in MiB at 16 kHz mono float32 (default 512)",
    )
    p.add_argument(
        "--max-audio-mb-per-connection",
        type=float,
        default=64.0,
        help="the same budget for one connection (default 64)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open turn sockets; more handshakes get HTTP 503 (default 256)",
    )


def _guard(args: argparse.Namespace) -> SpeechGuard:
    if args.scripted or os.environ.get(SCRIPTED_ENV) == "1":
        from sarsteer_guard.log import get_logger
        from sarsteer_guard.server.scripted import ScriptedGuard

        get_logger(__name__).warning("server.scripted_guard", hint="test only: no model")
        scripted = ScriptedGuard(delay_s=args.scripted_delay_s)
        if args.scripted_reply is not None:
            scripted.reply = args.scripted_reply
        return scripted
    from sarsteer_guard.guard.core import Guard

    return Guard(
        model=args.model,
        policy=args.policy,
        store=args.store,
        audit=args.audit,
        max_batch_size=args.max_batch_size,
        max_queue=args.max_queue,
        max_turn_s=args.max_turn_s,
        engine=args.engine,
        history=os.environ.get(HISTORY_URL_ENV) or None,  # replicas share session history
    )


def run(args: argparse.Namespace) -> int:
    """Check the settings and bind the port, then build the guard and the app; serve.

    Everything that can fail fast (settings, log format, a busy port) fails before the
    model loads, with one line and exit 2.
    """
    _configure_logs(args.log_format)
    try:
        from sarsteer_guard.server.app import create_app
        from sarsteer_guard.server.runner import run_server
    except ModuleNotFoundError as error:
        from sarsteer_guard.errors import GuardError

        raise GuardError(
            f"the server needs {error.name}: pip install 'sarsteer-guard[server]'"
        ) from error
    from sarsteer_guard.server.runner import bind_socket, client_url

    scripted = args.scripted or os.environ.get(SCRIPTED_ENV) == "1"
    if not scripted:
        require_model(args.model, "serve")
    settings = _settings(args)
    settings.check()  # before loading a model: a bad setting should fail in milliseconds
    sock = bind_socket(settings.host, settings.port)
    try:
        settings = replace(settings, port=sock.getsockname()[1])  # --port 0 picks a free one
        app = create_app(_guard(args), settings)
    except BaseException:
        sock.close()  # the port is free again for the fixed command line
        raise
    app.state.service.url = client_url(settings.host, settings.port)
    return run_server(app, settings, sock)


def _configure_logs(explicit: str | None) -> None:
    from sarsteer_guard.errors import GuardError
    from sarsteer_guard.log import configure_logging, resolve_format

    try:
        configure_logging(fmt=resolve_format(explicit, default="json"))
    except ValueError as error:
        raise GuardError(str(error)) from None


def _settings(args: argparse.Namespace) -> ServerSettings:
    from sarsteer_guard.server.settings import (
        ServerSettings,
        load_allowed_origins,
        load_tokens,
    )

    return ServerSettings(
        host=args.host,
        port=args.port,
        tokens=load_tokens(args.token_file),
        max_message_bytes=args.max_message_bytes,
        max_turn_s=args.max_turn_s,
        rate_limit_per_s=args.rate_limit,
        turn_timeout_s=args.turn_timeout_s,
        shutdown_grace_s=args.shutdown_grace_s,
        max_open_turns=args.max_open_turns,
        allowed_origins=load_allowed_origins(args.allow_origin),
        max_new_tokens_cap=args.max_new_tokens_cap,
        send_timeout_s=args.send_timeout_s,
        max_audio_mb=args.max_audio_mb,
        max_audio_mb_per_connection=args.max_audio_mb_per_connection,
        max_connections=args.max_connections,
    )
