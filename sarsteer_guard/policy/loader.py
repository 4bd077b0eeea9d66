"""Reading policy files: all or nothing, with errors as ``file:line:column: sentence``.

The people who fix these errors edit YAML and do not read Python, so pydantic's
messages are rewritten as plain sentences and placed on the line that is wrong, using
the location map built while composing the YAML.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from sarsteer_guard.defaults import DEFAULT_ALPHA
from sarsteer_guard.errors import PolicyError
from sarsteer_guard.policy._yaml import MAX_BYTES, Document, Location, YamlProblem, read_yaml
from sarsteer_guard.policy.conditions import LocatedValueError
from sarsteer_guard.policy.model import Policy
from sarsteer_guard.policy.presets import PRESETS
from sarsteer_guard.policy.sections import MIN_RECOMMENDED_RETENTION_DAYS, Steering

ErrorPath = tuple[str | int, ...]
_TOO_BIG = (
    f"the file is larger than {MAX_BYTES // 1024} KiB; a policy is a few KiB, so this is not "
    "a policy"
)


class PolicyLoadError(PolicyError):
    """A ``PolicyError`` carrying every problem found, each as ``file:line:column: ...``."""

    def __init__(self, problems: list[str]) -> None:
        extra = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
        super().__init__(problems[0] + (extra if len(problems) > 1 else ""))
        self.problems = problems


def _where(source: str, location: Location) -> str:
    return f"{source}:{location.line}:{location.column}"


def _fail(source: str, location: Location, message: str) -> PolicyLoadError:
    return PolicyLoadError([f"{_where(source, location)}: {message}"])


# --------------------------------------------------------------------------- messages


def _kind(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the text '{shown}'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _field_label(loc: ErrorPath) -> str:
    names = [str(p) for p in loc if isinstance(p, str) and not p.startswith("function-")]
    return names[-1] if names else "the policy"


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [(info.alias or name) for name, info in model.model_fields.items()]


def _model_at(loc: ErrorPath) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at ``loc`` (for listing allowed keys)."""
    current: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = next(
            (info for name, info in current.model_fields.items() if (info.alias or name) == part),
            None,
        )
        if field is None:
            return None
        found = _model_in(field.annotation)
        if found is None:
            return None
        current = found
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _message(error: Mapping[str, Any]) -> str:
    kind: str = error["type"]
    loc: ErrorPath = tuple(error["loc"])
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    label = _field_label(loc)
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        allowed = _known_keys(owner) if owner is not None else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        listing = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return f"unknown key '{loc[-1]}'{hint}{listing}"
    if kind == "missing":
        return f"{label} is required but missing"
    if kind in ("string_type", "str_type"):
        return f"{label} must be text, not {_kind(value)} (put it in quotes)"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"{label} must be a whole number, not {_kind(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"{label} must be a number, not {_kind(value)}"
    if kind == "finite_number":
        return f"{label} must be a finite number"
    if kind in ("bool_type", "bool_parsing"):
        return f"{label} must be true or false, not {_kind(value)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()))
        words = {
            "greater_than_equal": "at least",
            "greater_than": "above",
            "less_than_equal": "at most",
            "less_than": "below",
        }[kind]
        return f"{label} must be {words} {bound:g}, not {value}"
    if kind == "literal_error":
        return f"{label} must be one of {ctx.get('expected', '')}, not {_kind(value)}"
    if kind in ("list_type", "tuple_type", "set_type"):
        return f"{label} must be a list (lines starting with '- '), not {_kind(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        return f"{label} must be a mapping (indented 'key: value' lines), not {_kind(value)}"
    if kind == "string_too_short":
        return f"{label} must not be empty"
    if kind == "value_error":
        original = ctx.get("error")
        text = str(original) if original is not None else str(error.get("msg", ""))
        return text.removeprefix("Value error, ")
    return f"{label}: {error.get('msg', 'is invalid')}"


def _translate(error: ValidationError, doc: Document, source: str) -> PolicyLoadError:
    found: list[tuple[int, int, str]] = []
    for item in error.errors(include_url=False):
        loc: ErrorPath = tuple(item["loc"])
        at_key = item["type"] == "extra_forbidden"
        original = (item.get("ctx") or {}).get("error")
        if isinstance(original, LocatedValueError):
            loc = (*loc, *original.subpath)
            at_key = original.at_key
        where = doc.locate(loc, key=at_key)
        found.append((where.line, where.column, f"{_where(source, where)}: {_message(item)}"))
    found.sort(key=lambda f: (f[0], f[1]))
    problems = list(dict.fromkeys(message for _, _, message in found))
    return PolicyLoadError(problems)


# --------------------------------------------------------------------------- warnings


def _strong_alphas(policy: Policy) -> list[tuple[ErrorPath, str]]:
    """Explicit alphas above the strict preset: valid (up to 10) but rarely what is meant.

    The paper's setting is 0.1 and the strict preset twice that; a typo such as
    ``alpha: 4`` for ``0.4`` steers 40 times harder and degrades benign answers.
    """
    strict = PRESETS["strict"].alpha
    ceiling = max(strict, policy.max_alpha or 0.0)
    sections: list[tuple[ErrorPath, Steering]] = [(("defaults",), policy.defaults)]
    sections += [(("rules", i), rule) for i, rule in enumerate(policy.rules)]
    out: list[tuple[ErrorPath, str]] = []
    for path, section in sections:
        alpha = section.alpha
        if alpha is not None and alpha > ceiling:
            out.append(((*path, "alpha"), _strong_alpha_message(alpha, ceiling, strict)))
    return out


