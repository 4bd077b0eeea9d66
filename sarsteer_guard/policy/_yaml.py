"""Hostile-input-safe YAML reading that remembers where every value came from.

Policies are edited by people and sometimes pasted from elsewhere, so the reader
refuses what plain ``yaml.safe_load`` lets through: aliases (billion laughs), deep
nesting (recursion), oversized files, object-constructing tags, duplicate keys and
non-scalar keys. It composes the node tree itself (``SafeLoader`` composition, never
construction) and records the ``Mark`` of each value and key by path, so that
validation errors can name ``file:line:column``.

Scalars follow the YAML 1.2 core schema: only ``true``/``false`` are booleans, so
``locale: no`` stays the text ``"no"`` (the "Norway problem" of YAML 1.1).
Mapping keys are always text (``10: 0.5`` has the key ``"10"``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sarsteer_guard.policy._yaml_errors import explain_syntax_error

#: Largest policy file accepted; real policies are a few KiB.
MAX_BYTES = 1 << 20
#: Deepest nesting of lists and mappings; real policies need about 8.
MAX_DEPTH = 40
#: Most YAML nodes in one file; stops a flat megabyte of ``[1,1,1,...]`` early.
MAX_NODES = 20_000
#: Longest number literal accepted. Policy numbers are alphas, layers and days; Python
#: refuses to convert integers of more than 4300 digits (a raw ``ValueError``), and
#: floats beyond about 1e308 become infinity, so every numeric scalar is bounded here.
MAX_NUMBER_CHARS = 64

Path = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL})


@dataclass(frozen=True)
class Location:
    """A 1-based line and column in the source text."""

    line: int
    column: int

    @classmethod
    def of(cls, mark: yaml.Mark | None) -> Location:
        """Convert a 0-based YAML mark (None means the start of the file)."""
        if mark is None:
            return cls(1, 1)
        return cls(mark.line + 1, mark.column + 1)


@dataclass
class Document:
    """Plain data read from YAML plus where each value (and each mapping key) starts."""

    data: Any
    values: dict[Path, Location] = field(default_factory=dict)
    keys: dict[Path, Location] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> Location:
        """Best location for ``path``: the deepest known prefix (unknown parts are skipped).

        Validation error paths may contain extra parts that are not in the document
        (a missing key, a union member's name); skipping unknown parts and keeping
        the longest known prefix points at the closest thing the editor wrote.
        """
        known: Path = ()
        for part in path:
            candidate = (*known, part)
            if candidate in self.values:
                known = candidate
        if key and known == path and known in self.keys:
            return self.keys[known]
        return self.values.get(known, Location(1, 1))


class YamlProblem(Exception):
    """A problem found while reading YAML; ``location`` says where."""

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars, no aliases, and depth and size limits."""

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 -- PyYAML's class-level registry

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """Compose one node, refusing aliases and runaway depth or size before recursing."""
        if self.check_event(AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
            raise YamlProblem(
                Location.of(event.start_mark),
                "YAML aliases (*name) are not allowed in policies; write the value out in full",
            )
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
                raise YamlProblem(
                    Location.of(event.start_mark),
                    f"lists and mappings are nested more than {MAX_DEPTH} levels deep; "
                    "a policy never needs that, so the file is refused",
                )
            if self._nodes > MAX_NODES:
                event = self.peek_event()  # type: ignore[no-untyped-call]  # PyYAML is untyped
                raise YamlProblem(
                    Location.of(event.start_mark),
                    f"the file holds more than {MAX_NODES} values; "
                    "a policy never needs that, so the file is refused",
                )
            node: Node | None = super().compose_node(parent, index)
            if node is None:  # pragma: no cover - only an alias yields None, refused above
                raise YamlProblem(Location(1, 1), "empty YAML node")
            return node
        finally:
            self._depth -= 1


# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution), minus .inf/.nan.
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)
_Loader.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])


def _scalar(node: ScalarNode) -> Any:
    """Convert one scalar; every conversion that can fail becomes a located ``YamlProblem``."""
    value: str = node.value
    if node.tag == _STR:
        return value
    if node.tag == _NULL:
        return None
    if node.tag == _BOOL:
        return value.lower() == "true"
    where = Location.of(node.start_mark)
    if len(value) > MAX_NUMBER_CHARS:
        raise YamlProblem(
            where,
            f"a number of {len(value)} characters is far beyond any policy value "
            f"(at most {MAX_NUMBER_CHARS}); write a realistic number, or quote it if it is text",
        )
    try:
        number = int(value) if node.tag == _INT else float(value)
    except (ValueError, OverflowError):
        raise YamlProblem(where, f"{_shorten(value)!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise YamlProblem(where, f"{value} is too large for a number; write a realistic value")
    return number


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _describe_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org") else tag


def _convert(node: Node, path: Path, doc: Document) -> Any:
    doc.values[path] = Location.of(node.start_mark)
    if isinstance(node, ScalarNode):
        if node.tag not in _SCALAR_TAGS:
            raise YamlProblem(
                Location.of(node.start_mark),
                f"the YAML tag {_describe_tag(node.tag)} is not allowed; policies hold only "
                "text, numbers, true/false, lists and mappings",
            )
        return _scalar(node)
    if isinstance(node, SequenceNode):
        if node.tag != _SEQ:
            raise YamlProblem(
                Location.of(node.start_mark),
                f"the YAML tag {_describe_tag(node.tag)} is not allowed on a list",
            )
        return [_convert(item, (*path, i), doc) for i, item in enumerate(node.value)]
    if isinstance(node, MappingNode):
        if node.tag != _MAP:
            raise YamlProblem(
                Location.of(node.start_mark),
                f"the YAML tag {_describe_tag(node.tag)} is not allowed on a mapping",
            )
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _SCALAR_TAGS:
                raise YamlProblem(
                    Location.of(key_node.start_mark),
                    "a key must be a plain word or quoted text, not a list, mapping or "
                    "tagged value",
                )
            key = str(key_node.value)
            if key in out:
                raise YamlProblem(
                    Location.of(key_node.start_mark),
                    f"the key {key!r} appears twice in the same mapping; keep one",
                )
            doc.keys[(*path, key)] = Location.of(key_node.start_mark)
            out[key] = _convert(value_node, (*path, key), doc)
        return out
    raise YamlProblem(Location.of(node.start_mark), "unsupported YAML node")  # pragma: no cover


def _location_at(text: str, position: int) -> Location:
    before = text[:position]
    return Location(before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1)


def read_yaml(text: str) -> Document:
    """Compose ``text`` into plain data with locations, or raise ``YamlProblem``.

    Raises:
        YamlProblem: Syntax errors, aliases, forbidden tags, duplicate or complex
            keys, too deep or too large documents.
    """
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise YamlProblem(
            Location(1, 1),
            f"the file is larger than {MAX_BYTES // 1024} KiB; a policy is a few KiB, "
            "so this is not a policy",
        )
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as error:
        raise YamlProblem(
            _location_at(text, error.position),
            f"the file contains an invisible control character (code {error.character}); "
            "delete it (it often comes from copy-pasting)",
        ) from None
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        line, column, hint = explain_syntax_error(text, error)
        raise YamlProblem(Location(line + 1, column + 1), "YAML syntax error: " + hint) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH stops composition first
        raise YamlProblem(Location(1, 1), "the YAML is nested too deeply") from None
    finally:
        loader.dispose()
    doc = Document(data=None)
    if node is None:
        raise YamlProblem(
            Location(1, 1),
            "the file is empty; a policy needs at least name:, version:, model: and calibration:",
        )
    doc.data = _convert(node, (), doc)
    return doc
