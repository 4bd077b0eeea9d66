"""The review console app: routes, security middleware, start-up.

Security in one place (:class:`SecurityMiddleware`): requests for a Host the console
does not serve are refused (DNS rebinding against a loopback console), and every
response carries a strict Content-Security-Policy (no script at all, styles only from
the console's own stylesheet, media only from itself, no framing), ``nosniff``, a
same-origin-only referrer (``no-referrer`` would make browsers send ``Origin: null``
with forms, which the Origin check refuses), ``no-store`` caching of pages and, off
loopback, HSTS. Each request is logged as one JSON line (method, path, status, time,
who) without query strings, cookies or form contents.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sarsteer_guard.audit.base import AuditLog
from sarsteer_guard.audit.review import ReviewLog
from sarsteer_guard.console import admin, pages, reports, signin
from sarsteer_guard.console.settings import ConsoleSettings
from sarsteer_guard.console.web import Console, log

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), interest-cohort=()"),
)


def host_name(header: str) -> str:
    """The host part of a Host header (``[::1]:8787`` -> ``[::1]``), lowercased."""
    value = header.strip().lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class SecurityMiddleware:
    """Host check, security headers and one structured log line per request."""

    def __init__(self, app: ASGIApp, settings: ConsoleSettings) -> None:
        self.app = app
        self.hosts = settings.hosts()
        self.hsts = not settings.loopback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the Host, run the app with headers added, log one line."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        status = {"code": 0}

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                out = MutableHeaders(scope=message)
                for name, value in HEADERS:
                    out[name] = value
                if self.hsts:
                    out["strict-transport-security"] = "max-age=31536000"
                if "cache-control" not in out:
                    out["cache-control"] = "no-store"
            await send(message)

        if host not in self.hosts:
            response: Response = PlainTextResponse("unknown host", status_code=400)
            await response(scope, receive, secured)
        else:
            await self.app(scope, receive, secured)
        log.info(
            "console.request",
            method=scope.get("method"),
            path=scope.get("path"),
            status=status["code"],
            ms=round((time.perf_counter() - started) * 1000, 1),
            actor=(scope.get("state") or {}).get("actor"),
        )


_CSS: bytes | None = None


async def stylesheet(request: Request) -> Response:
    """The console's only stylesheet (no inline styles anywhere)."""
    global _CSS
    if _CSS is None:
        _CSS = resources.files("sarsteer_guard.console").joinpath("static/console.css").read_bytes()
    return Response(_CSS, media_type="text/css", headers={"cache-control": "private, max-age=600"})


async def no_icon(request: Request) -> Response:
    """No favicon (browsers ask for one on every first visit)."""
    return Response(status_code=204)


ROUTES = [
    Route("/", pages.list_page),
    Route("/records/{record_id}", pages.detail_page),
    Route("/records/{record_id}/audio", pages.audio_route),
    Route("/records/{record_id}/labels", pages.label_action, methods=["POST"]),
    Route("/verify", pages.verify_action, methods=["POST"]),
    Route("/dashboard", reports.dashboard_page),
    Route("/export", reports.export_action, methods=["POST"]),
    Route("/admin/retention", admin.retention_page),
    Route("/admin/retention/records", admin.prune_records_action, methods=["POST"]),
    Route("/admin/retention/audio", admin.prune_audio_action, methods=["POST"]),
    Route("/admin/access", admin.access_page),
    Route("/signin", signin.signin_page, methods=["GET"]),
    Route("/signin", signin.signin_action, methods=["POST"]),
    Route("/signout", signin.signout_action, methods=["POST"]),
    Route("/static/console.css", stylesheet),
    Route("/favicon.ico", no_icon),
]


def create_app(settings: ConsoleSettings, audit: AuditLog | None = None) -> Starlette:
    """The console over ``audit`` (default: open ``settings.audit_url`` read-only).

    Opens the store now, so a missing log fails at start-up, not at the first page.

    Raises:
        ConsoleConfigError: unsafe settings (a public bind without tokens).
        AuditStoreMissingError: there is no audit log at the URL.
    """
    settings.check()
    if audit is None:
        from sarsteer_guard.audit import open_audit_log

        audit = open_audit_log(settings.audit_url, create=False)
    audit.open()
    console = Console(settings, audit, ReviewLog.beside(audit))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        console.close()

    app = Starlette(
        routes=ROUTES,
        middleware=[Middleware(SecurityMiddleware, settings=settings)],
        lifespan=lifespan,
    )
    app.state.console = console
    return app


def serve(settings: ConsoleSettings) -> None:
    """Run the console with uvicorn until interrupted (JSON log lines on stderr).

    ``SARSTEER_LOG_JSON=0`` gives readable lines on a terminal instead.
    """
    import uvicorn

    from sarsteer_guard.log import configure_logging

    app = create_app(settings)  # settings and the store are checked before logging is set up
    configure_logging(json=os.environ.get("SARSTEER_LOG_JSON") != "0")
    tokens = settings.tokens
    log.info(
        "console.start",
        host=settings.host,
        port=settings.port,
        tokens=len(tokens.entries),
        secure_cookies=settings.secure_cookies,
    )
    if not tokens.configured:
        log.warning(
            "console.open_mode",
            hint="no tokens: anyone on this machine may use the console as admin 'local'",
        )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )
