"""Signing in with a token, and out.

The sign-in form is CSRF-protected like every other (an anonymous session carries the
token), attempts are limited per client address, and a successful sign-in issues a
fresh session (new id and CSRF token), so a session planted before sign-in is useless.
The token itself is never logged, echoed or put in a URL.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from sarsteer_guard.console.web import (
    COOKIE,
    Console,
    client_of,
    console_of,
    csrf_ok,
    error_page,
    local_next,
    read_form,
    same_origin,
    set_session_cookie,
)


def _form(
    console: Console, request: Request, *, next_path: str, error: str | None, status: int = 200
) -> HTMLResponse:
    session = console.sessions.decode(request.cookies.get(COOKIE))
    fresh = session is None or session.name is not None
    if fresh or session is None:
        session = console.sessions.issue()
    page = console.templates.get_template("signin.html").render(
        user=None,
        csrf=session.csrf,
        path=request.url.path,
        open_mode=False,
        next_path=next_path,
        error=error,
    )
    response = HTMLResponse(page, status_code=status)
    if fresh:
        set_session_cookie(console, response, session)
    return response


async def signin_page(request: Request) -> Response:
    """The sign-in form (in open local mode there is nothing to sign in to)."""
    console = console_of(request)
    next_path = local_next(request.query_params.get("next"))
    session = console.sessions.decode(request.cookies.get(COOKIE))
    if console.principal(session) is not None:  # open local mode, or already signed in
        return RedirectResponse(next_path, status_code=303)
    return _form(console, request, next_path=next_path, error=None)


async def signin_action(request: Request) -> Response:
    """Check the token; on success start a fresh session and go where the user was going."""
    console = console_of(request)
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    session = console.sessions.decode(request.cookies.get(COOKIE))
    if session is None or not csrf_ok(session, form) or not same_origin(request):
        return error_page(request, 403, "this form expired; reload the sign-in page")
    next_path = local_next(form.get("next"))
    wait = console.limiter.attempt(client_of(request))
    if wait is not None:
        response = _form(
            console,
            request,
            next_path=next_path,
            error=f"Too many attempts. Wait {wait:.0f} seconds.",
            status=429,
        )
        response.headers["Retry-After"] = str(int(wait))
        return response
    found = console.settings.tokens.match(form.get("token", "").strip())
    if found is None:
        await _log(console, "anonymous", "none", "sign_in_failed", client_of(request))
        return _form(console, request, next_path=next_path, error="That token is not valid.",
                     status=401)  # fmt: skip
    user, token_fp = found
    await _log(console, user.name, user.role, "sign_in", client_of(request))
    done = RedirectResponse(next_path, status_code=303)
    set_session_cookie(console, done, console.sessions.issue(user, token_fp))
    return done


async def signout_action(request: Request) -> Response:
    """Revoke the session and clear the cookie."""
    console = console_of(request)
    form = await read_form(request)
    if isinstance(form, Response):
        return form
    session = console.sessions.decode(request.cookies.get(COOKIE))
    if session is None or not csrf_ok(session, form) or not same_origin(request):
        return error_page(request, 403, "this form expired; reload the page")
    console.sessions.revoke(session)
    if session.name is not None:
        await _log(console, session.name, session.role or "none", "sign_out", client_of(request))
    out = RedirectResponse("/signin", status_code=303)
    out.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return out


async def _log(console: Console, actor: str, role: str, action: str, client: str) -> None:
    await run_in_threadpool(
        console.review.record_access,
        actor=actor,
        role=role,
        action=action,
        detail={"client": client},
    )
