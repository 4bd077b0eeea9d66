"""Building the guard an integration talks to, from the keywords every integration takes."""

from __future__ import annotations

import importlib
from typing import Any, cast

from sarsteer_guard.guard.events import SpeechGuard


def build_guard(
    *,
    model: str | None = "tiny",
    policy: Any = None,
    store: Any = None,
    audit: Any = None,
    remote_url: str | None = None,
) -> SpeechGuard:
    """An in-process ``Guard`` or, with ``remote_url``, a ``RemoteGuard`` (no I/O yet).

    Imports happen here, lazily: the in-process Guard pulls in torch, a RemoteGuard does
    not, so a CPU-only voice worker that talks to a GPU host never loads a model stack.
    Classes are looked up on the package root so tests can substitute them.
    """
    package = importlib.import_module("sarsteer_guard")
    if remote_url is not None:
        return cast(SpeechGuard, package.RemoteGuard(remote_url))
    guard = package.Guard(model=model or "tiny", policy=policy, store=store, audit=audit)
    return cast(SpeechGuard, guard)
