"""Connecting an adapter to a guard: build it, own its lifecycle, run one turn.

The WebSocket server, the Pipecat service and the LiveKit realtime model all need the
same three things, so they live here once:

- :func:`build_guard`: an in-process ``Guard`` or, with ``remote_url``, a ``RemoteGuard``.
  Imports are lazy and plain: the in-process Guard pulls in torch, a RemoteGuard does not,
  so a CPU-only voice worker that talks to a GPU host never loads a model stack.
- :class:`GuardHandle`: who owns the guard. A guard the caller passed in is borrowed
  (started, never closed: it may serve many calls); a guard the handle built is owned
  (closed by :meth:`GuardHandle.close`). Either starts once however many callers ask at
  the same time, and a failed start is retried by the next caller.
- :func:`turn_events`: one turn's event stream, always closed when the block is left.
  Closing the iterator is how every :class:`SpeechGuard` learns of a barge-in, so leaving
  the block early (break, exception, cancellation) cancels the turn in the guard.

This module sits above ``guard/`` and ``remote.py`` and below the adapters; it never
imports the package root.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sarsteer_guard.errors import MODEL_REQUIRED, GuardError, GuardOptionsError, one_line
from sarsteer_guard.guard.events import GuardEvent, SpeechGuard, Turn
from sarsteer_guard.log import get_logger

if TYPE_CHECKING:
    from sarsteer_guard.policy import Policy

log = get_logger(__name__)

#: What builds a guard on first use (no I/O: construction only).
GuardBuilder = Callable[[], SpeechGuard]


def build_guard(
    *,
    model: str | None = None,
    policy: str | Path | Policy | None = None,
    store: str | None = None,
    audit: str | None = None,
    remote_url: str | None = None,
    engine: str = "transformers",
) -> SpeechGuard:
    """An in-process ``Guard`` on ``engine`` or, with ``remote_url``, a ``RemoteGuard``.

    Raises:
        GuardOptionsError: neither ``model`` nor ``remote_url`` (there is no default model:
            a forgotten ``model=`` must not silently guard with a random test model).
    """
    if remote_url is not None:
        from sarsteer_guard.remote import RemoteGuard

        return RemoteGuard(remote_url)
    if not model:
        raise GuardOptionsError(MODEL_REQUIRED)
    from sarsteer_guard.guard.core import Guard

    return Guard(model=model, policy=policy, store=store, audit=audit, engine=engine)


class GuardHandle:
    """One adapter's guard: borrowed (given) or owned (built on first use).

    Invariants: a given guard is never closed here; a built guard is built at most once
    and closed by :meth:`close`; at most one start runs at a time and a successful one
    is never repeated; after :meth:`close` the handle refuses to start again.
    """

    def __init__(self, guard: SpeechGuard | None = None, *, build: GuardBuilder | None = None):
        if guard is None and build is None:
            raise GuardOptionsError("GuardHandle needs a guard or a way to build one (build=)")
        self._guard = guard
        self._build = build
        self._owned = guard is None
        self._start_task: asyncio.Task[SpeechGuard] | None = None
        self._closed = False

    @classmethod
    def from_options(
        cls,
        guard: SpeechGuard | None = None,
        *,
        model: str | None = None,
        policy: str | Path | Policy | None = None,
        store: str | None = None,
        audit: str | None = None,
        remote_url: str | None = None,
        engine: str = "transformers",
    ) -> GuardHandle:
        """The handle an adapter builds from its ``guard=`` / ``model=`` / ``remote_url=``.

        Raises:
            GuardOptionsError: ``guard=`` with ``remote_url=``, or none of ``guard=``,
                ``remote_url=`` and ``model=`` (checked now, not at the first turn).
        """
        if guard is not None and remote_url is not None:
            raise GuardOptionsError("pass either guard= or remote_url=, not both")
        if guard is not None:
            return cls(guard)
        if remote_url is None and not model:
            raise GuardOptionsError(MODEL_REQUIRED)

        def build() -> SpeechGuard:
            return build_guard(
                model=model,
                policy=policy,
                store=store,
                audit=audit,
                remote_url=remote_url,
                engine=engine,
            )

        return cls(build=build)

    @property
    def owned(self) -> bool:
        """True when the handle builds (and therefore closes) the guard."""
        return self._owned

    @property
    def current(self) -> SpeechGuard | None:
        """The guard if it was given or already built; never builds."""
        return self._guard

    @property
    def guard(self) -> SpeechGuard:
        """The guard, built now (construction only, no I/O) if it was not given."""
        if self._guard is None:
            if self._closed or self._build is None:
                raise GuardError("this guard handle is closed; create a new one")
            self._guard = self._build()
        return self._guard

    @property
    def started(self) -> bool:
        """True once a start has succeeded (and the handle is not closed)."""
        task = self._start_task
        return task is not None and task.done() and not _failed(task)

    @property
    def start_error(self) -> BaseException | None:
        """Why the last start failed, while no newer start has been tried."""
        task = self._start_task
        if task is None or not task.done() or task.cancelled():
            return None
        return task.exception()

    async def start(self) -> SpeechGuard:
        """Start the guard (once) and return it; concurrent callers share one start.

        A failed or cancelled start is retried by the next call. The start is shielded:
        a caller cancelled while waiting (a barge-in during a model load) does not
        abort the load for everyone else.
        """
        if self._closed:
            raise GuardError("this guard handle is closed; create a new one")
        task = self._start_task
        if task is not None and task.done() and not _failed(task):
            return task.result()  # the common case, every turn: no shield, no new future
        if task is None or _failed(task):
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._start(), name="sarsteer-guard-start")
            task.add_done_callback(_retrieve)
            self._start_task = task
        return await asyncio.shield(task)

    async def _start(self) -> SpeechGuard:
        guard = self.guard
        await guard.start()
        return guard

    async def close(self) -> None:
        """Stop a start in flight and close the guard if the handle built it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        task, self._start_task = self._start_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})  # not `await task`: its error is not ours to raise
        guard = self._guard
        if self._owned and guard is not None:
            self._guard = None
            await guard.close()


def _failed(task: asyncio.Task[SpeechGuard]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _retrieve(task: asyncio.Task[SpeechGuard]) -> None:
    """Mark a start's error as seen: every caller may have been cancelled meanwhile."""
    if not task.cancelled():
        task.exception()


@contextlib.asynccontextmanager
async def turn_events(guard: SpeechGuard, turn: Turn) -> AsyncIterator[AsyncIterator[GuardEvent]]:
    """``guard.respond(turn)``, closed when the block is left however it is left.

    Leaving the block before the final event is the barge-in: the guard cancels the
    turn at its next step. A failure while closing is logged, never raised: the turn is
    over either way and the caller's own exception (if any) must win.
    """
    events = guard.respond(turn)
    try:
        yield events
    finally:
        await close_events(events)


async def close_events(events: AsyncIterator[GuardEvent]) -> None:
    """Close an event iterator if it can be closed (async generators and RemoteGuard's can)."""
    aclose = getattr(events, "aclose", None)  # AsyncIterator itself has no aclose
    if aclose is None:
        return
    try:
        await aclose()
    except Exception as error:
        log.debug("guard.events_close_failed", error=one_line(error))
