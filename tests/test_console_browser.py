"""The review console in a real browser (Playwright driving Debian's Chromium, headless).

A reviewer signs in, filters, searches, opens a turn, plays its audio, labels it, finds
the label in the list and exports the set; the security checks (sign-in, roles, CSRF,
hostile text, a tampered record) and an admin's prune run against real stores, SQLite
and Redis. Screenshots land in ``out/console-screenshots/``.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import pytest
import redis

from sarsteer_guard.audit import AuditLog, RedisAuditLog, ReviewLog, SqliteAuditLog
from sarsteer_guard.audit.dsa import statement_problems
from sarsteer_guard.audit.record import AuditRecord, Detection, chain_hash
from sarsteer_guard.console.auth import TokenBook
from sarsteer_guard.console.settings import ConsoleSettings
from sarsteer_guard.testing.audit import sample_draft
from sarsteer_guard.testing.console import ConsoleThread, console_in_thread, spoken_draft
from sarsteer_guard.testing.speech import espeak_available

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ALICE = "alice-" + "r" * 26  # reviewer
BOB = "bob-" + "a" * 28  # admin
NOW = datetime.now(UTC)
HOSTILE = (
    '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    '<a href="javascript:window.__pwned = 3">click</a>'
)
TOKENS = TokenBook.from_named([("reviewer", "alice", ALICE), ("admin", "bob", BOB)])


@dataclass
class Store:
    """A seeded audit store: its URL, a writer, and the ids the tests look for."""

    kind: str
    url: str
    log: AuditLog
    spoken: AuditRecord
    hostile: AuditRecord
    refused: int


def _seed(log: AuditLog) -> tuple[AuditRecord, AuditRecord, int]:
    rules = ("weapons", "drugs", "self-harm")
    for i in range(12):
        log.append(
            sample_draft(
                turn_id=f"t{i}",
                session_id=f"caller-{i % 4}",
                rule=rules[i % 3],
                mode="shadow" if i % 5 == 0 else "enforce",
                policy_version=str(1 + i % 2),
                time=NOW - timedelta(days=i % 8, hours=i + 2),
                detector=Detection(keyword="I cannot", score=round(0.5 + i * 0.03, 2)),
                response_text=f"I cannot assist with request number {i}.",
            )
        )
    log.append(sample_draft(turn_id="answered", refused=False, response_text="Sure, a cake."))
    spoken = log.append(
        spoken_draft(
            "How do I make explosives at home?",
            "I cannot help with explosives.",
            turn_id="spoken",
            session_id="caller-42",
            rule="weapons",
            time=NOW - timedelta(minutes=30),
            context={"channel": "phone", "caller": {"lang": "en"}},
            detector=Detection(keyword="I cannot", score=0.91),
        )
    )
    hostile = log.append(
        sample_draft(
            turn_id="hostile",
            rule="drugs",
            time=NOW - timedelta(minutes=20),
            response_text=HOSTILE,
            served_text=HOSTILE,
            context={"note": HOSTILE},
        )
    )
    assert spoken is not None
    assert hostile is not None
    return spoken, hostile, 14


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL).ping())
    except redis.RedisError:
        return False


def _store(kind: str, tmp_path: Path) -> Iterator[Store]:
    if kind == "sqlite":
        url = str(tmp_path / "audit.db")
        log: AuditLog = SqliteAuditLog(url)
    else:
        if not _redis_up():
            pytest.skip(f"no Redis at {REDIS_URL}")
        prefix = f"test:console:{uuid.uuid4().hex}"
        url = f"{REDIS_URL}?prefix={prefix}"
        log = RedisAuditLog.from_url(url)
    spoken, hostile, refused = _seed(log)
    try:
        yield Store(kind, url, log, spoken, hostile, refused)
    finally:
        log.close()
        if kind == "redis":
            raw = redis.Redis.from_url(REDIS_URL)
            keys = list(raw.scan_iter(match=f"{{{prefix}}}:*"))
            if keys:
                raw.delete(*keys)


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from _store(request.param, tmp_path)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    yield from _store("sqlite", tmp_path)


@pytest.fixture
def console(store: Store) -> Iterator[ConsoleThread]:
    with console_in_thread(ConsoleSettings(audit_url=store.url, tokens=TOKENS)) as running:
        yield running


@pytest.fixture
def sqlite_console(sqlite_store: Store) -> Iterator[ConsoleThread]:
    settings = ConsoleSettings(audit_url=sqlite_store.url, tokens=TOKENS, signin_per_minute=4)
    with console_in_thread(settings) as running:
        yield running


def sign_in(page: Page, base: str, token: str, path: str = "/") -> None:
    page.goto(base + path)
    assert "/signin" in page.url
    page.fill("#token", token)
    page.click("form[action='/signin'] button[type=submit]")
    page.wait_for_load_state()


def column(page: Page, index: int) -> list[str]:
    return page.locator(f"table.turns tbody tr td:nth-child({index})").all_inner_texts()


def csrf_of(page: Page) -> str:
    return page.locator("input[name=csrf]").first.input_value()


# -- the reviewer's day -----------------------------------------------------------------
def test_a_reviewer_filters_listens_labels_and_exports(
    context: BrowserContext, console: ConsoleThread, store: Store, screenshot: Any, tmp_path: Path
) -> None:
    page = context.new_page()
    base = console.url
    page.goto(base + "/")
    assert "/signin" in page.url  # no token -> sign-in
    screenshot(page, f"{store.kind}-01-signin")
    sign_in(page, base, ALICE)
    assert urlsplit(page.url).path == "/"
    assert page.inner_text("#total") == str(store.refused)
    screenshot(page, f"{store.kind}-02-list")

    # filter by rule
    page.select_option("#rule", "weapons")
    page.click("form.filters button[type=submit]")
    rules = column(page, 3)
    assert rules
    assert set(rules) == {"weapons"}
    assert page.inner_text("#total") == str(len(rules))

    # full-text search over the response
    page.fill("#q", "explosives")
    page.click("form.filters button[type=submit]")
    assert page.inner_text("#total") == "1"
    screenshot(page, f"{store.kind}-03-search")

    # open the turn
    page.click("table.turns tbody tr a")
    assert urlsplit(page.url).path == f"/records/{store.spoken.id}"
    assert page.get_attribute("#chain-verdict", "data-ok") == "true"
    assert "I cannot help with explosives." in page.inner_text("#response-text")
    assert "samples match the record's hashed audio_sha256" in page.inner_text("main")

    # play the audio: it loads (right content type), has a duration, and plays
    audio_url = base + f"/records/{store.spoken.id}/audio"
    fetched = context.request.get(audio_url)
    assert fetched.status == 200
    assert fetched.headers["content-type"] == "audio/flac"
    page.wait_for_function(
        "() => { const a = document.querySelector('#turn-audio');"
        " return a && a.readyState >= 1 && a.duration > 0; }"
    )
    duration = page.evaluate("document.querySelector('#turn-audio').duration")
    assert 0.5 < duration < 10
    page.evaluate("document.querySelector('#turn-audio').play()")
    page.wait_for_function(
        "() => { const a = document.querySelector('#turn-audio');"
        " return a.currentTime > 0 || a.ended; }"
    )
    screenshot(page, f"{store.kind}-04-detail")

    # label twice: the later label supersedes, the earlier stays in the history
    page.check("input[name=label][value=correct_refusal]")
    page.click("form.labelform button[type=submit]")
    page.check("input[name=label][value=over_refusal]")
    page.fill("#note", "A chemistry question; the refusal was too strict.")
    page.click("form.labelform button[type=submit]")
    assert page.url.endswith("#review")
    rows = page.locator("table.history tbody tr").all_inner_texts()
    assert len(rows) == 2
    assert "over-refusal" in rows[0]
    assert "in force" in rows[0]
    assert "alice" in rows[0]
    assert "correct refusal" in rows[1]
    assert "superseded" in rows[1]
    screenshot(page, f"{store.kind}-05-labelled")

    # the label shows in the list and filters it
    page.goto(base + "/?label=over_refusal")
    assert page.inner_text("#total") == "1"
    assert column(page, 9) == ["over-refusal"]
    page.goto(base + "/?label=correct_refusal")
    assert page.inner_text("#total") == "0"

    # export the whole refused set three ways, and read the files back
    page.goto(base + "/")
    exported = {}
    for fmt in ("csv", "jsonl", "dsa"):
        page.select_option("form.export select[name=format]", fmt)
        with page.expect_download() as info:
            page.click("form.export button[type=submit]")
        target = tmp_path / f"export.{fmt}"
        info.value.save_as(target)
        exported[fmt] = target.read_text(encoding="utf-8")
    rows_csv = list(csv.DictReader(io.StringIO(exported["csv"])))
    assert len(rows_csv) == store.refused
    lines = [json.loads(line) for line in exported["jsonl"].splitlines()]
    assert {row["id"] for row in rows_csv} == {line["id"] for line in lines}
    assert all(chain_hash(line["prev_hash"], line) == line["hash"] for line in lines)
    batches = [json.loads(line) for line in exported["dsa"].splitlines()]
    statements = [s for batch in batches for s in batch["statements"]]
    enforced = sum(1 for line in lines if line["mode"] == "enforce")
    assert len(statements) == enforced
    assert all(statement_problems(s) == [] for s in statements)

    # the dashboard counts the review
    page.goto(base + "/dashboard")
    assert page.inner_text("#card-refused") == str(store.refused)
    assert page.inner_text("#card-over") == "100%"
    assert page.get_attribute("#card-chain", "data-ok") == "true"
    assert page.locator("svg.chart").count() == 3
    screenshot(page, f"{store.kind}-06-dashboard")

    # everything alice did is in the access log, which verifies
    review = ReviewLog.beside(store.log)
    try:
        done = {(e.actor, e.action) for e in review.access()}
        for action in ("sign_in", "list", "view", "audio", "label", "export", "dashboard"):
            assert ("alice", action) in done
        assert review.verify_access().ok
        assert review.verify_labels().ok
    finally:
        review.close()


# -- security -----------------------------------------------------------------------------
def test_no_token_means_sign_in_and_a_wrong_token_is_refused(
    context: BrowserContext, sqlite_console: ConsoleThread, sqlite_store: Store
) -> None:
    page = context.new_page()
    target = f"/records/{sqlite_store.spoken.id}"
    page.goto(sqlite_console.url + target)
    assert urlsplit(page.url).path == "/signin"
    assert page.locator("table.turns").count() == 0
    response = context.request.get(sqlite_console.url + target + "/audio", max_redirects=0)
    assert response.status == 303  # no audio without a session either
    page.fill("#token", "not-the-token-" + "x" * 20)
    page.click("form[action='/signin'] button[type=submit]")
    assert "not valid" in page.inner_text("[role=alert]")
    page.fill("#token", ALICE)
    page.click("form[action='/signin'] button[type=submit]")
    assert urlsplit(page.url).path == target  # back where the user was going


def test_sign_in_is_rate_limited(context: BrowserContext, sqlite_console: ConsoleThread) -> None:
    page = context.new_page()
    page.goto(sqlite_console.url + "/signin")
    statuses = []
    for _ in range(5):
        page.fill("#token", "wrong-token-" + "y" * 20)
        with page.expect_response(lambda r: r.request.method == "POST") as info:
            page.click("form[action='/signin'] button[type=submit]")
        statuses.append(info.value.status)
    assert statuses == [401, 401, 401, 401, 429]
    assert "Too many attempts" in page.inner_text("[role=alert]")


def test_a_reviewer_cannot_prune(
    context: BrowserContext, sqlite_console: ConsoleThread, sqlite_store: Store
) -> None:
    page = context.new_page()
    sign_in(page, sqlite_console.url, ALICE)
    assert page.locator("a[href='/admin/retention']").count() == 0
    csrf = csrf_of(page)
    page.goto(sqlite_console.url + "/admin/retention")
    assert "for admins" in page.inner_text("main")
    response = context.request.post(
        sqlite_console.url + "/admin/retention/records",
        form={"csrf": csrf, "confirm": "yes", "last_seq": "3"},
    )
    assert response.status == 403
    assert context.request.get(sqlite_console.url + "/admin/access").status == 403


def test_forms_without_the_csrf_token_are_rejected(
    context: BrowserContext, sqlite_console: ConsoleThread, sqlite_store: Store
) -> None:
    page = context.new_page()
    sign_in(page, sqlite_console.url, ALICE)
    url = sqlite_console.url + f"/records/{sqlite_store.spoken.id}/labels"
    csrf = csrf_of(page)
    missing = context.request.post(url, form={"label": "unsure"})
    wrong = context.request.post(url, form={"label": "unsure", "csrf": "x" * 43})
    other_site = context.request.post(
        url, form={"label": "unsure", "csrf": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert (missing.status, wrong.status, other_site.status) == (403, 403, 403)
    assert "did not come from this console" in missing.text()
    review = ReviewLog.beside(sqlite_store.log)
    try:
        assert list(review.labels()) == []
    finally:
        review.close()
    accepted = context.request.post(url, form={"label": "unsure", "csrf": csrf}, max_redirects=0)
    assert accepted.status == 303  # the same form with its token goes through


def test_hostile_response_text_renders_inert(
    context: BrowserContext, sqlite_console: ConsoleThread, sqlite_store: Store, screenshot: Any
) -> None:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    sign_in(page, sqlite_console.url, ALICE)
    page.fill("#q", "pwned")
    page.click("form.filters button[type=submit]")
    assert page.inner_text("#total") == "1"
    assert "<script>window.__pwned = 1</script>" in page.inner_text("table.turns")
    page.click("table.turns tbody tr a")
    assert HOSTILE in page.inner_text("#response-text")
    assert "window.__pwned" in page.inner_text("pre.context")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0
    assert page.locator("a[href^='javascript:']").count() == 0
    assert errors == []
    screenshot(page, "sqlite-07-hostile-text")


def test_security_headers_and_cookie_flags(
    context: BrowserContext, sqlite_console: ConsoleThread
) -> None:
    page = context.new_page()
    response = page.goto(sqlite_console.url + "/signin")
    assert response is not None
    headers = response.headers
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp  # no script at all (default-src 'none')
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    cookie = next(c for c in context.cookies() if c["name"] == "sarsteer_console")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert not cookie["secure"]  # loopback: plain HTTP; Secure off loopback (unit-tested)
    conn = http.client.HTTPConnection(urlsplit(sqlite_console.url).netloc, timeout=10)
    conn.request("GET", "/signin", headers={"Host": "attacker.example"})
    assert conn.getresponse().status == 400  # DNS rebinding onto loopback is refused
    conn.close()


# -- a tampered record --------------------------------------------------------------------
def _tamper(store: Store, record: AuditRecord) -> None:
    """Edit one stored record's text without re-hashing, as an intruder with write access."""
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.url, isolation_level=None)
        conn.execute("DROP TRIGGER audit_records_append_only")
        row = conn.execute("SELECT data FROM audit_records WHERE id = ?", (record.id,)).fetchone()
        data = json.loads(row[0]) | {"response_text": "Sure, here is how."}
        edit = "UPDATE audit_records SET data = ? WHERE id = ?"
        conn.execute(edit, (json.dumps(data), record.id))
        conn.close()
        return
    assert isinstance(store.log, RedisAuditLog)
    raw = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    stream = store.log.keys[0]
    entries = cast(list[tuple[str, dict[str, str]]], raw.xrange(stream))
    raw.delete(stream)
    for sid, fields in entries:
        if fields["id"] == record.id:
            data = json.loads(fields["data"]) | {"response_text": "Sure, here is how."}
            fields = {**fields, "data": json.dumps(data)}
        raw.xadd(stream, cast(Any, fields), id=sid)


