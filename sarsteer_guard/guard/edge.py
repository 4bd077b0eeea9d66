r"""The Guard's edge: ids and context values checked and made storable before a turn runs.

Any client or end-user text can carry a lone UTF-16 surrogate (``json.loads('"\\ud800"')``,
a split emoji) that UTF-8 cannot encode; a context can carry NaN. Found late, such a value
fails the audit write after the turn's record id was handed out, or runs a whole turn
before failing. So, before the policy sees the turn, with the rules of
:mod:`sarsteer_guard.text_rules` (the same the wire protocol applies):

- ``session_id`` and ``turn_id`` follow the protocol's id rules (valid Unicode, no control
  characters, never rewritten): they are identities (history, audit lookups), and
  repairing two different ids into the same text would merge sessions, so a bad one is
  refused with a one-line error;
- context keys and string values have lone surrogates repaired to U+FFFD (in-process
  callers pass Python strings a split emoji can leave broken, and a repaired value is
  still the caller's meaning), then follow the protocol's text rules (no control
  characters, NFC); a changed value flags the turn ``normalised`` (the flag reaches the
  audit record);
- context numbers must be finite and values must be str, int, float or bool. ``None``
  is refused, as over the wire (JSON ``null``): a policy reads a missing key as "not
  set", so leave the key out.

:class:`~sarsteer_guard.remote.RemoteGuard` applies :func:`checked_turn` before sending,
so a turn gets the same outcome in-process and remote.
"""

from __future__ import annotations

import dataclasses

from sarsteer_guard.audit.storable import NORMALISED_FLAG
from sarsteer_guard.errors import GuardError
from sarsteer_guard.guard.events import ContextValue, Turn
from sarsteer_guard.text_rules import check_id, clean_text, is_finite_number, repair_surrogates

__all__ = ["NORMALISED_FLAG", "BadTurnError", "checked_turn"]


class BadTurnError(GuardError):
    """A turn whose ids or context cannot be used as sent (the caller must fix them)."""

    kind = "bad_request"


def _check_id(name: str, value: object) -> None:
    try:
        check_id(value)
    except ValueError as error:
        raise BadTurnError(f"{name} {error}: send printable UTF-8 text") from None


def _text(what: str, value: str) -> str:
    try:
        return clean_text(repair_surrogates(value))
    except ValueError as error:
        raise BadTurnError(f"{what} {error}: send printable text") from None


def _value(key: str, value: object) -> ContextValue:
    if value is None:
        raise BadTurnError(
            f"context value {key!r} is null: leave the key out (a policy reads a missing "
            "key as not set)"
        )
    if isinstance(value, str):
        return _text(f"context value {key!r}", value)
    if isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not is_finite_number(value):
            raise BadTurnError(f"context value {key!r} is {value}: send a finite number")
        return value
    raise BadTurnError(
        f"context value {key!r} is a {type(value).__name__}: use text, a number or true/false"
    )


def checked_turn(turn: Turn) -> tuple[Turn, bool]:
    """The turn with its context made storable, and whether anything was repaired.

    Raises:
        BadTurnError: an id that breaks the id rules, a ``None``, a non-finite number or
            a value of another type in the context (one line that says what to send).
    """
    _check_id("session_id", turn.session_id)
    _check_id("turn_id", turn.turn_id)
    context: dict[str, ContextValue] = {}
    changed = False
    for key, value in turn.context.items():
        if not isinstance(key, str):
            raise BadTurnError(f"context key {key!r} must be text")
        fixed_key = _text("context key", key)
        fixed = _value(fixed_key, value)
        changed = changed or fixed_key != key or fixed != value
        context[fixed_key] = fixed
    if not changed:
        return turn, False
    return dataclasses.replace(turn, context=context), True
