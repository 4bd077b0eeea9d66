"""Which decoder layers are steered (``layers:``) and by how much each (``beta:``).

Policies are written without knowing the model's depth, so selections stay symbolic
(``all``, ``[0, 2, "10-20"]``) until ``resolve(num_layers)``, which is where a layer
that the model does not have becomes an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from sarsteer_guard.errors import PolicyError
from sarsteer_guard.policy.conditions import LocatedValueError

_RANGE_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")
#: Generous upper bound on layer indices (the deepest released audio LMs have < 100).
MAX_LAYER = 1023
_MAX_BETA = 10.0


def _layer_number(digits: str, where: tuple[str | int, ...]) -> int:
    """``int(digits)``, refusing runs of digits longer than any layer number.

    Python refuses to convert more than 4300 digits (a raw ``ValueError``), so the
    length is checked before converting.
    """
    if len(digits) > len(str(MAX_LAYER)):
        raise LocatedValueError(
            f"a layer number of {len(digits)} digits is beyond any model (at most {MAX_LAYER})",
            where,
        )
    return int(digits)


def _parse_range(item: Any, where: tuple[str | int, ...]) -> tuple[int, int]:
    if isinstance(item, int) and not isinstance(item, bool):
        start = end = item
    elif isinstance(item, str) and (m := _RANGE_RE.match(item)):
        start = _layer_number(m.group(1), where)
        end = _layer_number(m.group(2), where) if m.group(2) is not None else start
    else:
        shown = f"'{item}'" if isinstance(item, str) else repr(item)
        raise LocatedValueError(
            f'{shown} is not a layer; write a layer number like 12 or a range like "10-20" '
            "(layers count from 0)",
            where,
        )
    if start < 0 or end < 0:
        raise LocatedValueError("layer numbers count from 0 and cannot be negative", where)
    if end < start:
        raise LocatedValueError(
            f"the range '{item}' runs backwards; write \"{end}-{start}\"", where
        )
    if end > MAX_LAYER:
        raise LocatedValueError(f"layer {end} is beyond any model (at most {MAX_LAYER})", where)
    return start, end


def _range_text(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def _check_model_depth(start: int, end: int, num_layers: int, what: str) -> None:
    if end >= num_layers:
        raise PolicyError(
            f"the policy's {what} names layer {end}, but the model has {num_layers} layers "
            f"(0-{num_layers - 1}); change {what} in the policy or use a deeper model"
        )


class _ParsedValue:
    """Pydantic plumbing for policy values read by a ``parse`` classmethod."""

    __slots__ = ()

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Build the value from its YAML form."""
        raise NotImplementedError

    def to_data(self) -> Any:
        """The YAML form again."""
        raise NotImplementedError

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.to_data()),
        )


@dataclass(frozen=True, slots=True)
class LayerSelection(_ParsedValue):
    """Symbolic layer selection; ``ranges`` is None for ``all``."""

    ranges: tuple[tuple[int, int], ...] | None = None

    @property
    def is_all(self) -> bool:
        """Whether every layer is selected."""
        return self.ranges is None

    @classmethod
    def parse(cls, value: Any) -> LayerSelection:
        """Parse ``all``, a layer number, a range string or a list of those.

        Raises:
            LocatedValueError: With the list index of the bad item.
        """
        if isinstance(value, LayerSelection):
            return value
        if isinstance(value, str) and value.strip().lower() == "all":
            return cls(None)
        items = value if isinstance(value, list | tuple) else [value]
        if not items:
            raise LocatedValueError(
                'the layer list is empty; write all, or list layers like [10, "12-20"] '
                "(to turn steering off set alpha: 0)"
            )
        many = isinstance(value, list | tuple)
        ranges = tuple(_parse_range(item, (i,) if many else ()) for i, item in enumerate(items))
        return cls(tuple(sorted(set(ranges))))

    def resolve(self, num_layers: int) -> list[int]:
        """Sorted, de-duplicated layer indices for a model with ``num_layers`` layers.

        Raises:
            PolicyError: A selected layer does not exist in the model.
        """
        if self.ranges is None:
            return list(range(num_layers))
        chosen: set[int] = set()
        for start, end in self.ranges:
            _check_model_depth(start, end, num_layers, "layers")
            chosen.update(range(start, end + 1))
        return sorted(chosen)

    def to_data(self) -> Any:
        """YAML-shaped form: ``"all"`` or a list of numbers and range strings."""
        if self.ranges is None:
            return "all"
        return [s if s == e else _range_text(s, e) for s, e in self.ranges]

    def __str__(self) -> str:
        if self.ranges is None:
            return "all"
        return ", ".join(_range_text(s, e) for s, e in self.ranges)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        item = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}
        return {
            "title": "Layers",
            "description": 'all, a layer number, a range like "10-20", or a list of those',
            "anyOf": [{"const": "all"}, item, {"type": "array", "items": item, "minItems": 1}],
        }


@dataclass(frozen=True, slots=True)
class BetaMap(_ParsedValue):
    """Per-layer multipliers of alpha (``beta_l``); unlisted layers use 1.0."""

    entries: tuple[tuple[int, int, float], ...] = ()

    @classmethod
    def parse(cls, value: Any) -> BetaMap:
        """Parse ``{12: 0.5, "20-23": 2.0}``; keys are layers or ranges, values in [0, 10].

        Raises:
            LocatedValueError: With the key of the bad entry.
        """
        if isinstance(value, BetaMap):
            return value
        if not isinstance(value, Mapping):
            raise LocatedValueError(
                'beta is a mapping from layer (or range) to multiplier, like {12: 0.5, "20-23": 2}'
            )
        entries: list[tuple[int, int, float]] = []
        for key, raw in value.items():
            start, end = _parse_range(str(key), (key,))
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise LocatedValueError(f"the beta of layer {key} must be a number", (key,))
            if not 0.0 <= raw <= _MAX_BETA:
                raise LocatedValueError(
                    f"the beta of layer {key} must be between 0 and {_MAX_BETA:g}, got {raw}",
                    (key,),
                )
            for s, e, _ in entries:
                if start <= e and s <= end:
                    lo, hi = max(s, start), min(e, end)
                    which = f"layer {lo} gets" if lo == hi else f"layers {lo}-{hi} get"
                    raise LocatedValueError(
                        f"{which} two beta values; give each layer one",
                        (key,),
                        at_key=True,
                    )
            entries.append((start, end, float(raw)))
        return cls(tuple(sorted(entries)))

    def resolve(self, num_layers: int) -> list[float]:
        """One multiplier per model layer (index = layer), 1.0 where none is set.

        Raises:
            PolicyError: A listed layer does not exist in the model.
        """
        beta = [1.0] * num_layers
        for start, end, value in self.entries:
            _check_model_depth(start, end, num_layers, "beta")
            for layer in range(start, end + 1):
                beta[layer] = value
        return beta

    def to_data(self) -> dict[str, float]:
        """YAML-shaped form: ``{"12": 0.5, "20-23": 2.0}``."""
        return {_range_text(s, e): v for s, e, v in self.entries}

    def __str__(self) -> str:
        if not self.entries:
            return "1.0 on every layer"
        return ", ".join(f"{_range_text(s, e)}: {v:g}" for s, e, v in self.entries)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "title": "Beta",
            "description": "layer or range -> multiplier of alpha (0-10); unlisted layers use 1",
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": 0, "maximum": _MAX_BETA},
        }
