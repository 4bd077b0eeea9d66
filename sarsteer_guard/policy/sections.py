"""The parts of a policy file (pydantic v2, frozen, unknown keys refused).

Field descriptions double as the editor help shown from ``policy schema``, so they are
written for the people who edit the YAML.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from sarsteer_guard.defaults import (
    DEFAULT_PROMPT,
    DEFAULT_REFUSAL_INSTRUCTION,
    DEFAULT_REFUSAL_SEPARATOR,
)
from sarsteer_guard.policy.conditions import Condition, LocatedValueError
from sarsteer_guard.policy.layers import BetaMap, LayerSelection
from sarsteer_guard.policy.presets import PresetName

Mode = Literal["enforce", "shadow"]
SteerPositions = Literal["last_and_generated", "prompt_only"]
FailureMode = Literal["fail_closed", "fail_open"]
Record = Literal["refused", "all", "none"]


def _context_value(value: Any) -> str | int | float | bool:
    if isinstance(value, str | int | float) and value is not None:
        return value
    raise ValueError(
        f"a context value must be text, a number or true/false, not "
        f"{'an empty value' if value is None else 'a list or mapping'}"
    )


ContextValue = Annotated[
    str | int | float | bool,
    PlainValidator(_context_value),
    WithJsonSchema({"type": ["string", "number", "integer", "boolean"]}),
]

#: Six months: the EU AI Act (Art. 26(6)) minimum for deployers' logs.
MIN_RECOMMENDED_RETENTION_DAYS = 183
#: Kept audio is personal data needed only for review: a month by default.
DEFAULT_AUDIO_RETENTION_DAYS = 30

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"'{value}' is not a usable name; use up to 64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit (names appear in audit logs and metrics)"
        )
    return value


def _version_text(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        raise ValueError(f'write the version in quotes, like version: "{value}", so it stays exact')
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("this text is empty; write something or remove the key")
    return value


def _separator(value: str) -> str:
    if any(ch != "\n" and not ch.isprintable() for ch in value):
        raise ValueError("the separator has a control character; use text, spaces or a newline")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
Separator = Annotated[str, Field(max_length=16), AfterValidator(_separator)]
Text = Annotated[str, AfterValidator(_not_blank)]
Version = Annotated[str, BeforeValidator(_version_text), AfterValidator(_not_blank)]
Alpha = Annotated[
    float,
    Field(
        ge=0,
        le=10,
        description="Steering strength: 0 turns steering off, 0.1 is the paper's setting.",
    ),
]
Lambda = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        description="How much of the benign directions is projected out of the vectors (0-1).",
    ),
]
K = Annotated[
    int,
    Field(ge=0, le=4096, description="Number of benign principal directions projected out."),
]


class Section(BaseModel):
    """Base of every policy part: immutable, unknown keys refused, no inf/nan."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Calibration(Section):
    """Where the steering vectors come from: calibration data, or a stored vector set."""

    vector_set: Text | None = Field(
        None, description="Id of a stored vector set; use instead of harmful/benign."
    )
    harmful: Text | None = Field(
        None,
        description="Manifest of harmful calibration turns (path relative to this file); "
        "omit harmful and benign to use the shipped calibration set.",
    )
    benign: Text | None = Field(
        None, description="Manifest of benign calibration turns (path relative to this file)."
    )
    refusal_instruction: Text | None = Field(
        None, description=f"Appended to harmful prompts; default {DEFAULT_REFUSAL_INSTRUCTION!r}."
    )
    prompt: Text | None = Field(
        None, description=f"Text prompt sent with calibration audio; default {DEFAULT_PROMPT!r}."
    )
    refusal_separator: Separator | None = Field(
        None,
        description="Joins the prompt and the refusal instruction during calibration; default "
        f"{DEFAULT_REFUSAL_SEPARATOR!r} (nothing, as the SARSteer reference does). "
        "Changing it changes the vectors.",
    )
    k: K | None = None
    lam: Lambda | None = Field(None, alias="lambda")

    @model_validator(mode="after")
    def _one_source(self) -> Calibration:
        spec_keys = [
            key
            for key in ("harmful", "benign", "refusal_instruction", "refusal_separator", "prompt")
            if getattr(self, key) is not None
        ]
        if self.vector_set is not None:
            if spec_keys:
                raise LocatedValueError(
                    f"calibration names a stored vector_set and also {spec_keys[0]}; "
                    "use either vector_set or harmful/benign manifests, not both",
                    (spec_keys[0],),
                    at_key=True,
                )
            return self
        if (self.harmful is None) != (self.benign is None):
            missing = "benign" if self.benign is None else "harmful"
            raise LocatedValueError(
                f"calibration names one manifest but not {missing}; give both harmful and "
                "benign, or neither to use the calibration set shipped with sarsteer-guard"
            )
        return self

    @property
    def builtin(self) -> bool:
        """Whether the calibration set shipped with sarsteer-guard is used."""
        return self.vector_set is None and self.harmful is None

    @property
    def effective_refusal_instruction(self) -> str | None:
        """The refusal instruction used (None for a stored vector set)."""
        if self.vector_set is not None:
            return None
        return self.refusal_instruction or DEFAULT_REFUSAL_INSTRUCTION

    @property
    def effective_refusal_separator(self) -> str | None:
        """The separator used before the refusal instruction (None for a stored vector set)."""
        if self.vector_set is not None:
            return None
        if self.refusal_separator is None:
            return DEFAULT_REFUSAL_SEPARATOR
        return self.refusal_separator

    @property
    def effective_prompt(self) -> str | None:
        """The calibration text prompt used (None for a stored vector set)."""
        if self.vector_set is not None:
            return None
        return self.prompt or DEFAULT_PROMPT


