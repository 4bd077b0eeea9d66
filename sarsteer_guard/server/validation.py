r"""Bounds and checks for what a peer sends, applied before anything else touches it.

Two jobs, both at the server's edge so the guard, the policy and the audit log only ever
see well-formed values:

* :func:`load_json`: one text frame parsed with bounded nesting, bounded integers and
  no exception but :class:`ValueError` (a 5000-digit integer or 100,000 nested brackets
  must not escape the parser and drop the socket without a close frame);
* :func:`clean_text` (from :mod:`sarsteer_guard.text_rules`, the one set of text rules
  the Guard's edge and the audit log share): a peer's string rejected if it cannot be
  encoded (a lone UTF-16 surrogate, which JSON's ``\ud800`` escape can carry) or holds
  control characters where they make no sense, and otherwise normalised to Unicode NFC,
  so that the same words always compare, hash and encode the same way downstream.

No web framework and no protocol types here: callers turn ``ValueError`` into their own
error messages.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sarsteer_guard.text_rules import clean_text, is_finite_number

#: Deepest JSON nesting accepted; every protocol message is at most 2 deep.
MAX_JSON_DEPTH = 16
#: Longest integer literal accepted, in digits (an int64 has 19).
MAX_INT_DIGITS = 32

_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET_RE = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """The deepest bracket nesting of ``text`` outside string literals (a linear scan)."""
    depth = deepest = 0
    for bracket in _BRACKET_RE.findall(_STRING_RE.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(literal)


def load_json(text: str) -> Any:
    """``json.loads`` that raises only :class:`ValueError`, with the bounds above.

    Cheap on the hot path: the nesting scan runs only when the frame holds more brackets
    than :data:`MAX_JSON_DEPTH` at all (a base64 audio frame holds one pair). ``NaN`` and
    ``Infinity`` parse as floats; :func:`is_finite_number` tells the caller to refuse them.
    """
    brackets = text.count("[") + text.count("{")
    if brackets > MAX_JSON_DEPTH and json_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:  # pragma: no cover - the depth scan above refuses these first
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None


__all__ = [
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "clean_text",
    "is_finite_number",
    "json_depth",
    "load_json",
]
