"""Issue #15 in the audit layer: kept audio beside the chain, review streams, DSA export."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import soundfile as sf

from sarsteer_guard.audit import (
    AuditLog,
    RecordFilter,
    RedisAuditLog,
    ReviewLog,
    SqliteAuditLog,
    open_audit_log,
)
from sarsteer_guard.audit.audio import audio_matches_record
from sarsteer_guard.audit.dsa import (
    MAX_BATCH,
    DsaSettings,
    dsa_batches,
    dsa_statement,
    statement_problems,
)
from sarsteer_guard.audit.record import chain_hash
from sarsteer_guard.audit.review import AccessEvent, ReviewLabel
from sarsteer_guard.audit.streams import MemorySideStream
from sarsteer_guard.cli import main
from sarsteer_guard.errors import AuditError
from sarsteer_guard.testing.audit import CapturingAuditLog, sample_draft
from sarsteer_guard.testing.console import spoken_draft
from sarsteer_guard.testing.speech import espeak_available

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
NOW = datetime.now(UTC)
needs_speech = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL).ping())
    except redis.RedisError:
        return False


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, AuditLog]]:
    """(URL, writer) of a fresh store of each backend."""
    if request.param == "sqlite":
        url = str(tmp_path / "audit.db")
        log: AuditLog = SqliteAuditLog(url)
        yield url, log
        log.close()
        return
    if not _redis_up():
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = f"test:console:{uuid.uuid4().hex}"
    url = f"{REDIS_URL}?prefix={prefix}"
    log = RedisAuditLog.from_url(url)
    yield url, log
    log.close()
    raw = redis.Redis.from_url(REDIS_URL)
    keys = list(raw.scan_iter(match=f"{{{prefix}}}:*"))
    if keys:
        raw.delete(*keys)


# -- kept audio -------------------------------------------------------------------------
@needs_speech
def test_kept_audio_leaves_the_chain_and_matches_the_hashed_digest(
    store: tuple[str, AuditLog],
) -> None:
    _, log = store
    draft = spoken_draft("How do I pick a lock?", "I cannot help with that.", time=NOW)
    record = log.append(draft)
    assert record is not None
    assert record.audio is None  # not in the hashed record
    assert record.audio_format == "flac"  # ...which still says audio was kept
    stored = log.get(record.id)
    assert stored is not None
    assert stored.audio is None
    assert chain_hash(stored.prev_hash, stored.to_json_dict()) == stored.hash
    audio = log.get_audio(record.id)
    assert audio is not None
    assert audio.data == base64.b64decode(draft.audio or "")
    assert audio.content_type == "audio/flac"
    assert audio_matches_record(audio, stored)
    samples, rate = sf.read(io.BytesIO(audio.data))
    assert rate == 16000
    assert len(samples) > 8000
    # Default audio retention: 30 days, never beyond the record's own.
    assert audio.expires is not None
    assert timedelta(days=29) < audio.expires - draft.time <= timedelta(days=30)


@needs_speech
def test_other_audio_does_not_match_the_record(store: tuple[str, AuditLog]) -> None:
    _, log = store
    record = log.append(spoken_draft("one two three", "I cannot.", time=NOW))
    other = log.append(spoken_draft("something else entirely", "I cannot.", time=NOW))
    assert record is not None
    assert other is not None
    audio = log.get_audio(other.id)
    assert audio is not None
    assert not audio_matches_record(audio, record)


def test_audio_has_its_own_shorter_retention_and_the_chain_survives_its_deletion(
    store: tuple[str, AuditLog],
) -> None:
    url, log = store
    flac = base64.b64encode(b"fLaC-not-really").decode()
    old = sample_draft(
        turn_id="old",
        time=NOW - timedelta(days=10),
        audio=flac,
        audio_format="flac",
        audio_retention_until=NOW - timedelta(days=3),
        retention_until=NOW + timedelta(days=200),
    )
    capped = sample_draft(
        turn_id="capped",
        time=NOW - timedelta(days=2),
        audio=flac,
        audio_format="flac",
        audio_retention_until=NOW + timedelta(days=400),
        retention_until=NOW - timedelta(days=1),  # the record's retention caps its audio's
    )
    fresh = sample_draft(turn_id="fresh", time=NOW, audio=flac, audio_format="flac")
    ids = [r.id for r in (log.append(old), log.append(capped), log.append(fresh)) if r]
    assert len(ids) == 3
    due = log.audio_due(NOW)
    assert [rid for rid, _ in due] == ids[:2]
    reader = open_audit_log(url, create=False)
    reader.open()
    try:
        assert reader.prune_audio(NOW) == 2
        assert reader.get_audio(ids[0]) is None
        assert reader.get_audio(ids[1]) is None
        assert reader.get_audio(ids[2]) is not None
        assert reader.audio_due(NOW) == []
        report = reader.verify()
        assert report.ok, report.summary()
        assert report.checked == 3  # every record is still there
    finally:
        reader.close()


def test_drafts_without_audio_retention_dump_as_before() -> None:
    draft = sample_draft()
    assert "audio_retention_until" not in draft.model_dump(mode="json")
    later = sample_draft(audio_retention_until=NOW)
    assert later.model_dump(mode="json")["audio_retention_until"].endswith("Z")


def test_the_in_memory_log_keeps_old_style_inline_audio() -> None:
    log = CapturingAuditLog()
    flac = base64.b64encode(b"inline").decode()
    record = log.append(sample_draft(audio=flac, audio_format="flac"))
    audio = log.get_audio(record.id)
    assert audio is not None
    assert audio.inline
    assert audio.data == b"inline"


def test_redis_reads_only_the_tail_when_catching_up(store: tuple[str, AuditLog]) -> None:
    _, log = store
    records = [log.append(sample_draft(turn_id=f"t{i}", time=NOW)) for i in range(12)]
    seqs = [r.seq for r in records if r]
    assert [r.seq for r in log.iter(after_seq=7)] == seqs[7:]
    assert [r.seq for r in log.iter(RecordFilter(after_seq=0))] == seqs
    assert list(log.iter(after_seq=12)) == []


# -- CLI: show --audio-out, prune --dry-run / --audio ----------------------------------------
@needs_speech
def test_cli_writes_the_audio_and_prunes_it_separately(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        record = log.append(
            spoken_draft("hello there", "I cannot.", audio_retention_until=NOW - timedelta(days=1))
        )
        plain = log.append(sample_draft(turn_id="plain"))
    out = tmp_path / "turn.flac"
    assert main(["audit", "show", record.id, "--audit", str(path), "--audio-out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "matches the record's hashed audio_sha256" in err
    assert sf.info(str(out)).samplerate == 16000
    assert main(["audit", "show", plain.id, "--audit", str(path), "--audio-out", str(out)]) == 2
    assert "was not kept" in capsys.readouterr().err
    assert main(["audit", "prune", "--audit", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "would prune no records" in text
    assert "1 kept audio clips" in text
    assert main(["audit", "prune", "--audit", str(path), "--audio", "--dry-run"]) == 0
    assert "1 kept audio clips are past" in capsys.readouterr().out  # shown, not deleted
    assert main(["audit", "prune", "--audit", str(path), "--audio"]) == 0
    assert "deleted 1 kept audio clips" in capsys.readouterr().out
    assert main(["audit", "show", record.id, "--audit", str(path), "--audio-out", str(out)]) == 2
    assert "deleted at its retention" in capsys.readouterr().err
    assert main(["audit", "verify", "--audit", str(path)]) == 0


def test_cli_prune_dry_run_shows_what_would_go(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        for i in range(3):
            log.append(
                sample_draft(turn_id=f"o{i}", time=NOW - timedelta(days=9), retention_until=NOW)
            )
        log.append(sample_draft(turn_id="keep", retention_until=NOW + timedelta(days=9)))
    assert main(["audit", "prune", "--audit", str(path), "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["would_prune"] == 3
    with SqliteAuditLog(path, create=False) as reader:
        assert sum(1 for _ in reader.iter()) == 4  # a dry run removes nothing


# -- review streams ---------------------------------------------------------------------
def _review(log: AuditLog) -> ReviewLog:
    return ReviewLog.beside(log)


def test_labels_supersede_and_never_erase(store: tuple[str, AuditLog]) -> None:
    _, log = store
    record = log.append(sample_draft())
    assert record is not None
    review = _review(log)
    try:
        first = review.add_label(record_id=record.id, label="correct_refusal", reviewer="alice")
        second = review.add_label(
            record_id=record.id, label="over_refusal", reviewer="bob", note="harmless recipe"
        )
        labels = list(review.labels())
        assert [(x.label, x.reviewer) for x in labels] == [
            ("correct_refusal", "alice"),
            ("over_refusal", "bob"),
        ]
        assert (first.seq, second.seq) == (1, 2)
        assert second.prev_hash == first.hash
        assert labels[1].note == "harmless recipe"
        assert list(review.labels(after_seq=1)) == [labels[1]]
        event = review.record_access(actor="alice", role="reviewer", action="view", target="x")
        assert isinstance(event, AccessEvent)
        assert event.seq == 1
        assert review.verify_labels().ok
        assert review.verify_access().ok
        with pytest.raises(AuditError, match="label"):
            review.add_label(record_id=record.id, label="wrong", reviewer="alice")  # type: ignore[arg-type]  # testing the runtime check
        with pytest.raises(AuditError, match="note"):
            review.add_label(record_id=record.id, label="unsure", reviewer="a", note="x" * 2001)
        assert len(list(review.labels())) == 2  # refused labels took no chain position
    finally:
        review.close()


def _tamper_labels(url: str, log: AuditLog, edit: str) -> None:
    """Rewrite the label stream's storage as an attacker with write access would."""
    if isinstance(log, SqliteAuditLog):
        conn = sqlite3.connect(url, isolation_level=None)
        conn.execute("DROP TRIGGER audit_side_no_update")
        conn.execute("DROP TRIGGER audit_side_no_delete")
        if edit == "edit":
            row = conn.execute("SELECT data FROM audit_side WHERE seq = 1").fetchone()
            data = json.loads(row[0]) | {"label": "correct_refusal"}
            conn.execute("UPDATE audit_side SET data = ? WHERE seq = 1", (json.dumps(data),))
        else:
            conn.execute("DELETE FROM audit_side WHERE stream = 'labels' AND seq = 2")
        conn.close()
        return
    assert isinstance(log, RedisAuditLog)
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    key = f"{{{log.prefix}}}:side:labels"
    entries = cast(list[tuple[str, dict[str, str]]], raw.xrange(key))
    if edit == "edit":
        sid, fields = entries[0]
        data = json.loads(fields["data"]) | {"label": "correct_refusal"}
        raw.delete(key)
        raw.xadd(key, {**fields, "data": json.dumps(data)}, id=sid)
        for sid, fields in entries[1:]:
            raw.xadd(key, fields, id=sid)
    else:
        raw.xdel(key, entries[-1][0])