class Steering(Section):
    """Steering settings; a ``preset`` sets alpha and explicit numbers override it."""

    preset: PresetName | None = Field(
        None, description="strict (alpha 0.2), balanced (0.1), permissive (0.05)."
    )
    alpha: Alpha | None = None
    lam: Lambda | None = Field(None, alias="lambda")
    k: K | None = None
    layers: LayerSelection | None = None
    beta: BetaMap | None = None


class Refusal(Section):
    """What happens around refusals."""

    detector_keywords: tuple[Text, ...] = Field(
        (), description="Extra refusal keywords, added to the built-in list."
    )
    message: Text | None = Field(
        None, description="Fixed message spoken instead of the model's text when a turn is refused."
    )


class RuleRefusal(Section):
    """A rule's own refusal message."""

    message: Text | None = Field(None, description="Spoken instead of the model's refusal.")


class Audit(Section):
    """What the audit log keeps."""

    record: Record = Field("refused", description="Which turns are written: refused, all or none.")
    keep_audio: bool = Field(False, description="Store the user's audio with the record.")
    retention_days: int = Field(
        MIN_RECOMMENDED_RETENTION_DAYS,
        ge=1,
        le=36500,
        description="Days records are kept; the EU AI Act asks deployers for at least 183.",
    )
    audio_retention_days: int = Field(
        DEFAULT_AUDIO_RETENTION_DAYS,
        ge=1,
        le=36500,
        description="Days kept audio stays (stored beside the record, deleted sooner; never "
        "longer than retention_days). The record keeps the audio's hash either way.",
    )
    hash_fields: tuple[Text, ...] = Field(
        (), description="Context keys stored only as a salted hash (e.g. user_id)."
    )
    drop_fields: tuple[Text, ...] = Field(
        (), description="Context keys never stored (e.g. phone_number)."
    )

    @model_validator(mode="after")
    def _disjoint(self) -> Audit:
        both = sorted(set(self.hash_fields) & set(self.drop_fields))
        if both:
            raise LocatedValueError(
                f"'{both[0]}' is in both hash_fields and drop_fields; keep it in one of them",
                ("drop_fields", self.drop_fields.index(both[0])),
            )
        return self


class AuditOverride(Section):
    """A rule's changes to the policy's audit settings (unset keys keep the policy's)."""

    record: Record | None = None
    keep_audio: bool | None = None
    retention_days: int | None = Field(None, ge=1, le=36500)
    audio_retention_days: int | None = Field(None, ge=1, le=36500)
    hash_fields: tuple[Text, ...] | None = None
    drop_fields: tuple[Text, ...] | None = None


class Rule(Steering):
    """One rule: a condition on the turn's context and what changes when it holds."""

    name: Name = Field(description="Unique name; shown in audit records and explanations.")
    description: str | None = Field(None, description="A note for editors; not used.")
    when: Condition
    steer_positions: SteerPositions | None = None
    mode: Mode | None = None
    refusal: RuleRefusal | None = None
    audit: AuditOverride | None = None
    system_prompt: Text | None = None


class Expectation(Section):
    """What an in-file test expects; only the keys written are checked."""

    rule: str | None = Field(None, description="The rule that should match, or null for defaults.")
    alpha: float | None = None
    lam: float | None = Field(None, alias="lambda")
    k: int | None = None
    layers: LayerSelection | None = None
    mode: Mode | None = None
    steer_positions: SteerPositions | None = None
    steered: bool | None = Field(None, description="Whether steering is on (alpha above 0).")
    refusal_message: str | None = None
    record: Record | None = None
    keep_audio: bool | None = None
    retention_days: int | None = None
    failure_mode: FailureMode | None = None
    system_prompt: str | None = None
    preset: PresetName | None = None


class PolicyTest(Section):
    """An in-file test: a context and the decision it should get."""

    name: str | None = None
    context: dict[str, ContextValue] = Field(default_factory=dict)
    expect: Expectation
