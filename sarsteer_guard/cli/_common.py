"""Helpers shared by command modules (no heavy imports).

Context values given as ``--context key=value`` are typed the way YAML types them:
``true``/``false`` (any case) become booleans, ``13`` an integer, ``0.5`` or ``1e3``
a number, anything else text; wrap a value in double quotes to keep it text
(``--context 'zip="02139"'``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sarsteer_guard.errors import GuardError

ContextValue = str | int | float | bool

_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][-+]?\d+)$")


def parse_context_value(raw: str) -> ContextValue:
    """Type a command-line context value (see the module docstring for the rules)."""
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1]
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    return raw


def parse_context_item(text: str) -> tuple[str, ContextValue]:
    """Split and type one ``key=value``; raises :class:`GuardError` saying how to write it."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise GuardError(
            f"'{text}' is not key=value; write e.g. --context channel=kids --context age=9"
        )
    return key.strip(), parse_context_value(value)


def parse_context(items: Iterable[str]) -> dict[str, ContextValue]:
    """Parse repeated ``--context key=value`` options into a context mapping."""
    return dict(parse_context_item(text) for text in items)
