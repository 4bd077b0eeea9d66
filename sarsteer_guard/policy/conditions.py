"""Rule conditions (``when:``) over a turn's context, and their plain-language reasons.

The syntax is written by trust-and-safety editors, so the common case is shortest:

- ``{channel: kids}``: equals; several keys in one mapping must all hold.
- ``{user_tier: [free, trial]}``: one of (the same as ``{user_tier: {in: [free, trial]}}``).
- ``{locale: {matches: "en-*"}}``: glob (``*``, ``?``, ``[abc]``); a list means any of them.
- ``{age: {gte: 13, lt: 18}}``: numeric ranges (``gt``, ``gte``, ``lt``, ``lte``), all must hold.
- ``{user_id: {exists: true}}``, ``{channel: {equals: kids}}``, ``{channel: {in: [...]}}``.
- ``{any: [...]}``, ``{all: [...]}``, ``{not: {...}}`` combine conditions.

Matching is exact and typed: text equals text (case-sensitive), numbers equal numbers
(``13 == 13.0``), ``true``/``false`` only equal booleans. A key that is missing from the
context (or set to null) fails every test except ``exists: false``, so ``not`` of a
test on a missing key holds.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

#: A value in a turn's context or in a condition.
Scalar = str | int | float | bool
#: A turn's context: what the application knows about the turn (channel, user_tier, ...).
Context = Mapping[str, Scalar | None]

COMBINATORS = ("all", "any", "not")
OPERATORS = ("equals", "in", "matches", "gt", "gte", "lt", "lte", "exists")
_RANGE_WORDS = {
    "gt": ("above", "not above"),
    "gte": ("at least", "below"),
    "lt": ("below", "not below"),
    "lte": ("at most", "above"),
}
#: Range tests compare ints and floats natively: Python compares them exactly, whereas
#: ``float(n)`` raises ``OverflowError`` for an integer beyond about 1e308 (context
#: values come from clients, so any integer JSON carries can arrive here).
_RANGE_TESTS: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class LocatedValueError(ValueError):
    """A validation problem inside a field, with the path from the field to the culprit.

    Pydantic reports validator errors at the field; the loader extends the location
    with ``subpath`` so the editor is pointed at the exact operator or list item.
    """

    def __init__(self, message: str, subpath: tuple[str | int, ...] = (), *, at_key: bool = False):
        super().__init__(message)
        self.subpath = subpath
        self.at_key = at_key


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: object, b: object) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return a == b
    return isinstance(a, str) and isinstance(b, str) and a == b


def show(value: object) -> str:
    """Render a context or condition value the way an editor would write it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float) and value.is_integer():
        return str(value)
    return str(value)


