"""Helpers shared by command modules (no heavy imports).

Context values given as ``--context key=value`` are typed the way YAML types them:
``true``/``false`` (any case) become booleans, ``13`` an integer, ``0.5`` or ``1e3``
a number, anything else text; wrap a value in double quotes to keep it text
(``--context 'zip="02139"'``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from sarsteer_guard.errors import MODEL_REQUIRED, GuardError, one_line

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


# -- one name per thing across commands (issue 10, item 21) ---------------------------

#: ``--model`` help everywhere a model is loaded: names both built-ins, so a newcomer
#: finds the one that actually refuses along a known direction.
MODEL_HELP = (
    "hub id, local directory, or a built-in: tiny (random weights, for wiring checks), "
    "tiny-planted (constructed weights that refuse along a known direction) or tiny-trained "
    "(the trained model organism `demo` uses)"
)

#: ``--model`` help where guarding real traffic needs a model named (no default).
MODEL_REQUIRED_HELP = MODEL_HELP + "; required: the random tiny would guard nothing"


def require_model(model: str | None, command: str) -> str:
    """The ``--model`` value, or a one-line error naming the flag (issue 10, item 23).

    ``respond`` and ``serve`` used to default to the random ``tiny``: a bot that forgot
    the flag guarded nothing. Built-ins still work when named.
    """
    if model is None or not model.strip():
        raise GuardError(f"{command} needs --model: {MODEL_REQUIRED.replace('model=', '--model ')}")
    return model


#: ``--audit`` help in every command that writes or reads the audit log.
AUDIT_HELP = (
    "audit log: sqlite:///relative.db, sqlite:////abs/path.db, a path or "
    "redis://host:port/db?prefix=P"
)
AUDIT_DEFAULT = " (default: $SARSTEER_AUDIT_URL, else ~/.local/state/sarsteer-guard/audit.db)"

#: ``--store`` help: in every command, ``--store`` names the vector store and nothing else.
STORE_HELP = (
    "vector store: redis://, rediss://, unix:// or a directory "
    "(default: $SARSTEER_STORE_URL, else ~/.cache/sarsteer-guard/vectors)"
)

#: ``--context`` help where a turn's context feeds policy rules.
CONTEXT_HELP = "turn context for the policy's rules, e.g. channel=kids; repeat for several"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless it is unset or the help already states it.

    Unset means None, False, an empty list or string, or ``SUPPRESS``. A help text that
    already mentions a default (``"(default 16)"``, ``"%(default)s"``) is left alone, so
    no option says its default twice.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or not has_default(action) or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class RawDescriptionDefaultsHelpFormatter(
    DefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """:class:`DefaultsHelpFormatter` for parsers whose description is pre-formatted."""


def has_default(action: argparse.Action) -> bool:
    """Whether ``action`` has a default worth showing (see :class:`DefaultsHelpFormatter`)."""
    if action.help == argparse.SUPPRESS or action.default is argparse.SUPPRESS:
        return False
    default = action.default
    return not (default is None or default is False or default == "" or default == [])


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and every subcommand parser below it a defaults-showing help.

    Called once on the finished tree, so command modules need not each remember it; a
    parser with a raw description keeps it raw. argparse prints nothing for an option
    without help text, so such an option with a default gets one that shows it.
    """
    for action in parser._actions:
        if action.option_strings and not action.help and has_default(action):
            action.help = "(default: %(default)s)"
    current = parser.formatter_class
    if isinstance(current, type) and issubclass(current, DefaultsHelpFormatter):
        pass
    elif isinstance(current, type) and issubclass(current, argparse.RawDescriptionHelpFormatter):
        parser.formatter_class = RawDescriptionDefaultsHelpFormatter
    else:
        parser.formatter_class = DefaultsHelpFormatter
    for child in subcommand_parsers(parser):
        show_defaults(child)


def subcommand_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The distinct parsers of ``parser``'s subcommands (aliases counted once)."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if all(child is not seen for seen in found):
                    found.append(child)
    return found


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option: still accepted, with a one-line note on stderr.

    Register it on the new option's ``dest``; it is hidden from help::

        p.add_argument("--output", dest="out", action=DeprecatedAlias, replacement="--out")

    ``where`` narrows the note, e.g. ``" in audit commands"``.
    """

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        replacement: str,
        where: str = "",
        **kwargs: Any,
    ) -> None:
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)
        self.replacement = replacement
        self.where = where

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(
            f"sarsteer-guard: note: {option_string} is deprecated{self.where}; "
            f"use {self.replacement}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_context_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str = CONTEXT_HELP
) -> None:
    """``--context/-c KEY=VALUE`` (repeatable; parse with :func:`parse_context`)."""
    parser.add_argument(
        "--context", "-c", action="append", default=[], metavar="KEY=VALUE", help=help_text
    )


def check_writable(path: Path, flag: str, *, folder: bool = False) -> None:
    """Fail now, in one line, if output ``path`` cannot be written; for long runs' outputs.

    Run before any model work, so a typo in ``--out`` costs a second, not a calibration.
    ``folder``: ``path`` is an output folder (created here) rather than a file. Missing
    parent folders are created (the write would create them anyway) and the folder is
    probed with a temporary file, which is removed; an output file is not touched.

    Raises:
        GuardError: the folder cannot be created or written, or ``path`` is of the
            wrong kind (a folder where a file goes, or the other way round).
    """
    import tempfile

    target = path if folder else path.parent
    try:
        if not folder and path.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir() and existing != path:
            raise NotADirectoryError(20, f"{existing} is a file, not a folder")
        if folder and existing == path and not path.is_dir():
            raise NotADirectoryError(20, "it is a file, not a folder")
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".sarsteer-", suffix=".probe"):
            pass
        if not folder and path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as error:
        reason = error.strerror or one_line(error)
        raise GuardError(f"cannot write {flag} {path} ({reason}): choose a writable path") from None
