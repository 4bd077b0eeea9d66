"""Shadow-mode records (issue #10 item 1, audit side) and stores written by the original layout."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sarsteer_guard.audit import (
    AuditDraft,
    RecordFilter,
    ShadowOutcome,
    SqliteAuditLog,
    export_csv,
    export_jsonl,
    statement_of_reasons,
)
from sarsteer_guard.audit.record import chain_hash
from sarsteer_guard.cli import main
from sarsteer_guard.report.audit_report import audit_summary
from sarsteer_guard.testing.audit import sample_draft

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _shadow_draft(turn_id: str, would_refuse: bool | None) -> AuditDraft:
    """A shadow turn: the listener got the unsteered answer; the shadow row is recorded."""
    return sample_draft(
        turn_id=turn_id,
        mode="shadow",
        refused=False,
        response_text="Sure, here is how.",
        served_text="Sure, here is how.",
        shadow=ShadowOutcome(
            refused=would_refuse,
            text="I cannot assist with that." if would_refuse else "Sure.",
            score=0.91,
            keyword="I cannot" if would_refuse else None,
            alpha=0.1,
        ),
    )


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        log.append(sample_draft(turn_id="enforced", time=T0))
        log.append(_shadow_draft("shadow-refused", True))
        log.append(_shadow_draft("shadow-answered", False))
        log.append(_shadow_draft("shadow-failed", None))
    return path


def test_shadow_outcome_is_hashed_and_counted(store: Path) -> None:
    with SqliteAuditLog(store, create=False) as log:
        assert log.verify().ok
        records = list(log.iter())
        shadow = records[1]
        assert shadow.shadow is not None
        assert (shadow.refused, shadow.enforce_refused) == (False, True)
        assert shadow.shadow.text == "I cannot assist with that."
        assert shadow.to_json_dict()["shadow"]["score"] == 0.91
        would = [r.turn_id for r in log.iter(RecordFilter(enforce_refused=True))]
        assert would == ["enforced", "shadow-refused"]
        assert [r.turn_id for r in log.iter(mode="shadow", enforce_refused=False)] == [
            "shadow-answered",
            "shadow-failed",
        ]
    summary = audit_summary(records)
    assert (summary.turns, summary.refused, summary.shadow_refused) == (4, 1, 1)
    assert summary.by_mode["shadow"].shadow_refused == 1
    assert statement_of_reasons(shadow) is None  # nothing was restricted


def test_shadow_in_list_show_export_and_report(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "list", "--audit", str(store)]) == 0
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert "yes (shadow)" in rows[2]
    assert "no (shadow)" in rows[3]
    assert "4 records: 1 refused, 1 refused in shadow" in captured.err

    with SqliteAuditLog(store, create=False) as log:
        shadow_id = next(iter(log.iter(turn="shadow-refused"))).id
    assert main(["audit", "show", shadow_id, "--audit", str(store)]) == 0
    shown = capsys.readouterr().out
    assert re.search(r"shadow\.refused\s+True", shown)
    assert re.search(r"shadow\.text\s+I cannot assist with that\.", shown)

    out = tmp_path / "out.csv"
    assert (
        main(["audit", "export", "--audit", str(store), "--format", "csv", "--out", str(out)]) == 0
    )
    assert "(of 4 records: 1 refused, 1 refused in shadow)" in capsys.readouterr().err
    with out.open() as fh:
        csv_rows = list(csv.DictReader(fh))
    assert [r["shadow_refused"] for r in csv_rows] == ["", "true", "false", ""]
    assert csv_rows[1]["shadow_keyword"] == "I cannot"

    pytest.importorskip("matplotlib")
    page = tmp_path / "r.html"
    assert main(["audit", "report", "--audit", str(store), "--out", str(page)]) == 0
    assert "1 refused in shadow" in capsys.readouterr().err
    match = re.search(r"<b>(\d+)</b>refused in shadow mode", page.read_text(encoding="utf-8"))
    assert match is not None
    assert match.group(1) == "1"


def test_shadow_outcome_from_the_guards_mapping() -> None:
    row = {
        "steered": True,
        "alpha": 0.1,
        "refused": True,
        "refusal_keyword": "I cannot",
        "refusal_score": 0.7,
        "text": "I cannot help.",
    }
    outcome = ShadowOutcome.from_turn(row)
    assert outcome == ShadowOutcome(
        refused=True, text="I cannot help.", score=0.7, keyword="I cannot", alpha=0.1
    )
    failed = ShadowOutcome.from_turn({"steered": True, "error": "row failed"})
    assert (failed.refused, failed.error) == (None, "row failed")
    assert ShadowOutcome.from_turn({**row, "refusal_score": float("nan")}).score is None


def test_exports_of_shadow_records_rehash() -> None:
    buf = io.StringIO()
    from sarsteer_guard.testing.audit import CapturingAuditLog

    log = CapturingAuditLog()
    log.append(_shadow_draft("s", True))
    export_jsonl(log.records, buf)
    line = json.loads(buf.getvalue())
    assert chain_hash(line["prev_hash"], line) == line["hash"]
    assert export_csv(log.records, io.StringIO()) == 1


# -- stores of the original layout (record_version 1, no marker) ------------------------
_OLD_SCHEMA = """
CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time TEXT NOT NULL,
    session_id TEXT NOT NULL, policy_name TEXT NOT NULL, policy_version TEXT NOT NULL, rule TEXT,
    refused INTEGER NOT NULL, data TEXT NOT NULL);
