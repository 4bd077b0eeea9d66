"""The review console: refused turns in a web page, for compliance staff.

``sarsteer-guard audit serve`` runs it over any audit store (SQLite, Redis Streams).
Reviewers sign in with a named token, filter and search refused turns, open one in full
(the decision, its text, its audio, its place in the hash chain), label it (correct
refusal, over-refusal, missed harm, unsure, with a note) and export the filtered set
(JSONL, CSV, DSA statements of reasons). Admins also prune records and audio past
retention and read the access log. Labels and every view are append-only,
hash-chained streams beside the log (:mod:`sarsteer_guard.audit.review`).

Server-rendered (Starlette, Jinja2 with autoescaping), no JavaScript; see
:mod:`sarsteer_guard.console.app` for the security headers and
:mod:`sarsteer_guard.console.auth` for tokens, sessions and CSRF. Modules:

- ``settings``, ``auth``: configuration, tokens, sessions, sign-in limits
- ``index``: records, labels and the chain check held in memory
- ``query``: list filters; ``charts``: SVG charts
- ``web``: what pages share; ``pages``, ``reports``, ``admin``, ``signin``: the pages
- ``app``: routes, middleware, ``serve``; ``testing``: a console in a thread for tests
"""

from __future__ import annotations

from sarsteer_guard.console.auth import ConsoleConfigError, TokenBook, load_console_tokens
from sarsteer_guard.console.settings import ConsoleSettings

__all__ = ["ConsoleConfigError", "ConsoleSettings", "TokenBook", "load_console_tokens"]
