"""Exports for compliance staff: JSONL (lossless), CSV (spreadsheets), statements of reasons.

The statement-of-reasons shape follows the fields of DSA Art. 17 / the EU DSA
Transparency Database (decision type, content type, whether detection and decision
were automated, the ground, the facts, the date), one JSON object per line. Only
enforced refusals are restrictions, so shadow-mode and non-refused records produce no
statement. Shadow-mode records are counted by what enforce would have done
(:attr:`AuditRecord.enforce_refused`), in :class:`OutcomeCounts` and the CSV's
``shadow_*`` columns.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from sarsteer_guard.audit.record import AuditRecord, format_time

#: Flat CSV columns, in order. ``context`` and ``flags`` are JSON; audio is left out
#: (it is in the JSONL export) because spreadsheets choke on megabytes of base64.
CSV_COLUMNS: tuple[str, ...] = (
    "seq",
    "id",
    "time",
    "turn_id",
    "session_id",
    "policy_name",
    "policy_version",
    "policy_hash",
    "rule",
    "mode",
    "alpha",
    "model_id",
    "model_fingerprint",
    "vector_set_id",
    "refused",
    "detector_keyword",
    "detector_score",
    "detector_fixed_message",
    "shadow_refused",
    "shadow_score",
    "shadow_keyword",
    "shadow_text",
    "response_text",
    "served_text",
    "latency_ms",
    "context",
    "audio_sha256",
    "audio_kept",
    "flags",
    "retention_until",
    "prev_hash",
    "hash",
)


@dataclass
class OutcomeCounts:
    """Records seen, enforced refusals and shadow-mode refusals (what enforce would have done)."""

    records: int = 0
    refused: int = 0
    shadow_refused: int = 0

    def add(self, record: AuditRecord) -> None:
        """Count one record."""
        self.records += 1
        if record.mode == "shadow":
            self.shadow_refused += int(record.enforce_refused)
        else:
            self.refused += int(record.refused)

    def counted(self, records: Iterable[AuditRecord]) -> Iterator[AuditRecord]:
        """Yield ``records`` unchanged, counting each as it passes."""
        for record in records:
            self.add(record)
            yield record

    def __str__(self) -> str:
        return f"{self.refused} refused, {self.shadow_refused} refused in shadow"


def jsonl_line(record: AuditRecord) -> str:
    """A record's stored JSON form as one line (lossless: it re-hashes to its ``hash``)."""
    return json.dumps(record.to_json_dict(), sort_keys=True, ensure_ascii=False) + "\n"


def export_jsonl(records: Iterable[AuditRecord], out: TextIO) -> int:
    """Write each record's stored JSON form on one line; return the count.

    Lossless: every line can be re-hashed to check it against the chain.
    """
    count = 0
    for record in records:
        out.write(jsonl_line(record))
        count += 1
    return count


def csv_row(record: AuditRecord) -> dict[str, Any]:
    """One flat row of :data:`CSV_COLUMNS`."""
    data = record.to_json_dict()
    shadow = record.shadow
    return {
        **{k: data[k] for k in CSV_COLUMNS if k in data and k not in ("context", "flags")},
        "refused": "true" if record.refused else "false",
        "detector_keyword": record.detector.keyword or "",
        "detector_score": "" if record.detector.score is None else record.detector.score,
        "detector_fixed_message": "true" if record.detector.fixed_message else "false",
        "shadow_refused": ""
        if shadow is None or shadow.refused is None
        else str(shadow.refused).lower(),
        "shadow_score": "" if shadow is None or shadow.score is None else shadow.score,
        "shadow_keyword": "" if shadow is None else shadow.keyword or "",
        "shadow_text": "" if shadow is None else shadow.text,
        "context": json.dumps(record.context, sort_keys=True, ensure_ascii=False),
        # Kept audio lives beside the chain; the record keeps its format as the marker.
        "audio_kept": "true" if record.audio is not None or record.audio_format else "false",
        "flags": json.dumps(list(record.flags)),
        "rule": record.rule or "",
        "vector_set_id": record.vector_set_id or "",
        "retention_until": data["retention_until"] or "",
    }


def export_csv(records: Iterable[AuditRecord], out: TextIO) -> int:
    """Write a header and one flat row per record; return the count."""
    count = 0
    for line in csv_lines(records):
        out.write(line)
        count += 1
    return count - 1


def csv_lines(records: Iterable[AuditRecord]) -> Iterator[str]:
    """The CSV export as text chunks: the header, then one row per record (for streaming)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    yield buffer.getvalue()
    for record in records:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(csv_row(record))
        yield buffer.getvalue()


def statement_of_reasons(record: AuditRecord) -> dict[str, Any] | None:
    """The statement of reasons for an enforced refusal, or None for other records."""
    if not record.refused or record.mode != "enforce":
        return None
    ground = f"policy {record.policy_ref}" + (f", rule {record.rule}" if record.rule else "")
    return {
        "puid": record.id,
        "decision_type": "service_refusal",
        "decision_visibility": "response_withheld",
        "decision_description": (
            "The voice agent declined to carry out the spoken request"
            + (" and served a fixed refusal message." if record.detector.fixed_message else ".")
        ),
        "content_type": "audio",
        "automated_detection": True,
        "automated_decision": True,
        "decision_ground": "incompatible_content",
        "incompatible_content_ground": ground,
        "ground": {
            "policy_name": record.policy_name,
            "policy_version": record.policy_version,
            "policy_hash": record.policy_hash,
            "rule": record.rule,
        },
        "facts": {
            "record_id": record.id,
            "seq": record.seq,
            "hash": record.hash,
            "turn_id": record.turn_id,
            "session_id": record.session_id,
            "model_id": record.model_id,
            "steering_alpha": record.alpha,
            "detector": record.detector.model_dump(mode="json"),
            "served_text": record.served_text,
            "audio_sha256": record.audio_sha256,
        },
        "content_date": format_time(record.time),
        "application_date": format_time(record.time),
    }


def export_sor(records: Iterable[AuditRecord], out: TextIO) -> int:
    """Write one statement of reasons per enforced refusal; return how many."""
    count = 0
    for record in records:
        statement = statement_of_reasons(record)
        if statement is not None:
            out.write(json.dumps(statement, sort_keys=True, ensure_ascii=False) + "\n")
            count += 1
    return count
