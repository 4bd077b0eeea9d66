"""Helpers shared by command modules."""

from __future__ import annotations

from collections.abc import Iterable

from sarsteer_guard.errors import GuardError


def parse_context(items: Iterable[str]) -> dict[str, str | int | float | bool]:
    """Parse ``key=value`` pairs, typing values the way ``policy explain`` does."""
    from sarsteer_guard.cli.policy import parse_context_value

    context: dict[str, str | int | float | bool] = {}
    for text in items:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise GuardError(
                f"'{text}' is not key=value; write e.g. --context channel=kids --context age=9"
            )
        context[key.strip()] = parse_context_value(value)
    return context