CREATE TABLE audit_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _old_store(path: Path, n: int, *, pruned: int = 0) -> list[dict[str, object]]:
    """Write records exactly as the original code did: layout 1, no marker."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(_OLD_SCHEMA)
    prev = "0" * 64
    rows = []
    for i in range(n):
        data = sample_draft(
            turn_id=f"old{i}", time=T0 + timedelta(minutes=i), retention_until=T0
        ).model_dump(mode="json")
        data.pop("shadow")
        data.update(record_version=1, seq=i + 1, prev_hash=prev)
        data["hash"] = prev = chain_hash(prev, data)
        rows.append(data)
    for data in rows[pruned:]:
        conn.execute(
            "INSERT INTO audit_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (data["seq"], data["id"], data["time"], data["session_id"], data["policy_name"],
             data["policy_version"], data["rule"], int(bool(data["refused"])), json.dumps(data)),
        )  # fmt: skip
    meta = {"head_seq": str(n), "head_hash": prev}
    if pruned:
        meta.update(checkpoint_seq=str(pruned), checkpoint_hash=str(rows[pruned - 1]["hash"]))
    conn.executemany("INSERT INTO audit_meta VALUES (?, ?)", list(meta.items()))
    conn.close()
    return rows


def test_an_original_layout_store_still_verifies_and_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.db"
    rows = _old_store(path, 3)
    assert main(["audit", "verify", "--audit", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("chain intact: 3 records")
    assert "note: the store has no marker" in out
    assert main(["audit", "export", "--audit", str(path)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines == rows  # layout 1 is exported as stored: every line re-hashes
    with SqliteAuditLog(path) as writer:  # a new writer adds the marker and goes on
        record = writer.append(sample_draft(turn_id="new"))
        assert (record.seq, record.record_version) == (4, 2)
        assert record.prior_expiry == T0  # the old records' retention, carried forward
        report = writer.verify()
    assert report.ok, report.summary()
    assert not report.notes


def test_an_original_layout_checkpoint_is_not_vouched_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "old.db"
    _old_store(path, 4, pruned=2)
    assert main(["audit", "verify", "--audit", str(path)]) == 1
    err = capsys.readouterr().err
    assert "chain NOT verified: cannot vouch for records up to seq 2" in err
    assert "record_version 1" in err
