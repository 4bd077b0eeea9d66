"""The ``sarsteer-guard`` command line.

Each command group lives in its own module in this package and exposes
``register(subparsers)``; modules are discovered here, so adding a command never
touches this file. Command modules import heavy dependencies (torch, transformers)
inside their handlers, so ``policy`` and ``audit`` commands start fast and never
need torch.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from sarsteer_guard._version import __version__
from sarsteer_guard.cli._common import Parser, show_defaults
from sarsteer_guard.errors import GuardError


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with every command module's subcommands registered.

    Every parser is a :class:`~._common.Parser` (subcommands inherit the class): no
    option is ever matched by a prefix of its name.
    """
    parser = Parser(
        prog="sarsteer-guard",
        description="SARSteer refusal steering for audio-language models in voice pipelines.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    show_defaults(parser)  # every help shows its defaults (issue 10, item 21)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; a user-fixable problem prints one line on stderr and exits 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_third_party()
    try:
        return int(args.func(args) or 0)
    except GuardError as error:
        print(f"sarsteer-guard: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sarsteer-guard: interrupted", file=sys.stderr)
        return 130


def _quiet_third_party() -> None:
    """Silence library warnings next to our logs; loading bars stay (a 7B load takes a while)."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]  # untyped in transformers


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