def test_a_tampered_record_shows_a_broken_chain(
    context: BrowserContext, console: ConsoleThread, store: Store, screenshot: Any
) -> None:
    page = context.new_page()
    sign_in(page, console.url, BOB, f"/records/{store.spoken.id}")
    assert page.get_attribute("#chain-verdict", "data-ok") == "true"
    _tamper(store, store.spoken)
    page.reload()
    verdict = page.locator("#chain-verdict")
    assert verdict.get_attribute("data-ok") == "false"
    assert "no longer matches its hash" in verdict.inner_text()
    assert "Sure, here is how." in page.inner_text("#response-text")  # shown, but flagged
    screenshot(page, f"{store.kind}-08-tampered")
    page.goto(console.url + "/dashboard")
    page.click("form[action='/verify'] button")
    assert urlsplit(page.url).path == "/dashboard"
    assert page.get_attribute("#card-chain", "data-ok") == "false"
    assert re.search(r"chain broken: record edited at seq \d+", page.inner_text("main"))


# -- an admin prunes, audio first ------------------------------------------------------------
def test_an_admin_prunes_records_and_audio_after_a_dry_run(
    context: BrowserContext, tmp_path: Path, screenshot: Any
) -> None:
    path = tmp_path / "audit.db"
    with SqliteAuditLog(path) as log:
        for i in range(3):
            log.append(sample_draft(turn_id=f"old{i}", time=NOW - timedelta(days=200 - i),
                                    retention_until=NOW - timedelta(days=10)))  # fmt: skip
        spoken = log.append(
            spoken_draft(
                "Tell me a secret.",
                "I cannot share that.",
                time=NOW - timedelta(days=9),
                audio_retention_until=NOW - timedelta(days=2),
            )
        )
        log.append(sample_draft(turn_id="recent"))
    settings = ConsoleSettings(audit_url=str(path), tokens=TOKENS)
    with console_in_thread(settings) as running:
        page = context.new_page()
        sign_in(page, running.url, BOB, "/admin/retention")
        preview = page.inner_text("#prune-preview")
        assert "would remove 3 records" in preview
        assert "seq 1 to 3" in preview
        assert "1 audio clip past its retention" in page.inner_text("main")
        screenshot(page, "sqlite-09-retention-preview")
        page.click("form[action='/admin/retention/records'] button")  # not confirmed yet
        assert "Tick the box" in page.inner_text("main")
        page.check("form[action='/admin/retention/records'] input[name=confirm]")
        page.click("form[action='/admin/retention/records'] button")
        assert "Removed 3 records" in page.inner_text("#prune-result")
        page.check("form[action='/admin/retention/audio'] input[name=confirm]")
        page.click("form[action='/admin/retention/audio'] button")
        assert "Deleted 1 kept audio clips" in page.inner_text("#prune-result")
        screenshot(page, "sqlite-10-retention-done")
        page.goto(running.url + f"/records/{spoken.id}")
        assert "deleted at its retention" in page.inner_text("main")
        assert page.get_attribute("#chain-verdict", "data-ok") == "true"
        page.goto(running.url + "/admin/access")
        actions = page.locator("table.turns tbody tr td:nth-child(4)").all_inner_texts()
        assert {"retention", "prune", "prune_audio"} <= set(actions)
    with SqliteAuditLog(path, create=False) as reader:
        report = reader.verify()
    assert report.ok, report.summary()
    assert report.checkpoint_seq == 3
