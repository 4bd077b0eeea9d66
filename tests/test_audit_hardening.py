"""Issue #10 (A-F, items 3, 21, 22) and #9 item 7: attacks and failures the audit log must survive.

Each test names the item it covers. Real files and the real Redis (unique prefixes).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast, get_type_hints

import pytest
import redis

from sarsteer_guard.audit import (
    AuditKeys,
    AuditLog,
    AuditStoreMissingError,
    RecordFilter,
    RedisAuditLog,
    SqliteAuditLog,
    open_audit_log,
    redact_context,
)
from sarsteer_guard.audit.checkpoint import Checkpoint
from sarsteer_guard.audit.filter import RecordFilterFields
from sarsteer_guard.audit.keys import decode_key
from sarsteer_guard.audit.record import chain_hash
from sarsteer_guard.cli import main
from sarsteer_guard.errors import AuditError
from sarsteer_guard.testing.audit import CapturingAuditLog, sample_draft

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY = AuditKeys(decode_key("11" * 32, source="test key"))


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test:audit:{uuid.uuid4().hex}"
    yield name
    raw = redis.Redis.from_url(REDIS_URL)
    keys = list(raw.scan_iter(match=f"{{{name}}}:*"))
    if keys:
        raw.delete(*keys)
    raw.close()


@pytest.fixture(params=["sqlite", "redis", "capture"])
def log(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> Iterator[AuditLog]:
    made: AuditLog
    if request.param == "sqlite":
        made = SqliteAuditLog(tmp_path / "audit.db", keys=None)
    elif request.param == "redis":
        made = RedisAuditLog(REDIS_URL, prefix=prefix, keys=None)
    else:
        made = CapturingAuditLog()
    yield made
    made.close()


def _fill(log: AuditLog, n: int, **overrides: Any) -> list[Any]:
    return [
        log.append(sample_draft(turn_id=f"t{i}", time=T0 + timedelta(minutes=i), **overrides))
        for i in range(n)
    ]


def _sql(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS audit_records_append_only")
    return conn


# -- A: a record whose id was handed out is never lost -----------------------------------
def test_a_lone_surrogate_anywhere_is_stored_and_verifies(log: AuditLog) -> None:
    draft = sample_draft(
        context={"x": "\ud800", "\udfffkey": ["ok", "\ud83d\ude00"], "n": {"deep": "a\udc00b"}},
        response_text="I cannot \ud800 help",
        session_id="s-\udfff",
    )
    record = log.append(draft)
    assert record is not None
    assert record.context == {"x": "\ufffd", "\ufffdkey": ["ok", "😀"], "n": {"deep": "a\ufffdb"}}
    assert record.response_text == "I cannot \ufffd help"
    assert record.session_id == "s-\ufffd"
    assert "normalised" in record.flags
    assert log.get(record.id) == record
    report = log.verify()
    assert report.ok, report.summary()
    assert report.checked == 1


def test_a_values_json_cannot_hold_are_stored(log: AuditLog) -> None:
    record = log.append(
        sample_draft(context={"nan": float("nan"), "inf": float("-inf"), "big": 7**6000, 3: (1,)})
    )
    assert record is not None
    assert record.context["nan"] == "NaN"
    assert record.context["inf"] == "-Infinity"
    assert record.context["big"] == hex(7**6000)
    assert record.context["3"] == [1]
    assert log.verify().ok


def test_a_hashed_context_field_with_a_surrogate() -> None:
    out = redact_context({"phone": "+49\ud800", "name": "x\udfff"}, ["phone"], [], salt="s")
    assert out["phone"].startswith("hmac-sha256:")
    draft = sample_draft(context=out)
    assert draft.context["name"] == "x\ufffd"
    assert "normalised" in draft.flags


def test_a_any_write_failure_is_spooled_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = open_audit_log(str(path))  # a writer, as the Guard opens it
    first = log.append(sample_draft(turn_id="before"))
    assert first is not None
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER broken BEFORE INSERT ON audit_records "
        "BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    )
    assert log.append(sample_draft(turn_id="during")) is None  # spooled, not dropped
    assert log.pending() == 1
    conn.execute("DROP TRIGGER broken")
    conn.close()
    after = log.append(sample_draft(turn_id="after"))
    assert after is not None
    assert log.pending() == 0
    assert [r.turn_id for r in log.iter()] == ["before", "during", "after"]
    assert log.verify().ok
    log.close()


def test_a_a_draft_that_keeps_failing_stays_spooled_and_blocks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    log = open_audit_log(str(path))
    assert log.append(sample_draft(turn_id="a")) is not None
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER poison BEFORE INSERT ON audit_records WHEN NEW.session_id = 'p' "
        "BEGIN SELECT RAISE(ABORT, 'constraint failed'); END"
    )
    assert log.append(sample_draft(turn_id="b", session_id="p")) is None
    assert log.append(sample_draft(turn_id="c")) is not None  # the spool does not block
    assert log.pending() == 1
    conn.execute("DROP TRIGGER poison")
    conn.close()
    assert log.flush() == 1
    assert [r.turn_id for r in log.iter()] == ["a", "c", "b"]
    assert log.verify().ok
    log.close()


# -- B: prefix deletion disguised as retention ------------------------------------------
def _delete_prefix_sqlite(path: Path, upto: int, checkpoint: Checkpoint | None) -> None:
    """Delete records up to ``upto`` and write a checkpoint as an attacker would."""
    conn = _sql(path)
    conn.execute("DELETE FROM audit_records WHERE seq <= ?", (upto,))
    if checkpoint is None:  # the original layout's bare checkpoint keys
        digest = json.loads(
            conn.execute("SELECT data FROM audit_records ORDER BY seq").fetchone()[0]
        )["prev_hash"]
        for key, value in (("checkpoint_seq", str(upto)), ("checkpoint_hash", digest)):
            conn.execute(
                "INSERT OR REPLACE INTO audit_meta(key, value) VALUES (?, ?)", (key, value)
            )
    else:
        conn.execute(
            "INSERT OR REPLACE INTO audit_meta(key, value) VALUES ('checkpoint', ?)",
            (checkpoint.to_json(),),
        )
    conn.close()


def _forged(record: Any, keys: AuditKeys | None = None) -> Checkpoint:
    """A plausible checkpoint after ``record``, dated now."""
    made = Checkpoint(seq=record.seq, hash=record.hash, time=datetime.now(UTC), reason="retention")
    return made.signed(keys)


@pytest.mark.parametrize("forged", [False, True], ids=["bare-keys", "json-checkpoint"])
def test_b_prefix_deletion_is_not_retention(tmp_path: Path, forged: bool) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path, keys=None) as log:
        records = _fill(log, 6, retention_until=T0 + timedelta(days=3650))
    _delete_prefix_sqlite(path, 3, _forged(records[2]) if forged else None)
    with SqliteAuditLog(path, keys=None) as log:
        report = log.verify()
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.kind == ("pruned_early" if forged else "removed")
    if forged:
        assert "were removed before their retention passed" in str(report.first_break)
        assert "until 2036" in str(report.first_break)
    # The CLI with an anchor newer than the deleted prefix says so too.
    anchor = f"5:{records[4].hash}"
    assert main(["audit", "verify", "--audit", str(path), "--anchor", anchor]) == 1


def test_b_keyless_prune_is_checked_from_the_chain(log: AuditLog) -> None:
    _fill(log, 3, retention_until=T0 + timedelta(days=1))
    _fill(log, 2, retention_until=T0 + timedelta(days=3650))
    assert log.prune(T0 + timedelta(days=30)) == 3
    report = log.verify()
    assert report.ok, report.summary()
    assert any("had passed their retention by 2026-05-02" in n for n in report.notes)
    assert any("SARSTEER_AUDIT_KEY is not set" in n for n in report.notes)


def test_b_keyed_checkpoints_are_macs_and_forgeries_fail(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path, keys=KEY) as log:
        records = _fill(log, 2, retention_until=T0 + timedelta(days=1))
        records += _fill(log, 4, retention_until=T0 + timedelta(days=3650))
        assert log.prune(T0 + timedelta(days=30)) == 2
        report = log.verify()
        assert report.ok, report.summary()
        assert any(f"authenticated (key id {KEY.current.key_id})" in n for n in report.notes)
    # An attacker deletes two more (unexpired) records and writes an unsigned checkpoint,
    # one signed with a key of their own, or one that claims the records had expired.
    other = AuditKeys(decode_key("22" * 32, source="attacker"))
    attempts = [
        (_forged(records[3]), "carries no MAC"),
        (_forged(records[3], other), "neither SARSTEER_AUDIT_KEY"),
        (_forged(records[3], KEY).model_copy(update={"seq": 3}), "does not verify"),
    ]
    for checkpoint, problem in attempts:
        _delete_prefix_sqlite(path, 4, checkpoint)
        with SqliteAuditLog(path, keys=KEY) as log:
            brk = log.verify().first_break
        assert brk is not None
        assert brk.kind in ("unauthenticated", "removed")
        assert problem in str(brk) or brk.kind == "removed"
    # The same store, verified without the key, still finds the deletion in the chain.
    _delete_prefix_sqlite(path, 4, _forged(records[3]))
    with SqliteAuditLog(path, keys=None) as log:
        brk = log.verify().first_break
    assert brk is not None
    assert brk.kind == "pruned_early"


def test_b_everything_pruned_without_a_key_is_not_vouched_for(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path, keys=None) as log:
        _fill(log, 3, retention_until=T0)
        assert log.prune(T0 + timedelta(days=1)) == 3
        report = log.verify()
    assert not report.ok
    assert report.summary().startswith("chain NOT verified: cannot vouch for records up to seq 3")
    with SqliteAuditLog(path, keys=KEY) as log:  # a key cannot bless an unsigned checkpoint
        assert not log.verify().ok


def test_b_redis_max_len_trim_needs_the_key_or_the_configured_max_len(prefix: str) -> None:
    with RedisAuditLog(REDIS_URL, prefix=prefix, max_len=5, keys=KEY) as writer:
        for i in range(12):
            writer.append(sample_draft(turn_id=f"t{i}"))  # no retention: kept indefinitely
        assert writer.verify().ok
    with RedisAuditLog(REDIS_URL, prefix=prefix, keys=None, create=False) as bare:
        brk = bare.verify().first_break
    assert brk is not None
    assert brk.kind == "pruned_early"
    assert "max_len=5" in str(brk)
    with RedisAuditLog.from_url(f"{REDIS_URL}?prefix={prefix}&max_len=5", create=False) as cfg:
        cfg._key_source = None  # the verifier's own max_len, no key
        assert cfg.verify().ok


# -- C: index columns outside the hash --------------------------------------------------
@pytest.mark.parametrize(
    ("column", "value"), [("refused", 0), ("session_id", "other"), ("rule", "x"), ("time", "2020")]
)
def test_c_edited_index_columns_are_detected(tmp_path: Path, column: str, value: object) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path, keys=None) as log:
        records = _fill(log, 3)
    conn = _sql(path)
    conn.execute(f"UPDATE audit_records SET {column} = ? WHERE seq = 2", (value,))  # noqa: S608
    conn.close()
    with SqliteAuditLog(path, keys=None) as log:
        report = log.verify()
        # refused and rule filter on the hashed content: the edit hides nothing from them
        assert [r.seq for r in log.iter(refused=True, rule="weapons")] == [1, 2, 3]
    assert not report.ok
    brk = report.first_break
    assert brk is not None
    assert (brk.kind, brk.seq, brk.record_id) == ("edited", 2, records[1].id)
    assert f"stored {column}" in brk.detail


def test_c_filters_use_the_hashed_content(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path, keys=None) as log:
        _fill(log, 3)
    conn = _sql(path)
    conn.execute("UPDATE audit_records SET refused = 0, rule = 'x', policy_name = 'y'")
    conn.close()
    with SqliteAuditLog(path, keys=None) as log:
        assert [r.seq for r in log.iter(refused=True)] == [1, 2, 3]
        assert [r.seq for r in log.iter(rule="weapons", policy="default")] == [1, 2, 3]
        assert list(log.iter(rule="x")) == []


# -- D and item 3: a missing or emptied store is no log ---------------------------------
def test_d_read_commands_never_create_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo.db"
    assert main(["audit", "verify", "--audit", str(typo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no audit log at" in err[0]
    assert not typo.exists()
    nested = tmp_path / "nonexistent" / "dir" / "audit.db"
    for action in ("list", "export", "prune"):
        assert main(["audit", action, "--audit", str(nested)]) == 2
    assert main(["audit", "show", "abcdef", "--audit", str(nested)]) == 2
    assert not (tmp_path / "nonexistent").exists()
    with pytest.raises(AuditStoreMissingError):
        open_audit_log(str(typo), create=False).open()


def test_d_a_zeroed_file_is_no_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        _fill(log, 3)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"")
    assert main(["audit", "verify", "--audit", f"sqlite:///{path}"]) == 2
    assert "holds no audit log" in capsys.readouterr().err
    assert path.stat().st_size == 0


def test_d_an_emptied_table_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        _fill(log, 3)
    conn = _sql(path)
    conn.execute("DELETE FROM audit_records")
    conn.close()
    assert main(["audit", "verify", "--audit", str(path)]) == 1
    assert "seq 1..3 missing at the end of the log" in capsys.readouterr().err


def test_d_a_new_empty_store_is_intact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.db"
    SqliteAuditLog(path).open()  # a writer created it and has not written yet
    assert main(["audit", "verify", "--audit", str(path)]) == 0
    assert capsys.readouterr().out.startswith("chain intact: 0 records")


def test_d_deleted_redis_keys(prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{REDIS_URL}?prefix={prefix}"
    assert main(["audit", "verify", "--audit", url]) == 2  # never written: no log
    assert f"no audit log at {REDIS_URL.rsplit('/', 1)[0]}" in capsys.readouterr().err
    with RedisAuditLog.from_url(url) as log:
        _fill(log, 3)
    raw = redis.Redis.from_url(REDIS_URL)
    raw.delete(f"{{{prefix}}}:head")  # marker and head gone, records left
    assert main(["audit", "verify", "--audit", url]) == 1
    assert "the log head is missing" in capsys.readouterr().err
    raw.delete(*[f"{{{prefix}}}:{k}" for k in ("stream", "ids", "checkpoint")])
    raw.close()
    assert main(["audit", "verify", "--audit", url]) == 2  # the whole log deleted


def test_d_a_writer_refuses_a_store_deleted_under_it(tmp_path: Path, prefix: str) -> None:
    path = tmp_path / "audit.db"
    writer = open_audit_log(str(path))
    assert writer.append(sample_draft(turn_id="a")) is not None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert writer.append(sample_draft(turn_id="b")) is None  # kept in the spool
    assert writer.pending() == 1
    writer.close()
    red = RedisAuditLog(REDIS_URL, prefix=prefix)
    red.append(sample_draft(turn_id="a"))
    raw = redis.Redis.from_url(REDIS_URL)
    raw.delete(*red.keys)  # e.g. FLUSHDB, or Redis restarted without persistence
    raw.close()
    with pytest.raises(AuditError, match="deleted or replaced while in use"):
        red.append(sample_draft(turn_id="b"))
    red.close()


# -- F: whatever the damage, verify says where ------------------------------------------
def _edit_row(path: Path, seq: int, text: str) -> None:
    conn = _sql(path)
    conn.execute("UPDATE audit_records SET data = ? WHERE seq = ?", (text, seq))
    conn.close()


def test_f_verify_locates_an_unparsable_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        _fill(log, 4)
    _edit_row(path, 3, '{"broken": ')
    assert main(["audit", "verify", "--audit", str(path)]) == 1
    err = capsys.readouterr().err
    assert "chain broken: record unreadable at seq 3: row 3 is not a valid record" in err
    assert "(2 records verified before it)" in err
    assert "locate the damage" not in err


def test_f_verify_locates_a_rehashed_record_that_is_not_a_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        records = _fill(log, 3)
    data = records[1].to_json_dict()
    data["alpha"] = "strong"
    data["hash"] = chain_hash(data["prev_hash"], data)
    _edit_row(path, 2, json.dumps(data))
    assert main(["audit", "verify", "--audit", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False
    assert out["break"]["kind"] == "unreadable"
    assert out["break"]["seq"] == 2
    assert out["break"]["record_id"] == records[1].id
    assert "alpha" in out["break"]["detail"]


def test_f_verify_locates_a_redis_entry_without_data(prefix: str) -> None:
    with RedisAuditLog(REDIS_URL, prefix=prefix, keys=None) as log:
        _fill(log, 3)
        raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        entries = cast(list[tuple[str, dict[str, str]]], raw.xrange(log.keys[0]))
        sid = entries[1][0]
        entries[1] = (sid, {"seq": "2", "junk": "x"})
        raw.delete(log.keys[0])
        for entry_id, fields in entries:
            raw.xadd(log.keys[0], fields, id=entry_id)
        raw.close()
        brk = log.verify().first_break
    assert brk is not None
    assert (brk.kind, brk.seq) == ("unreadable", 2)
    assert f"stream id {sid} is not a valid record" in brk.detail


def test_f_damaged_database_pages(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        _fill(log, 200, response_text="x" * 2000)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8192] = b"\xff" * 8192
    path.write_bytes(bytes(raw))
    with SqliteAuditLog(path, create=False) as reader:
        report = reader.verify()
    assert not report.ok
    assert report.first_break is not None
    assert report.first_break.kind in ("unreadable", "edited", "removed")
    assert report.checked < 200


# -- item 3: a report on a broken chain fails -------------------------------------------
@pytest.mark.parametrize("damage", ["edited", "unreadable"])
def test_report_on_a_broken_chain_exits_1(tmp_path: Path, damage: str) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        records = _fill(log, 3)
    data = records[1].to_json_dict() | {"refused": False}
    _edit_row(path, 2, json.dumps(data) if damage == "edited" else '{"x": 1}')
    out = tmp_path / "r.html"
    assert main(["audit", "report", "--audit", str(path), "--out", str(out)]) == 1
    assert "BROKEN" in out.read_text(encoding="utf-8")


# -- items 21 and 22: flag names, URL meaning --------------------------------------------
def test_audit_flag_and_deprecated_store_alias(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        _fill(log, 2)
    assert main(["audit", "list", "--audit", str(path)]) == 0
    captured = capsys.readouterr()
    assert "deprecated" not in captured.err
    assert "2 records: 2 refused, 0 refused in shadow" in captured.err
    assert main(["audit", "list", "--store", str(path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "sarsteer-guard: note: --store is deprecated in audit commands (elsewhere it names the "
        "vector store); use --audit"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "list", "--aud", str(path)])  # no abbreviations
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["audit", "export", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: jsonl)" in help_text
    assert "--store" not in help_text
    assert "--audit URL" in help_text


def test_prune_json_and_mac_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        _fill(log, 2, retention_until=T0)
        _fill(log, 1)
    monkeypatch.setenv("SARSTEER_AUDIT_KEY", "33" * 32)
    assert main(["audit", "prune", "--audit", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"pruned": 2, "checkpoint_mac": True}
    assert main(["audit", "verify", "--audit", str(path)]) == 0
    assert "authenticated (key id" in capsys.readouterr().out
    monkeypatch.setenv("SARSTEER_AUDIT_KEY", "too short")
    assert main(["audit", "prune", "--audit", str(path)]) == 2
    assert "SARSTEER_AUDIT_KEY is neither hex nor base64" in capsys.readouterr().err


def test_sqlite_url_means_what_sqlalchemy_means(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def path_of(url: str) -> Path:
        log = open_audit_log(url)  # no I/O yet
        return cast(Path, getattr(log, "inner", log).path)

    assert path_of("sqlite:///audit.db") == Path("audit.db")
    assert path_of("sqlite:///logs/audit.db?max_age_days=7") == Path("logs/audit.db")
    assert path_of(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"  # four slashes
    assert path_of("sqlite:////var/audit.db") == Path("/var/audit.db")
    with pytest.raises(AuditError, match="no path"):
        open_audit_log("sqlite:///")


# -- #9 item 7: one typed filter ---------------------------------------------------------
def test_record_filter_is_one_typed_value(log: AuditLog) -> None:
    log.append(sample_draft(turn_id="a", session_id="s1", flags=("fail_open",)))
    log.append(sample_draft(turn_id="b", session_id="s2", mode="shadow", refused=False))
    log.append(sample_draft(turn_id="c", session_id="s1"))
    assert [r.turn_id for r in log.iter(RecordFilter(session="s1"))] == ["a", "c"]
    assert [r.turn_id for r in log.iter(RecordFilter(session="s1"), turn="c")] == ["c"]
    assert [r.turn_id for r in log.iter(mode="shadow")] == ["b"]
    assert [r.turn_id for r in log.iter(flag="fail_open")] == ["a"]
    assert [r.turn_id for r in log.iter(after_seq=1)] == ["b", "c"]
    fields = set(get_type_hints(RecordFilterFields))
    assert fields == set(RecordFilter.__dataclass_fields__)
