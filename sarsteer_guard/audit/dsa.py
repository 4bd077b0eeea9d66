"""EU DSA statements of reasons in the Transparency Database's submission format.

A refused spoken request is a restriction decided by automated means, so a provider
that must file statements of reasons (DSA Art. 17 and 24(5)) files one per enforced
refusal. :func:`dsa_statement` builds it in the field format of the Transparency
Database API (``POST /api/v1/statements``), :func:`statement_problems` checks it
against that API's field rules (required fields, allowed values, lengths, dates,
``puid`` characters) and :func:`export_dsa` writes checked batches of at most
:data:`MAX_BATCH` statements, one ``{"statements": [...]}`` object per line, ready to
submit. A statement that breaks a rule stops the export with the record and the rule.

The mapping (see ``../shared/README.md``): content type audio, ground "incompatible
with terms and conditions" (the provider's policy and rule), voluntary own-initiative
source, automated detection ``Yes``, decision fully automated, visibility "other"
(the response was withheld). Statements are published, so they carry no personal
data: no session, context, audio or text of the turn, only the policy, the rule, the
record id (as ``puid``) and the date.

Only enforced refusals restrict anything: shadow-mode and answered turns get no
statement, whatever their review label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TextIO

from sarsteer_guard.audit.record import AuditRecord
from sarsteer_guard.errors import AuditError

#: Statements per API call (the API accepts 1 to 100).
MAX_BATCH = 100

CATEGORIES = (
    "STATEMENT_CATEGORY_ANIMAL_WELFARE",
    "STATEMENT_CATEGORY_CONSUMER_INFORMATION",
    "STATEMENT_CATEGORY_CYBER_VIOLENCE",
    "STATEMENT_CATEGORY_CYBER_VIOLENCE_AGAINST_WOMEN",
    "STATEMENT_CATEGORY_DATA_PROTECTION_AND_PRIVACY_VIOLATIONS",
    "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH",
    "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS",
    "STATEMENT_CATEGORY_NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS",
    "STATEMENT_CATEGORY_NOT_SPECIFIED_NOTICE",
    "STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
    "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
    "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY",
    "STATEMENT_CATEGORY_SCAMS_AND_FRAUD",
    "STATEMENT_CATEGORY_SELF_HARM",
    "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS",
    "STATEMENT_CATEGORY_VIOLENCE",
)
DEFAULT_CATEGORY = "STATEMENT_CATEGORY_OTHER_VIOLATION_TC"
CONTENT_TYPES = (
    "CONTENT_TYPE_APP",
    "CONTENT_TYPE_AUDIO",
    "CONTENT_TYPE_IMAGE",
    "CONTENT_TYPE_PRODUCT",
    "CONTENT_TYPE_SYNTHETIC_MEDIA",
    "CONTENT_TYPE_TEXT",
    "CONTENT_TYPE_VIDEO",
    "CONTENT_TYPE_OTHER",
)
DECISION_VISIBILITIES = (
    "DECISION_VISIBILITY_CONTENT_REMOVED",
    "DECISION_VISIBILITY_CONTENT_DISABLED",
    "DECISION_VISIBILITY_CONTENT_DEMOTED",
    "DECISION_VISIBILITY_CONTENT_AGE_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_INTERACTION_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_LABELLED",
    "DECISION_VISIBILITY_OTHER",
)
DECISION_MONETARIES = (
    "DECISION_MONETARY_SUSPENSION",
    "DECISION_MONETARY_TERMINATION",
    "DECISION_MONETARY_OTHER",
)
DECISION_PROVISIONS = (
    "DECISION_PROVISION_PARTIAL_SUSPENSION",
    "DECISION_PROVISION_TOTAL_SUSPENSION",
    "DECISION_PROVISION_PARTIAL_TERMINATION",
    "DECISION_PROVISION_TOTAL_TERMINATION",
)
DECISION_ACCOUNTS = ("DECISION_ACCOUNT_SUSPENDED", "DECISION_ACCOUNT_TERMINATED")
DECISION_GROUNDS = ("DECISION_GROUND_ILLEGAL_CONTENT", "DECISION_GROUND_INCOMPATIBLE_CONTENT")
SOURCE_TYPES = (
    "SOURCE_ARTICLE_16",
    "SOURCE_TRUSTED_FLAGGER",
    "SOURCE_TYPE_OTHER_NOTIFICATION",
    "SOURCE_VOLUNTARY",
)
AUTOMATED_DECISIONS = (
    "AUTOMATED_DECISION_FULLY",
    "AUTOMATED_DECISION_PARTIALLY",
    "AUTOMATED_DECISION_NOT_AUTOMATED",
)
YES_NO = ("Yes", "No")
#: EU member states and the EEA countries the database accepts as territorial scope.
# fmt: off
COUNTRIES = frozenset((
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE",
    "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK", "IS", "LI", "NO",
))
# fmt: on
_PUID = re.compile(r"^[A-Za-z0-9_-]+$")
_LANGUAGE = re.compile(r"^[A-Z]{2}$")
_DATE_RANGES = {
    "content_date": (date(2000, 1, 1), date(2038, 1, 1)),
    "application_date": (date(2020, 1, 1), date(2038, 1, 1)),
    "end_date_account_restriction": (date(2000, 1, 1), date(2038, 1, 1)),
    "end_date_monetary_restriction": (date(2000, 1, 1), date(2038, 1, 1)),
    "end_date_service_restriction": (date(2000, 1, 1), date(2038, 1, 1)),
    "end_date_visibility_restriction": (date(2000, 1, 1), date(2038, 1, 1)),
}
_LIMITS = {
    "decision_visibility_other": 500,
    "decision_monetary_other": 500,
    "illegal_content_legal_ground": 500,
    "illegal_content_explanation": 2000,
    "incompatible_content_ground": 500,
    "incompatible_content_explanation": 2000,
    "content_type_other": 500,
    "category_specification_other": 500,
    "decision_facts": 5000,
    "source_identity": 500,
    "puid": 500,
}
_ONE_OF: dict[str, tuple[str, ...]] = {
    "decision_monetary": DECISION_MONETARIES,
    "decision_provision": DECISION_PROVISIONS,
    "decision_account": DECISION_ACCOUNTS,
    "account_type": ("ACCOUNT_TYPE_BUSINESS", "ACCOUNT_TYPE_PRIVATE"),
    "decision_ground": DECISION_GROUNDS,
    "incompatible_content_illegal": YES_NO,
    "category": CATEGORIES,
    "source_type": SOURCE_TYPES,
    "automated_detection": YES_NO,
    "automated_decision": AUTOMATED_DECISIONS,
}
_LISTS: dict[str, Iterable[str]] = {
    "decision_visibility": DECISION_VISIBILITIES,
    "content_type": CONTENT_TYPES,
    "category_addition": CATEGORIES,
    "territorial_scope": COUNTRIES,
}
_OTHER_KEYS = (
    "decision_ground_reference_url",
    "category_specification",
    "content_language",
)
KNOWN_FIELDS = frozenset((*_LIMITS, *_ONE_OF, *_LISTS, *_DATE_RANGES, *_OTHER_KEYS))


@dataclass(frozen=True)
class DsaSettings:
    """What the log cannot know: the category of each rule, where decisions apply.

    Raises:
        AuditError: a category or country the database does not accept.
    """

    category: str = DEFAULT_CATEGORY
    """Category of refusals whose rule has none in ``rule_categories``."""
    rule_categories: Mapping[str, str] = field(default_factory=dict)
    """Policy rule name -> category (e.g. ``weapons`` -> ``..._RISK_FOR_PUBLIC_SECURITY``)."""
    territorial_scope: tuple[str, ...] = ()
    """EU/EEA country codes where the decision applies; empty leaves the field out."""

    def __post_init__(self) -> None:
        for value in (self.category, *self.rule_categories.values()):
            if value not in CATEGORIES:
                raise AuditError(
                    f"{value!r} is not a DSA statement category; use one of {', '.join(CATEGORIES)}"
                )
        bad = sorted(set(self.territorial_scope) - COUNTRIES)
        if bad:
            raise AuditError(
                f"{bad[0]!r} is not an EU/EEA country code the Transparency Database accepts"
            )

    def category_of(self, rule: str | None) -> str:
        """The category of a refusal under ``rule``."""
        return self.rule_categories.get(rule or "", self.category)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dsa_statement(
    record: AuditRecord, settings: DsaSettings | None = None
) -> dict[str, Any] | None:
    """The statement of reasons for an enforced refusal; None for any other record."""
    if not record.refused or record.mode != "enforce":
        return None
    settings = settings or DsaSettings()
    rule = f"rule '{record.rule}'" if record.rule else "its default settings"
    policy = f"policy '{record.policy_name}' (version {record.policy_version})"
    day = record.time.date().isoformat()
    served = (
        "a fixed refusal message was served"
        if record.detector.fixed_message
        else "the model's refusal was served"
    )
    facts = (
        "An automated safety control in a voice assistant (refusal steering of the "
        f"assistant's audio-language model) declined to carry out a spoken request under "
        f"{policy}, {rule}. The refusal was detected automatically in the model's answer "
        f"and {served} without human involvement. The decision is entry {record.seq} "
        f"(id {record.id}) of the provider's tamper-evident audit log."
    )
    statement: dict[str, Any] = {
        "decision_visibility": ["DECISION_VISIBILITY_OTHER"],
        "decision_visibility_other": "The voice assistant withheld the requested spoken "
        "response and declined the request.",
        "decision_ground": "DECISION_GROUND_INCOMPATIBLE_CONTENT",
        "incompatible_content_ground": _cut(
            f"Acceptable-use terms of the voice assistant: {policy}, {rule}.", 500
        ),
        "incompatible_content_explanation": _cut(
            "The spoken request fell under a category of requests the terms of service "
            f"exclude ({policy}, {rule}), so the assistant refused to answer it.",
            2000,
        ),
        "content_type": ["CONTENT_TYPE_AUDIO"],
        "category": settings.category_of(record.rule),
        "content_date": day,
        "application_date": day,
        "decision_facts": _cut(facts, 5000),
        "source_type": "SOURCE_VOLUNTARY",
        "automated_detection": "Yes",
        "automated_decision": "AUTOMATED_DECISION_FULLY",
        "puid": record.id,
    }
    if settings.territorial_scope:
        statement["territorial_scope"] = list(settings.territorial_scope)
    return statement


def _text_problems(st: Mapping[str, Any]) -> list[str]:
    out = []
    for key, limit in _LIMITS.items():
        value = st.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            out.append(f"{key} must be text of at most {limit} characters")
    puid = st.get("puid")
    if isinstance(puid, str) and not _PUID.fullmatch(puid):
        out.append("puid may hold only letters, digits, '-' and '_'")
    language = st.get("content_language")
    if language is not None and (
        not isinstance(language, str) or not _LANGUAGE.fullmatch(language)
    ):
        out.append("content_language must be a two-letter ISO 639-1 code in capitals")
    return out


def _value_problems(st: Mapping[str, Any]) -> list[str]:
    out = []
    for key, allowed in _ONE_OF.items():
        if st.get(key) is not None and st[key] not in allowed:
            out.append(f"{key} {st[key]!r} is not one of the allowed values")
    for key, allowed_values in _LISTS.items():
        value = st.get(key)
        if value is None:
            continue
        allowed_set = frozenset(allowed_values)
        if not isinstance(value, list) or not all(v in allowed_set for v in value):
            out.append(f"{key} must be a list of allowed values")
    for key, (low, high) in _DATE_RANGES.items():
        value = st.get(key)
        if value is None:
            continue
        try:
            day = date.fromisoformat(value) if isinstance(value, str) and len(value) == 10 else None
        except ValueError:
            day = None
        if day is None or not low <= day <= high:
            out.append(f"{key} must be a date YYYY-MM-DD between {low} and {high}")
    return out


def _required_problems(st: Mapping[str, Any]) -> list[str]:
    required = [
        "decision_ground",
        "content_type",
        "category",
        "content_date",
        "application_date",
        "decision_facts",
        "source_type",
        "automated_detection",
        "automated_decision",
        "puid",
    ]
    visibility = st.get("decision_visibility") or []
    content = st.get("content_type") or []
    ground = st.get("decision_ground")
    conditional = {
        "decision_visibility_other": "DECISION_VISIBILITY_OTHER" in visibility,
        "decision_monetary_other": st.get("decision_monetary") == "DECISION_MONETARY_OTHER",
        "content_type_other": "CONTENT_TYPE_OTHER" in content,
        "illegal_content_legal_ground": ground == "DECISION_GROUND_ILLEGAL_CONTENT",
        "illegal_content_explanation": ground == "DECISION_GROUND_ILLEGAL_CONTENT",
        "incompatible_content_ground": ground == "DECISION_GROUND_INCOMPATIBLE_CONTENT",
        "incompatible_content_explanation": ground == "DECISION_GROUND_INCOMPATIBLE_CONTENT",
    }
    required += [key for key, needed in conditional.items() if needed]
    out = [f"{key} is required" for key in required if st.get(key) in (None, "", [])]
    decisions = (
        "decision_visibility",
        "decision_monetary",
        "decision_provision",
        "decision_account",
    )
    if all(st.get(key) in (None, []) for key in decisions):
        out.append(f"at least one of {', '.join(decisions)} is required")
    return out


def statement_problems(statement: Mapping[str, Any]) -> list[str]:
    """Every way ``statement`` breaks the Transparency Database's field rules (empty: none)."""
    unknown = sorted(set(statement) - KNOWN_FIELDS)
    out = [f"{key} is not a statement field" for key in unknown]
    return (
        out + _required_problems(statement) + _value_problems(statement) + _text_problems(statement)
    )