def _strong_alpha_message(alpha: float, ceiling: float, strict: float) -> str:
    limit = "the strict preset" if ceiling == strict else "max_alpha"
    return (
        f"alpha {alpha:g} is {alpha / DEFAULT_ALPHA:g}x the paper's {DEFAULT_ALPHA:g} and above "
        f"{limit} ({ceiling:g}); steering this hard degrades benign answers too. The usual "
        f"range is 0-{strict:g}: if {alpha:g} is meant (measure it with `sarsteer-guard eval`), "
        f"set max_alpha: {alpha:g} at the top of the policy"
    )


def _warnings(policy: Policy, doc: Document, source: str) -> tuple[str, ...]:
    out: list[str] = []

    def warn(path: ErrorPath, message: str) -> None:
        out.append(f"{_where(source, doc.locate(path))}: warning: {message}")

    audits: list[tuple[ErrorPath, int | None]] = [(("audit",), policy.audit.retention_days)]
    audits += [
        (("rules", i, "audit"), rule.audit.retention_days)
        for i, rule in enumerate(policy.rules)
        if rule.audit is not None
    ]
    for path, days in audits:
        if days is not None and days < MIN_RECOMMENDED_RETENTION_DAYS:
            warn(
                (*path, "retention_days"),
                f"retention_days is {days}; the EU AI Act asks deployers to keep logs at least "
                f"six months ({MIN_RECOMMENDED_RETENTION_DAYS} days)",
            )
    for path, message in _strong_alphas(policy):
        warn(path, message)
    seen: dict[str, str] = {}
    for i, rule in enumerate(policy.rules):
        canonical = repr(rule.when.to_data())
        if canonical in seen:
            warn(
                ("rules", i, "when"),
                f"rule '{rule.name}' can never match: rule '{seen[canonical]}' above it has "
                "the same condition and wins first",
            )
        seen.setdefault(canonical, rule.name)
    for decision in policy.decisions:
        at: ErrorPath = ("rules", decision.rule_index) if decision.rule_index is not None else ()
        if decision.audit.keep_audio and decision.audit.record == "none":
            warn((*at, "audit"), "keep_audio is true but record is none, so no audio is kept")
        if decision.shadow and decision.audit.record == "none":
            warn(
                (*at, "mode"),
                "shadow mode exists to record what the guard would have done, but record is none",
            )
    return tuple(out)


# --------------------------------------------------------------------------- entry points


def parse_policy(text: str, *, source: str = "<policy>", data: bytes | None = None) -> Policy:
    """Parse and validate a policy from YAML text; all or nothing.

    Args:
        text: The YAML.
        source: Name used in messages (the file path).
        data: The file's bytes, when read from a file, for the content hash.

    Raises:
        PolicyError: A ``PolicyLoadError`` whose message (and ``problems``) read
            ``source:line:column: plain sentence``.
    """
    try:
        doc = read_yaml(text)
    except YamlProblem as problem:
        raise _fail(source, problem.location, problem.message) from None
    if not isinstance(doc.data, dict):
        raise _fail(
            source,
            Location(1, 1),
            "a policy is a mapping of keys (name:, version:, model:, calibration:, ...), "
            f"not {_kind(doc.data)}",
        )
    try:
        policy = Policy.model_validate(doc.data)
    except ValidationError as error:
        raise _translate(error, doc, source) from None
    policy._source = source
    policy._content_hash = hashlib.sha256(
        data if data is not None else text.encode("utf-8")
    ).hexdigest()
    policy._decisions = None
    policy._warnings = _warnings(policy, doc, source)
    return policy


def read_policy_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read at most ``MAX_BYTES`` (+1 to detect more) from ``path``.

    Raises:
        PolicyError: Missing, unreadable, or larger than ``MAX_BYTES``.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise _fail(name, Location(1, 1), "no such policy file; check the path") from None
    except IsADirectoryError:
        raise _fail(
            name, Location(1, 1), "this is a folder; give the path of a .yaml file"
        ) from None
    except OSError as error:
        raise _fail(name, Location(1, 1), f"cannot read the file ({error.strerror})") from None
    if len(data) > MAX_BYTES:
        raise _fail(name, Location(1, 1), _TOO_BIG)
    return data


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Load and validate the policy at ``path``; all or nothing.

    Raises:
        PolicyError: Every problem as ``path:line:column: plain sentence``.
    """
    name = os.fspath(path)
    return policy_from_bytes(read_policy_bytes(name), source=name)


def policy_from_bytes(data: bytes, *, source: str) -> Policy:
    """Decode (UTF-8, optional BOM) and parse a policy file's bytes; all or nothing.

    Raises:
        PolicyError: Every problem as ``source:line:column: plain sentence``.
    """
    if len(data) > MAX_BYTES:
        raise _fail(source, Location(1, 1), _TOO_BIG)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        before = data[: error.start]
        line = before.count(b"\n") + 1
        column = error.start - (before.rfind(b"\n") + 1) + 1
        raise _fail(
            source,
            Location(line, column),
            "the file is not UTF-8 text; save it as UTF-8 in your editor",
        ) from None
    return parse_policy(text, source=source, data=data)
