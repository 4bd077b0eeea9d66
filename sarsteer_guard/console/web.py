"""What every console page shares: state, sign-in checks, CSRF, forms, rendering, logging.

A page is an ``async def page(request, ctx) -> Response`` wrapped by :func:`page`,
which signs the visitor in (or redirects to the sign-in page), checks the role, reads
and CSRF-checks POST forms, and hands the page a :class:`Ctx`. Everything that blocks
(the audit store, the review streams) runs in a worker thread (:meth:`Ctx.run`).
Every view is written to the access log before its data is sent; when that write
fails, the page fails (503) rather than show data nobody recorded as seen.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar
from urllib.parse import parse_qsl, quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sarsteer_guard.audit.base import AuditLog
from sarsteer_guard.audit.review import LABELS, DetailValue, ReviewLog
from sarsteer_guard.console.auth import Principal, Role, Session, SessionCodec, SignInLimiter
from sarsteer_guard.console.index import ChainMonitor, LabelIndex, RecordIndex
from sarsteer_guard.console.settings import ConsoleSettings
from sarsteer_guard.errors import GuardError, one_line
from sarsteer_guard.log import get_logger

log = get_logger("sarsteer_guard.console")

COOKIE = "sarsteer_console"
#: Largest form body read (labels and filters are small).
MAX_FORM_BYTES = 64 * 1024
_P = ParamSpec("_P")
_T = TypeVar("_T")


class Console:
    """Everything the pages share; one per app."""

    def __init__(self, settings: ConsoleSettings, audit: AuditLog, review: ReviewLog) -> None:
        self.settings = settings
        self.log = audit
        self.review = review
        self.records = RecordIndex(audit)
        self.labels = LabelIndex(review)
        self.chain = ChainMonitor(audit, review, settings.verify_every_s)
        self.sessions = SessionCodec(
            settings.secret or secrets.token_bytes(32), settings.session_hours * 3600
        )
        self.limiter = SignInLimiter(settings.signin_per_minute)
        self.templates = Environment(
            loader=PackageLoader("sarsteer_guard.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.globals["LABELS"] = LABELS
        self.templates.filters["pretty_json"] = pretty_json

    def principal(self, session: Session | None) -> Principal | None:
        """Who a session belongs to; everyone is ``local`` (admin) in open local mode."""
        tokens = self.settings.tokens
        if not tokens.configured:
            return Principal("local", "admin")
        if session is None or session.name is None or session.role not in ("reviewer", "admin"):
            return None
        if not tokens.still_valid(session.name, session.role, session.token_fp or ""):
            return None
        return Principal(session.name, "admin" if session.role == "admin" else "reviewer")

    def refresh(self) -> None:
        """Catch the record and label indexes up with the store (blocking)."""
        self.records.refresh()
        self.labels.refresh()

    def close(self) -> None:
        """Close the store and the streams."""
        self.review.close()
        self.log.close()


@dataclass
class Ctx:
    """One request's console, user, session and form."""

    console: Console
    request: Request
    user: Principal
    session: Session
    form: dict[str, str] = field(default_factory=dict)
    new_cookie: bool = False

    async def run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run blocking ``fn`` in a worker thread."""
        return await run_in_threadpool(fn, *args, **kwargs)

    async def record_access(
        self, action: str, target: str | None = None, **detail: DetailValue
    ) -> None:
        """Write one access event (raises, so the page fails, when it cannot)."""
        await self.run(
            self.console.review.record_access,
            actor=self.user.name,
            role=self.user.role,
            action=action,
            target=target,
            detail=detail,
        )

    def render(self, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        """Render a page with the shared values (user, CSRF token, chain status)."""
        page = self.console.templates.get_template(template).render(
            user=self.user,
            csrf=self.session.csrf,
            path=self.request.url.path,
            open_mode=not self.console.settings.tokens.configured,
            **values,
        )
        response = HTMLResponse(page, status_code=status)
        if self.new_cookie:
            set_session_cookie(self.console, response, self.session)
        return response


def set_session_cookie(console: Console, response: Response, session: Session) -> None:
    """Send the session cookie: HttpOnly, SameSite=Strict, Secure off loopback."""
    response.set_cookie(
        COOKIE,
        console.sessions.encode(session),
        max_age=int(console.settings.session_hours * 3600),
        path="/",
        httponly=True,
        samesite="strict",
        secure=console.settings.secure_cookies,
    )


def console_of(request: Request) -> Console:
    """The app's console."""
    console: Console = request.app.state.console
    return console


def client_of(request: Request) -> str:
    """The client's address (for sign-in limits and the access log)."""
    return request.client.host if request.client else "unknown"


async def read_form(request: Request) -> dict[str, str] | Response:
    """An ``application/x-www-form-urlencoded`` body (first value per name), bounded."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return error_page(request, 415, "forms must be sent as application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return error_page(request, 413, "this form is too large")
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=200)
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


def same_origin(request: Request) -> bool:
    """A POST's Origin, when sent, names this console (defence in depth beside CSRF)."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].lower() == host.lower()


def csrf_ok(session: Session, form: Mapping[str, str]) -> bool:
    """Whether the form carries this session's CSRF token (constant-time compare)."""
    sent = form.get("csrf", "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    """A plain page for errors (escaped; no user data beyond the one-line message)."""
    console = console_of(request)
    page = console.templates.get_template("error.html").render(
        status=status, message=message, user=None, csrf="", path=request.url.path, open_mode=False
    )
    return HTMLResponse(page, status_code=status)


def local_next(value: str | None) -> str:
    """A redirect target after sign-in: a local path only (never another site)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def pretty_json(value: object) -> str:
    """Indented JSON as text, escaped by the template (``tojson`` would mangle ``<``)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


Page = Callable[[Request, Ctx], Awaitable[Response]]


def page(role: Role = "reviewer") -> Callable[[Page], Callable[[Request], Awaitable[Response]]]:
    """Wrap a page: sign-in, role, CSRF-checked form, data refresh, error pages."""

    def wrap(fn: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            console = console_of(request)
            session = console.sessions.decode(request.cookies.get(COOKIE))
            user = console.principal(session)
            if user is None:
                if request.method == "GET":
                    target = quote(local_next(request.url.path), safe="/")
                    return RedirectResponse(f"/signin?next={target}", status_code=303)
                return error_page(request, 403, "sign in first")
            request.state.actor = user.name
            if role == "admin" and not user.is_admin:
                return error_page(request, 403, "this page is for admins")
            ctx = Ctx(console, request, user, session or console.sessions.issue())
            ctx.new_cookie = session is None
            if request.method == "POST":
                form = await read_form(request)
                if isinstance(form, Response):
                    return form
                if session is None or not csrf_ok(session, form) or not same_origin(request):
                    return error_page(
                        request, 403, "this form expired or did not come from this console; "
                        "reload the page and try again"
                    )  # fmt: skip
                ctx.form = form
            try:
                await ctx.run(console.refresh)
                return await fn(request, ctx)
            except GuardError as error:
                log.warning("console.store_error", path=request.url.path, error=one_line(error))
                return error_page(request, 503, one_line(error))

        endpoint.__name__ = fn.__name__
        endpoint.__doc__ = fn.__doc__
        return endpoint

    return wrap