class Condition(ABC):
    """A test over a turn's context; immutable and cheap to evaluate."""

    @abstractmethod
    def matches(self, context: Context) -> bool:
        """Whether the condition holds for ``context`` (the hot path: no strings built)."""

    @abstractmethod
    def explain(self, context: Context) -> tuple[bool, str]:
        """Whether it holds and a plain sentence saying why, for ``policy explain``."""

    @abstractmethod
    def to_data(self) -> Any:
        """The canonical YAML-shaped form (JSON output, hashing, duplicate detection)."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            parse_condition,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda c: c.to_data()),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return WHEN_JSON_SCHEMA


@dataclass(frozen=True, slots=True)
class Compare(Condition):
    """One test of one context key."""

    key: str
    op: str
    value: Any  # Scalar, tuple of scalars (in), tuple of globs (matches), bool (exists)

    def matches(self, context: Context) -> bool:  # noqa: D102 -- documented on Condition
        actual = context.get(self.key)
        op = self.op
        if op == "exists":
            return (actual is not None) is self.value
        if actual is None:
            return False
        if op == "equals":
            return _same(actual, self.value)
        if op == "in":
            return any(_same(actual, v) for v in self.value)
        if op == "matches":
            return isinstance(actual, str) and any(
                fnmatch.fnmatchcase(actual, p) for p in self.value
            )
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
        return _RANGE_TESTS[op](actual, self.value)

    def explain(self, context: Context) -> tuple[bool, str]:  # noqa: D102 -- documented on Condition
        ok = self.matches(context)
        actual = context.get(self.key)
        key, op = self.key, self.op
        if op == "exists":
            return ok, f"{key} is {'set' if actual is not None else 'not set'}"
        if actual is None:
            return ok, f"{key} is not set"
        if op == "equals":
            return ok, f"{key} is {show(actual)}" + ("" if ok else f", not {show(self.value)}")
        if op == "in":
            listed = "[" + ", ".join(show(v) for v in self.value) + "]"
            return ok, f"{key} is {show(actual)}, {'one' if ok else 'not one'} of {listed}"
        if op == "matches":
            globs = " or ".join(show(p) for p in self.value)
            verb = "matches" if ok else "does not match"
            return ok, f"{key} {show(actual)} {verb} {globs}"
        if not _is_number(actual):
            return ok, f"{key} is {show(actual)}, not a number"
        yes, no = _RANGE_WORDS[op]
        return ok, f"{key} is {show(actual)}, {yes if ok else no} {show(self.value)}"

    def to_data(self) -> Any:  # noqa: D102 -- documented on Condition
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        if self.op == "matches" and len(value) == 1:
            value = value[0]
        return {self.key: {self.op: value}}


def _join(reasons: list[str]) -> str:
    """Join reasons with "and", folding repeats: "age is 15, at least 13 and below 18"."""
    out: list[str] = []
    for reason in reasons:
        head, sep, tail = reason.partition(", ")
        if sep and out and out[-1].startswith(head + ", "):
            out[-1] += " and " + tail
        else:
            out.append(reason)
    return " and ".join(out)


@dataclass(frozen=True, slots=True)
class AllOf(Condition):
    """Every part holds (several keys in one mapping, or ``all: [...]``)."""

    parts: tuple[Condition, ...]

    def matches(self, context: Context) -> bool:  # noqa: D102 -- documented on Condition
        return all(part.matches(context) for part in self.parts)

    def explain(self, context: Context) -> tuple[bool, str]:  # noqa: D102 -- documented on Condition
        reasons = []
        for part in self.parts:
            ok, why = part.explain(context)
            if not ok:
                return False, why
            reasons.append(why)
        return True, _join(reasons)

    def to_data(self) -> Any:  # noqa: D102 -- documented on Condition
        return {"all": [part.to_data() for part in self.parts]}


@dataclass(frozen=True, slots=True)
class AnyOf(Condition):
    """At least one part holds (``any: [...]``)."""

    parts: tuple[Condition, ...]

    def matches(self, context: Context) -> bool:  # noqa: D102 -- documented on Condition
        return any(part.matches(context) for part in self.parts)

    def explain(self, context: Context) -> tuple[bool, str]:  # noqa: D102 -- documented on Condition
        reasons = []
        for part in self.parts:
            ok, why = part.explain(context)
            if ok:
                return True, why
            reasons.append(why)
        return False, "none of these holds: " + "; ".join(reasons)

    def to_data(self) -> Any:  # noqa: D102 -- documented on Condition
        return {"any": [part.to_data() for part in self.parts]}


@dataclass(frozen=True, slots=True)
class Not(Condition):
    """The part does not hold (``not: {...}``)."""

    part: Condition

    def matches(self, context: Context) -> bool:  # noqa: D102 -- documented on Condition
        return not self.part.matches(context)

    def explain(self, context: Context) -> tuple[bool, str]:  # noqa: D102 -- documented on Condition
        ok, why = self.part.explain(context)
        return not ok, f"not ({why})"

    def to_data(self) -> Any:  # noqa: D102 -- documented on Condition
        return {"not": self.part.to_data()}


# --------------------------------------------------------------------------- parsing


def _kind(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"true/false ({show(value)})"
    if _is_number(value):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text '{value}'"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _scalar(value: object, where: tuple[str | int, ...], what: str) -> Scalar:
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise LocatedValueError(f"{what} must be a finite number", where)
        return value
    raise LocatedValueError(
        f"{what} must be text, a number or true/false, not {_kind(value)}", where
    )


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_ops(key: str, ops: Mapping[str, Any], where: tuple[str | int, ...]) -> Condition:
    if not ops:
        raise LocatedValueError(
            f"the test for {key} is empty; write an operator such as "
            "equals, in, matches, gt, gte, lt, lte or exists",
            where,
        )
    parts: list[Condition] = []
    for op, arg in ops.items():
        at = (*where, op)
        if op not in OPERATORS:
            raise LocatedValueError(
                f"unknown operator '{op}'{_suggest(op, OPERATORS)}; use one of "
                + ", ".join(OPERATORS),
                at,
                at_key=True,
            )
        if op == "equals":
            parts.append(Compare(key, op, _scalar(arg, at, f"{key} {op}")))
        elif op == "in":
            if not isinstance(arg, list) or not arg:
                raise LocatedValueError(
                    f"'in' needs a non-empty list of values, like [free, trial], not {_kind(arg)}",
                    at,
                )
            values = tuple(
                _scalar(v, (*at, i), f"each value of {key} in") for i, v in enumerate(arg)
            )
            parts.append(Compare(key, op, values))
        elif op == "matches":
            globs = arg if isinstance(arg, list) else [arg]
            if not globs or not all(isinstance(g, str) and g for g in globs):
                raise LocatedValueError(
                    f"'matches' needs a text pattern like \"en-*\" (or a list of them), "
                    f"not {_kind(arg)}",
                    at,
                )
            parts.append(Compare(key, op, tuple(globs)))
        elif op == "exists":
            if not isinstance(arg, bool):
                raise LocatedValueError(f"'exists' needs true or false, not {_kind(arg)}", at)
            parts.append(Compare(key, op, arg))
        else:
            if not _is_number(arg) or not math.isfinite(arg):
                raise LocatedValueError(f"'{op}' needs a number, not {_kind(arg)}", at)
            parts.append(Compare(key, op, arg))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _parse(data: Any, where: tuple[str | int, ...]) -> Condition:
    if not isinstance(data, Mapping):
        raise LocatedValueError(
            f"a condition is a mapping like {{channel: kids}}, not {_kind(data)}", where
        )
    if not data:
        raise LocatedValueError(
            "an empty condition would match every turn; put those settings under defaults: "
            "instead, or write a test such as {channel: kids}",
            where,
        )
    parts: list[Condition] = []
    for key, value in data.items():
        at = (*where, key)
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise LocatedValueError(
                    f"'{key}' needs a non-empty list of conditions, not {_kind(value)}", at
                )
            children = tuple(_parse(item, (*at, i)) for i, item in enumerate(value))
            parts.append(AllOf(children) if key == "all" else AnyOf(children))
        elif key == "not":
            parts.append(Not(_parse(value, at)))
        else:
            if not _KEY_RE.match(key):
                raise LocatedValueError(
                    f"'{key}' is not a usable context key; keys are words like channel, "
                    "user_tier or locale (letters, digits, '_', '-', '.')",
                    at,
                    at_key=True,
                )
            if isinstance(value, Mapping):
                parts.append(_parse_ops(key, value, at))
            elif isinstance(value, list):
                parts.append(_parse_ops(key, {"in": value}, where))
            else:
                parts.append(Compare(key, "equals", _scalar(value, at, f"the value of {key}")))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def parse_condition(data: Any) -> Condition:
    """Parse a ``when:`` mapping into a ``Condition`` (idempotent on ``Condition``).

    Raises:
        LocatedValueError: With the path inside ``when`` of the part that is wrong.
    """
    if isinstance(data, Condition):
        return data
    return _parse(data, ())


_SCALAR_SCHEMA: dict[str, Any] = {"type": ["string", "number", "integer", "boolean"]}
_OPS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "equals": _SCALAR_SCHEMA,
        "in": {"type": "array", "items": _SCALAR_SCHEMA, "minItems": 1},
        "matches": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "gt": {"type": "number"},
        "gte": {"type": "number"},
        "lt": {"type": "number"},
        "lte": {"type": "number"},
        "exists": {"type": "boolean"},
    },
}
WHEN_JSON_SCHEMA: dict[str, Any] = {
    "title": "Condition",
    "description": (
        "Context tests: {key: value} equals, {key: [a, b]} one of, {key: {in|matches|gt|gte|"
        "lt|lte|exists|equals: ...}}, combined with all/any/not. Several keys must all hold."
    ),
    "type": "object",
    "minProperties": 1,
    "properties": {
        "all": {"type": "array", "items": {"type": "object"}, "minItems": 1},
        "any": {"type": "array", "items": {"type": "object"}, "minItems": 1},
        "not": {"type": "object"},
    },
    "additionalProperties": {
        "anyOf": [_SCALAR_SCHEMA, {"type": "array", "items": _SCALAR_SCHEMA}, _OPS_SCHEMA]
    },
}

__all__ = [
    "COMBINATORS",
    "OPERATORS",
    "AllOf",
    "AnyOf",
    "Compare",
    "Condition",
    "Context",
    "LocatedValueError",
    "Not",
    "Scalar",
    "parse_condition",
    "show",
]
