r"""Making any value storable, so a record whose id was handed out can always be written.

Python strings may hold UTF-16 surrogates (``json.loads('"\ud800"')``, a client that
split an emoji) that UTF-8 cannot encode, and a context may hold NaN, integers too long
to print or arbitrary objects: each would make the audit write fail after the turn's
record id was already handed out. The rules (applied when a draft is built):

- every string: surrogate pairs are joined, lone surrogates become U+FFFD;
- inside ``context``: non-finite numbers become ``"NaN"``/``"Infinity"``/``"-Infinity"``,
  integers over :data:`MAX_INT_BITS` bits hex strings, keys and other objects their
  ``str()``, nesting deeper than :data:`MAX_CONTEXT_DEPTH` a marker string.

A draft where anything changed carries the flag :data:`NORMALISED_FLAG`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sarsteer_guard.text_rules import repair_surrogates

#: Flag added to a draft whose values had to be changed to be storable.
NORMALISED_FLAG = "normalised"
#: Context nesting kept; deeper values are replaced by a marker string.
MAX_CONTEXT_DEPTH = 32
#: Integers longer than this (in bits) are stored as hex strings (Python cannot print
#: integers of more than 4300 digits, about 14,000 bits, as decimal).
MAX_INT_BITS = 4096


JsonValue = Any
"""A JSON-compatible value (dict/list/str/int/float/bool/None)."""


def safe_text(value: str) -> str:
    r"""``value`` as valid Unicode: surrogate pairs joined, lone surrogates -> U+FFFD.

    Python strings may hold UTF-16 surrogates (from ``json.loads('"\\ud800"')``, or a
    client that split an emoji); they cannot be encoded as UTF-8, so an audit write of
    such text would fail after the turn's record id was handed out. The rule lives in
    :func:`sarsteer_guard.text_rules.repair_surrogates`.
    """
    return repair_surrogates(value)


class Normaliser:
    """Walks a value, fixing what JSON/UTF-8 cannot hold; remembers whether it changed."""

    def __init__(self, *, containers_only: bool = False) -> None:
        self.changed = False
        self.containers_only = containers_only
        """Only copy into dicts/lists with str keys; leave text and numbers as they are."""

    def text(self, value: str) -> str:
        """``value`` with surrogates repaired (unchanged in containers-only mode)."""
        if self.containers_only:
            return value
        fixed = safe_text(value)
        if fixed is not value:
            self.changed = True
        return fixed

    def json(self, value: object, depth: int = 0) -> JsonValue:
        """A JSON-safe copy of ``value`` (see the module docstring for the rules)."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int):
            if value.bit_length() <= MAX_INT_BITS or self.containers_only:
                return int(value)
            self.changed = True
            return hex(value)
        if isinstance(value, float):
            if math.isfinite(value) or self.containers_only:
                return value
            self.changed = True
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if depth >= MAX_CONTEXT_DEPTH and isinstance(value, Mapping | list | tuple):
            self.changed = True
            return f"(nested deeper than {MAX_CONTEXT_DEPTH} levels, not stored)"
        if isinstance(value, Mapping):
            return {self._key(k): self.json(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v, depth + 1) for v in value]
        self.changed = True
        return self.text(str(value))

    def _key(self, key: object) -> str:
        if isinstance(key, str):
            return self.text(key)
        self.changed = True
        return self.text(str(key))

    def fields(self, data: dict[str, Any]) -> dict[str, Any]:
        """Fix every string of a model's input dict; ``context`` gets the full JSON rules."""
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key == "context" and isinstance(value, Mapping):
                out[key] = self.json(value)
            elif isinstance(value, str):
                out[key] = self.text(value)
            elif isinstance(value, Mapping):
                out[key] = self.fields(dict(value))
            elif isinstance(value, list | tuple):
                out[key] = [self.text(v) if isinstance(v, str) else v for v in value]
            else:
                out[key] = value
        return out


def json_safe(value: object) -> JsonValue:
    """A copy of ``value`` that canonical JSON and UTF-8 can always hold."""
    return Normaliser().json(value)
