"""Records, redaction, exports, the ``audit`` CLI and the no-torch guarantee."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from sarsteer_guard.audit import (
    AuditRecord,
    SqliteAuditLog,
    export_csv,
    export_jsonl,
    export_sor,
    redact_context,
    statement_of_reasons,
)
from sarsteer_guard.audit.export import CSV_COLUMNS
from sarsteer_guard.audit.record import chain_hash, encode_audio, new_record_id
from sarsteer_guard.cli import main
from sarsteer_guard.cli.audit import parse_when
from sarsteer_guard.errors import AuditError, GuardError
from sarsteer_guard.testing.audit import CapturingAuditLog, sample_draft

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _records() -> list[AuditRecord]:
    log = CapturingAuditLog()
    log.append(sample_draft(turn_id="a", time=T0, flags=("fail_open",)))
    log.append(
        sample_draft(turn_id="b", time=T0 + timedelta(minutes=1), mode="shadow", rule="drugs")
    )
    log.append(sample_draft(turn_id="c", time=T0 + timedelta(minutes=2), refused=False))
    log.append(
        sample_draft(
            turn_id="d",
            time=T0 + timedelta(minutes=3),
            audio=encode_audio(b"RIFF....WAVE"),
            audio_format="wav",
        )
    )
    return log.records


# -- records and redaction ---------------------------------------------------------------
def test_record_is_frozen_and_strict() -> None:
    record = _records()[0]
    with pytest.raises(ValidationError):
        record.refused = False  # type: ignore[misc]  # asserting that frozen models refuse this
    with pytest.raises(ValidationError, match="extra"):
        sample_draft(unexpected="x")
    with pytest.raises(ValidationError):
        sample_draft(alpha=float("nan"))
    assert record.to_json_dict()["time"] == "2026-05-01T12:00:00.000000Z"
    assert new_record_id(T0) < new_record_id(T0 + timedelta(milliseconds=1))
    assert int(sample_draft(time=T0).id[:12], 16) > int(T0.timestamp() * 1000)  # created now


def test_hash_covers_every_field() -> None:
    record = _records()[0]
    data = record.to_json_dict()
    assert chain_hash(record.prev_hash, data) == record.hash
    for key in ("response_text", "alpha", "context", "flags", "seq", "prev_hash", "time"):
        changed = dict(data)
        changed[key] = "x"
        assert chain_hash(record.prev_hash, changed) != record.hash, key


def test_redact_context_hashes_and_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SARSTEER_AUDIT_SALT", "pepper")
    context = {"phone": "+4912345", "caller": {"email": "a@b.c", "tier": "gold"}, "ip": "1.2.3.4"}
    out = redact_context(context, hash_fields=["phone", "caller.email"], drop_fields=["ip"])
    assert "ip" not in out
    assert out["caller"]["tier"] == "gold"
    assert out["phone"].startswith("hmac-sha256:")
    assert out["phone"] != redact_context(context, ["phone"], [], salt="other")["phone"]
    assert out["phone"] == redact_context(context, ["phone"], [])["phone"]  # stable per salt
    assert "+4912345" not in json.dumps(out)
    assert "a@b.c" not in json.dumps(out)
    assert context["ip"] == "1.2.3.4"  # input untouched
    monkeypatch.delenv("SARSTEER_AUDIT_SALT")
    with pytest.raises(AuditError, match="SARSTEER_AUDIT_SALT"):
        redact_context(context, hash_fields=["phone"])
    assert redact_context(context, drop_fields=["phone"]) == {
        "caller": context["caller"],
        "ip": "1.2.3.4",
    }


# -- exports -----------------------------------------------------------------------------
def test_export_jsonl_is_lossless() -> None:
    records = _records()
    buf = io.StringIO()
    assert export_jsonl(records, buf) == 4
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    for line, record in zip(lines, records, strict=True):
        assert AuditRecord.model_validate(line) == record
        assert chain_hash(line["prev_hash"], line) == line["hash"]


def test_export_csv_has_flat_columns() -> None:
    buf = io.StringIO()
    assert export_csv(_records(), buf) == 4
    buf.seek(0)
    reader = csv.DictReader(buf)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    rows = list(reader)
    assert rows[0]["refused"] == "true"
    assert json.loads(rows[0]["context"]) == {"channel": "phone"}
    assert json.loads(rows[0]["flags"]) == ["fail_open"]
    assert rows[0]["detector_keyword"] == "I cannot assist"
    assert rows[3]["audio_kept"] == "true"
    assert "audio" not in CSV_COLUMNS


def test_statements_of_reasons_only_for_enforced_refusals() -> None:
    records = _records()
    assert statement_of_reasons(records[1]) is None  # shadow
    assert statement_of_reasons(records[2]) is None  # not refused
    buf = io.StringIO()
    assert export_sor(records, buf) == 2
    sor = json.loads(buf.getvalue().splitlines()[0])
    assert sor["content_type"] == "audio"
    assert sor["automated_detection"] is True
    assert sor["automated_decision"] is True
    assert sor["ground"]["policy_name"] == "default"
    assert sor["ground"]["policy_version"] == "1"
    assert sor["ground"]["rule"] == "weapons"
    assert sor["facts"]["record_id"] == records[0].id
    assert sor["facts"]["hash"] == records[0].hash
    assert sor["application_date"] == "2026-05-01T12:00:00.000000Z"
    assert sor["decision_type"]


# -- CLI ---------------------------------------------------------------------------------
def test_parse_when() -> None:
    now = datetime(2026, 5, 10, tzinfo=UTC)
    assert parse_when("7d", now) == datetime(2026, 5, 3, tzinfo=UTC)
    assert parse_when("24h", now) == datetime(2026, 5, 9, tzinfo=UTC)
    assert parse_when("2026-05-01") == datetime(2026, 5, 1, tzinfo=UTC)
    assert parse_when("2026-05-01T12:30") == datetime(2026, 5, 1, 12, 30, tzinfo=UTC)
    assert parse_when("2026-05-01T12:30+02:00") == datetime(2026, 5, 1, 10, 30, tzinfo=UTC)
    with pytest.raises(GuardError, match="7d"):
        parse_when("last tuesday")


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, Path, list[AuditRecord]]:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        records = [
            log.append(
                sample_draft(
                    turn_id=f"t{i}",
                    session_id=f"s{i % 2}",
                    time=T0 + timedelta(hours=i),
                    response_text=f"I cannot assist with request number {i} at all, sorry.",
                )
            )
            for i in range(4)
        ]
    return f"sqlite:///{path}", path, records


def test_cli_list(
    store: tuple[str, Path, list[AuditRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, records = store
    assert main(["audit", "list", "--store", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["TIME", "(UTC)", "SESSION"]
    assert len(lines) == 5
    assert "default@1" in lines[1]
    assert "2026-05-01 12:00:00" in lines[1]
    assert "I cannot assist with request number 0" in lines[1]
    assert records[0].id in lines[1]

    assert main(["audit", "list", "--store", url, "--session", "s1", "--json"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["turn_id"] for r in out] == ["t1", "t3"]

    assert main(["audit", "list", "--store", url, "--since", "2026-05-01T13:00",
                 "--until", "2026-05-01T15:00", "--json"]) == 0  # fmt: skip
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["turn_id"] for r in out] == ["t1", "t2"]


def test_cli_show(
    store: tuple[str, Path, list[AuditRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, records = store
    assert main(["audit", "show", records[2].id, "--store", url]) == 0
    out = capsys.readouterr().out
    assert "turn_id" in out
    assert "t2" in out
    assert "default@1" in out
    assert "detector.score" in out
    assert "not kept" in out
    assert '"channel": "phone"' in out
    assert main(["audit", "show", "feedfacecafe", "--store", url]) == 2
    assert "no audit record" in capsys.readouterr().err


def test_cli_export(
    store: tuple[str, Path, list[AuditRecord]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _, _ = store
    out_file = tmp_path / "out.csv"
    assert main(["audit", "export", "--format", "csv", "--out", str(out_file), "--store", url]) == 0
    assert "exported 4 records" in capsys.readouterr().err
    with out_file.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["turn_id"] for r in rows] == ["t0", "t1", "t2", "t3"]

    assert main(["audit", "export", "--format", "sor", "--store", url, "--rule", "weapons"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert json.loads(lines[0])["content_type"] == "audio"

    assert main(["audit", "export", "--store", url, "--since", "1d"]) == 0  # all are older
    assert capsys.readouterr().out == ""


def test_cli_verify(
    store: tuple[str, Path, list[AuditRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, path, records = store
    assert main(["audit", "verify", "--store", url]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "chain intact: 4 records"
    assert lines[1].startswith(f"head: 4:{records[-1].hash}")

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER audit_records_append_only")
    data = json.loads(conn.execute("SELECT data FROM audit_records WHERE seq = 2").fetchone()[0])
    data["served_text"] = "something else"
    conn.execute("UPDATE audit_records SET data = ? WHERE seq = 2", (json.dumps(data),))
    conn.close()
    assert main(["audit", "verify", "--store", url]) == 1
    err = capsys.readouterr().err
    assert "chain broken" in err
    assert f"edited at seq 2 (id {records[1].id})" in err


def test_cli_prune_and_bad_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/p.db"
    with SqliteAuditLog(tmp_path / "p.db") as log:
        log.append(sample_draft(retention_until=T0))
        log.append(sample_draft(retention_until=T0 + timedelta(days=3650)))
    assert main(["audit", "prune", "--store", url]) == 0
    assert "pruned 1" in capsys.readouterr().out
    assert main(["audit", "verify", "--store", url]) == 0
    assert main(["audit", "list", "--store", "ftp://x"]) == 2
    assert "unsupported audit store" in capsys.readouterr().err


# -- test kit ---------------------------------------------------------------------------
async def test_capturing_log_wait_for() -> None:
    log = CapturingAuditLog()

    def produce() -> None:
        for i in range(3):
            time.sleep(0.01)
            log.append(sample_draft(turn_id=f"t{i}"))

    thread = threading.Thread(target=produce)
    thread.start()
    records = await log.wait_for(3, timeout=10)
    thread.join()
    assert [r.turn_id for r in records] == ["t0", "t1", "t2"]
    assert log.wait_for_blocking(3, timeout=1) == records
    with pytest.raises(TimeoutError, match="expected 4 audit records"):
        await log.wait_for(4, timeout=0.05)
    log.close()
    with pytest.raises(AuditError):
        log.append(sample_draft())


# -- no torch ----------------------------------------------------------------------------
def test_audit_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import sarsteer_guard.audit, sarsteer_guard.cli.audit, sarsteer_guard.testing.audit\n"
        "from sarsteer_guard.audit import open_audit_log\n"
        "import sarsteer_guard.audit.export, sarsteer_guard.audit.spool\n"
        "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
