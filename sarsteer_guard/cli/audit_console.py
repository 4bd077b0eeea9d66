"""``sarsteer-guard audit serve``: the review console (see :mod:`sarsteer_guard.console`).

Tokens come from the environment or ``--token-file`` only, never from arguments (they
would show in ``ps``). The console refuses a non-loopback ``--host`` without tokens.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _cmd_serve(args: argparse.Namespace) -> int:
    from sarsteer_guard.console.app import serve
    from sarsteer_guard.console.auth import load_console_tokens, load_secret
    from sarsteer_guard.console.settings import ConsoleSettings

    settings = ConsoleSettings(
        audit_url=args.audit,
        host=args.host,
        port=args.port,
        tokens=load_console_tokens(args.token_file),
        secret=load_secret(),
        page_size=args.page_size,
        verify_every_s=args.verify_every,
        session_hours=args.session_hours,
        reviewer_export_limit=args.export_limit,
        allowed_hosts=tuple(args.allowed_host or ()),
    )
    serve(settings)
    return 0


def add_serve(sub: Any, store: argparse.ArgumentParser, kwargs: dict[str, Any]) -> None:
    """Register ``audit serve`` (``kwargs``: the audit group's parser settings)."""
    p = sub.add_parser("serve", parents=[store], **kwargs)
    p.add_argument("--host", default="127.0.0.1", help="interface (non-loopback needs tokens)")
    p.add_argument("--port", type=int, default=8787, help="port to listen on")
    p.add_argument(
        "--token-file",
        type=Path,
        help="file of 'reviewer NAME TOKEN' / 'admin NAME TOKEN' lines (or JSON), chmod 600; "
        "also SARSTEER_CONSOLE_REVIEWER_TOKENS / SARSTEER_CONSOLE_ADMIN_TOKENS as "
        "name=TOKEN,name=TOKEN",
    )
    p.add_argument("--page-size", type=int, default=50, help="turns per list page")
    p.add_argument(
        "--verify-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="re-verify the chain when a page needs it and the last check is older",
    )
    p.add_argument("--session-hours", type=float, default=8.0, help="sign-in lifetime")
    p.add_argument(
        "--export-limit", type=int, default=1000, help="most records a reviewer exports at once"
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="also accept this Host header (the console's name behind a proxy; repeat)",
    )
    p.set_defaults(func=_cmd_serve)