def dsa_batches(
    records: Iterable[AuditRecord], settings: DsaSettings | None = None, *, size: int = MAX_BATCH
) -> Iterator[list[dict[str, Any]]]:
    """Checked statements of the enforced refusals in ``records``, in batches of ``size``.

    Raises:
        AuditError: a statement breaks a field rule (names the record and the rule), or
            ``size`` is outside 1..100.
    """
    if not 1 <= size <= MAX_BATCH:
        raise AuditError(f"a DSA batch holds 1 to {MAX_BATCH} statements, not {size}")
    batch: list[dict[str, Any]] = []
    for record in records:
        statement = dsa_statement(record, settings)
        if statement is None:
            continue
        problems = statement_problems(statement)
        if problems:
            raise AuditError(
                f"the statement for record {record.id} breaks the Transparency Database's "
                f"rules: {problems[0]}; fix the policy or rule name, or the DSA settings"
            )
        batch.append(statement)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def export_dsa(
    records: Iterable[AuditRecord], out: TextIO, settings: DsaSettings | None = None
) -> int:
    """Write ``{"statements": [...]}`` batches, one per line; return how many statements."""
    count = 0
    for batch in dsa_batches(records, settings):
        out.write(json.dumps({"statements": batch}, sort_keys=True, ensure_ascii=False) + "\n")
        count += len(batch)
    return count
