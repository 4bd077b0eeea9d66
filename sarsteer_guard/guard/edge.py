r"""The Guard's edge: ids and context values checked and made storable before a turn runs.

Any client or end-user text can carry a lone UTF-16 surrogate (``json.loads('"\\ud800"')``,
a split emoji) that UTF-8 cannot encode; a context can carry NaN. Found late, such a value
fails the audit write after the turn's record id was handed out, or runs a whole turn
before failing. So, before the policy sees the turn:

- ``session_id`` and ``turn_id`` must be valid Unicode: they are identities (history,
  audit lookups), and repairing two different ids into the same text would merge
  sessions, so a bad one is refused with a one-line error;
- context keys and string values are repaired (lone surrogates become U+FFFD) and the
  turn is flagged ``normalised`` (the flag reaches the audit record);
- context numbers must be finite and values must be str, int, float, bool or None
  (None: "not set", as policy conditions read it).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import cast

from sarsteer_guard.audit.storable import NORMALISED_FLAG, safe_text
from sarsteer_guard.errors import GuardError
from sarsteer_guard.guard.events import ContextValue, Turn, TurnContext

__all__ = ["NORMALISED_FLAG", "BadTurnError", "checked_turn"]

_SURROGATE = re.compile("[\ud800-\udfff]")


class BadTurnError(GuardError):
    """A turn whose ids or context cannot be used as sent (the caller must fix them)."""

    kind = "bad_request"


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise BadTurnError(f"{name} must be text, got {type(value).__name__}")
    if safe_text(value) != value:
        at = _SURROGATE.search(value)
        where = f" at index {at.start()}" if at is not None else ""
        raise BadTurnError(
            f"{name} is not valid Unicode (a lone surrogate{where}): send it as UTF-8 text"
        )


def _value(key: str, value: object) -> ContextValue | None:
    if value is None:  # "not set", as policy conditions read it
        return None
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadTurnError(f"context value {key!r} is {value}: send a finite number")
        return value
    raise BadTurnError(
        f"context value {key!r} is a {type(value).__name__}: use text, a number, true/false or null"
    )


def checked_turn(turn: Turn) -> tuple[Turn, bool]:
    """The turn with its context made storable, and whether anything was repaired.

    Raises:
        BadTurnError: an id that is not valid Unicode, a non-finite number or a value
            of another type in the context (one line that says what to send instead).
    """
    _check_id("session_id", turn.session_id)
    _check_id("turn_id", turn.turn_id)
    context: dict[str, ContextValue | None] = {}
    changed = False
    for key, value in turn.context.items():
        if not isinstance(key, str):
            raise BadTurnError(f"context key {key!r} must be text")
        fixed_key = safe_text(key)
        fixed = _value(fixed_key, value)
        changed = changed or fixed_key is not key or fixed is not value
        context[fixed_key] = fixed
    if not changed:
        return turn, False
    return dataclasses.replace(turn, context=cast("TurnContext", context)), True
