"""Helpers shared by command modules (no heavy imports).

Context values given as ``--context key=value`` are typed the way YAML types them:
``true``/``false`` (any case) become booleans, ``13`` an integer, ``0.5`` or ``1e3``
a number, anything else text; wrap a value in double quotes to keep it text
(``--context 'zip="02139"'``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from sarsteer_guard.errors import GuardError

ContextValue = str | int | float | bool


class Parser(argparse.ArgumentParser):
    """The CLI's ArgumentParser: no option abbreviations, no echoed stray values.

    ``allow_abbrev`` is forced off (argparse would read ``--token SECRET`` as
    ``--token-file SECRET`` and print the secret in its error). Subcommand parsers inherit
    the class (``add_subparsers`` uses ``type(self)``), so every parser of the CLI gets it.
    Unrecognised arguments are reported by their option names only: a stray value may be
    a secret typed in the wrong place.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(  # type: ignore[override]  # same behaviour, narrower than typeshed's overloads
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """Parse; unknown arguments are named (options) or counted (values), never shown."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {redacted(extras)}")
        return parsed


def redacted(arguments: Sequence[str]) -> str:
    """Stray command-line arguments as options only (``--tok <value>``): values may be secrets."""
    shown = [a.partition("=")[0] if a.startswith("-") else "<value>" for a in arguments]
    return " ".join(shown)


class RefusedSecretFlag(argparse.Action):
    """An option that exists only to say where a secret really comes from, then exit 2.

    The value given (a secret typed on the command line) is never printed.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        self.hint: str = kwargs.pop("hint")
        kwargs.setdefault("nargs", "?")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> NoReturn:
        """Print one line saying where the secret goes and exit with status 2."""
        parser.exit(2, f"{parser.prog}: error: {option_string} is not accepted: {self.hint}\n")


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