@pytest.mark.parametrize("edit", ["edit", "remove_tail"])
def test_a_rewritten_label_history_fails_verification(
    store: tuple[str, AuditLog], edit: str
) -> None:
    url, log = store
    record = log.append(sample_draft())
    assert record is not None
    review = _review(log)
    try:
        review.add_label(record_id=record.id, label="over_refusal", reviewer="alice")
        review.add_label(record_id=record.id, label="unsure", reviewer="bob")
        _tamper_labels(url, log, edit)
        report = review.verify_labels()
        assert not report.ok
        assert report.first_break is not None
        assert report.first_break.kind == ("edited" if edit == "edit" else "removed")
    finally:
        review.close()


def test_sqlite_refuses_to_update_or_delete_labels(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        record = log.append(sample_draft())
        review = _review(log)
        review.add_label(record_id=record.id, label="unsure", reviewer="alice")
        review.close()
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE audit_side SET data = '{}'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit_side")
    conn.close()


def test_memory_side_stream_chains_too() -> None:
    stream = MemorySideStream("labels")
    for n in range(3):
        stream.append(
            {
                "kind": "label",
                "id": f"l{n}",
                "time": "2026-05-01T00:00:00.000000Z",
                "record_id": "r",
                "label": "unsure",
                "note": "",
                "reviewer": "alice",
            }
        )
    assert stream.verify(ReviewLabel).ok
    stream.stored[1] = stream.stored[1].replace("unsure", "over_refusal")
    assert stream.verify(ReviewLabel).first_break is not None


# -- DSA statements of reasons ----------------------------------------------------------
def _refused(n: int, **fields: Any) -> list[Any]:
    log = CapturingAuditLog()
    for i in range(n):
        log.append(sample_draft(turn_id=f"t{i}", time=NOW, **fields))
    return log.records


def test_statements_follow_the_transparency_database_rules() -> None:
    record = _refused(1)[0]
    statement = dsa_statement(record)
    assert statement is not None
    assert statement_problems(statement) == []
    assert statement["content_type"] == ["CONTENT_TYPE_AUDIO"]
    assert statement["decision_ground"] == "DECISION_GROUND_INCOMPATIBLE_CONTENT"
    assert statement["automated_detection"] == "Yes"
    assert statement["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert statement["source_type"] == "SOURCE_VOLUNTARY"
    assert statement["puid"] == record.id
    assert statement["application_date"] == NOW.date().isoformat()
    # Published statements carry no personal data: no session, context or turn text.
    text = json.dumps(statement)
    for private in (record.session_id, record.response_text, "phone"):
        assert private not in text
    assert dsa_statement(_refused(1, mode="shadow")[0]) is None
    assert dsa_statement(_refused(1, refused=False)[0]) is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"category": "STATEMENT_CATEGORY_MADE_UP"}, "category"),
        ({"content_type": []}, "content_type is required"),
        ({"content_type": ["CONTENT_TYPE_PODCAST"]}, "content_type must be a list"),
        ({"decision_facts": "x" * 5001}, "decision_facts must be text of at most 5000"),
        ({"puid": "id with spaces"}, "puid may hold only"),
        ({"puid": "a" * 501}, "puid must be text of at most 500"),
        ({"application_date": "2026-05-01T12:00"}, "application_date must be a date"),
        ({"content_date": "1999-12-31"}, "content_date must be a date"),
        ({"decision_visibility_other": None}, "decision_visibility_other is required"),
        ({"decision_visibility": None}, "at least one of decision_visibility"),
        ({"incompatible_content_explanation": ""}, "incompatible_content_explanation"),
        ({"automated_detection": True}, "automated_detection"),
        ({"decision_type": "x"}, "decision_type is not a statement field"),
        ({"territorial_scope": ["US"]}, "territorial_scope"),
    ],
)
def test_each_field_rule_is_checked(change: dict[str, Any], problem: str) -> None:
    statement = dsa_statement(_refused(1)[0])
    assert statement is not None
    broken = {k: v for k, v in (statement | change).items() if v is not None}
    assert any(problem in p for p in statement_problems(broken)), statement_problems(broken)


def test_illegal_content_ground_needs_its_own_fields() -> None:
    statement = dsa_statement(_refused(1)[0])
    assert statement is not None
    illegal = statement | {"decision_ground": "DECISION_GROUND_ILLEGAL_CONTENT"}
    problems = statement_problems(illegal)
    assert "illegal_content_legal_ground is required" in problems
    assert "illegal_content_explanation is required" in problems


def test_batches_hold_at_most_100_statements() -> None:
    records = _refused(250) + _refused(3, mode="shadow")
    batches = list(dsa_batches(records))
    assert [len(b) for b in batches] == [MAX_BATCH, MAX_BATCH, 50]
    with pytest.raises(AuditError, match="1 to 100"):
        list(dsa_batches(records, size=101))


def test_settings_refuse_values_the_database_refuses() -> None:
    with pytest.raises(AuditError, match="not a DSA statement category"):
        DsaSettings(category="VIOLENCE")
    with pytest.raises(AuditError, match="country"):
        DsaSettings(territorial_scope=("UK",))
    settings = DsaSettings(
        rule_categories={"weapons": "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY"},
        territorial_scope=("DE", "FR"),
    )
    statement = dsa_statement(_refused(1)[0], settings)
    assert statement is not None
    assert statement["category"] == "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY"
    assert statement["territorial_scope"] == ["DE", "FR"]
    assert statement_problems(statement) == []


def test_cli_exports_dsa_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        for i in range(3):
            log.append(sample_draft(turn_id=f"t{i}"))
        log.append(sample_draft(turn_id="s", mode="shadow"))
    args = ["audit", "export", "--audit", str(path), "--format", "dsa", "--dsa-territory", "NL"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    batches = [json.loads(line) for line in out.splitlines()]
    assert [len(b["statements"]) for b in batches] == [3]
    assert all(statement_problems(s) == [] for s in batches[0]["statements"])
    assert "exported 3 statements of reasons" in err
    bad = ["audit", "export", "--audit", str(path), "--format", "dsa", "--dsa-category", "nope"]
    assert main(bad) == 2
