"""Review console parts without a browser: tokens, sessions, limits, settings, filters, charts."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sarsteer_guard.audit.review import LABELS
from sarsteer_guard.cli import main
from sarsteer_guard.console.auth import (
    ADMIN_TOKENS_ENV,
    REVIEWER_TOKENS_ENV,
    SECRET_ENV,
    ConsoleConfigError,
    Principal,
    SessionCodec,
    SignInLimiter,
    TokenBook,
    load_console_tokens,
    load_secret,
)
from sarsteer_guard.console.charts import hbars, nice_ticks, stacked_days
from sarsteer_guard.console.index import Row
from sarsteer_guard.console.query import ListQuery
from sarsteer_guard.console.settings import ConsoleSettings
from sarsteer_guard.testing.audit import CapturingAuditLog, sample_draft

ALICE = "alice-token-" + "a" * 20
BOB = "bob-token-" + "b" * 20
NOW = datetime.now(UTC)


# -- tokens -----------------------------------------------------------------------------
def test_tokens_are_named_and_checked() -> None:
    book = TokenBook.from_named([("reviewer", "alice", ALICE), ("admin", "bob", BOB)])
    found = book.match(ALICE)
    assert found is not None
    assert found[0] == Principal("alice", "reviewer")
    assert book.match(BOB) is not None
    assert book.match(BOB)[0].is_admin  # type: ignore[index]  # asserted not None above
    assert book.match("nope" * 6) is None
    assert book.still_valid("alice", "reviewer", found[1])
    assert not book.still_valid("alice", "admin", found[1])
    assert not TokenBook().configured


@pytest.mark.parametrize(
    ("named", "message"),
    [
        ([("reviewer", "alice", "short")], "shorter than 16"),
        ([("reviewer", "al ice", ALICE)], "token name"),
        ([("reviewer", "alice", ALICE), ("admin", "alice", BOB)], "both a reviewer and an admin"),
        ([("reviewer", "alice", ALICE), ("admin", "bob", ALICE)], "also another name's token"),
    ],
)
def test_weak_or_ambiguous_tokens_are_refused(
    named: list[tuple[str, str, str]], message: str
) -> None:
    with pytest.raises(ConsoleConfigError, match=message):
        TokenBook.from_named(named)  # type: ignore[arg-type]  # roles are literals at runtime


def test_tokens_come_from_the_environment_and_a_file(tmp_path: Path) -> None:
    lines = tmp_path / "tokens"
    lines.write_text(f"# reviewers\nreviewer carol {'c' * 20}\nadmin dave {'d' * 20}\n")
    lines.chmod(0o600)
    env = {REVIEWER_TOKENS_ENV: f"alice={ALICE}", ADMIN_TOKENS_ENV: f" bob={BOB} ,"}
    book = load_console_tokens(lines, env)
    names = sorted((n, r) for _, n, r in book.entries)
    assert names == [("alice", "reviewer"), ("bob", "admin"), ("carol", "reviewer"),
                     ("dave", "admin")]  # fmt: skip
    as_json = tmp_path / "tokens.json"
    as_json.write_text(json.dumps({"reviewer": {"erin": "e" * 20}}))
    assert load_console_tokens(as_json, {}).match("e" * 20) is not None
    bad = tmp_path / "bad"
    bad.write_text("reviewer only-two-words\n")
    with pytest.raises(ConsoleConfigError, match="bad:1"):
        load_console_tokens(bad, {})
    with pytest.raises(ConsoleConfigError, match="name=TOKEN"):
        load_console_tokens(None, {REVIEWER_TOKENS_ENV: ALICE})


def test_session_secret_from_the_environment() -> None:
    assert load_secret({}) is None
    assert load_secret({SECRET_ENV: "ab" * 32}) == bytes.fromhex("ab" * 32)
    with pytest.raises(ConsoleConfigError, match="32 bytes"):
        load_secret({SECRET_ENV: "ab" * 8})


# -- sessions and limits ----------------------------------------------------------------
def test_session_cookies_are_signed_expire_and_can_be_revoked() -> None:
    codec = SessionCodec(b"k" * 32, lifetime_s=60)
    session = codec.issue(Principal("alice", "reviewer"), "fp")
    cookie = codec.encode(session)
    assert codec.decode(cookie) == session
    body, mac = cookie.split(".")
    forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + mac
    assert codec.decode(forged) is None
    assert SessionCodec(b"x" * 32, lifetime_s=60).decode(cookie) is None  # another secret
    assert codec.decode("garbage") is None
    assert SessionCodec(b"k" * 32, lifetime_s=-1).decode(
        SessionCodec(b"k" * 32, lifetime_s=-1).encode(session.__class__(**{**session.__dict__,
                                                                           "expires": 0.0}))
    ) is None  # fmt: skip
    codec.revoke(session)
    assert codec.decode(cookie) is None
    fresh = codec.issue(Principal("alice", "reviewer"), "fp")
    assert (fresh.sid, fresh.csrf) != (session.sid, session.csrf)


def test_sign_in_attempts_are_limited_per_client() -> None:
    limiter = SignInLimiter(3, max_clients=2)
    assert [limiter.attempt("a", now=t) for t in (0, 1, 2)] == [None, None, None]
    wait = limiter.attempt("a", now=3)
    assert wait is not None
    assert 50 < wait <= 60
    assert limiter.attempt("b", now=3) is None  # other clients are not affected
    assert limiter.attempt("a", now=61) is None  # the window slides
    limiter.attempt("c", now=62)
    assert len(limiter._seen) == 2  # memory stays bounded


# -- settings ---------------------------------------------------------------------------
def test_an_open_console_stays_on_loopback() -> None:
    ConsoleSettings().check()
    with pytest.raises(ConsoleConfigError, match="without tokens"):
        ConsoleSettings(host="0.0.0.0").check()  # noqa: S104 - the bind being refused
    book = TokenBook.from_named([("admin", "bob", BOB)])
    public = ConsoleSettings(host="10.1.2.3", tokens=book, allowed_hosts=("review.example",))
    public.check()
    assert public.secure_cookies
    assert public.hosts() == {"10.1.2.3", "review.example"}
    assert "localhost" in ConsoleSettings().hosts()
    assert not ConsoleSettings().secure_cookies


def test_cli_refuses_a_public_console_without_tokens(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in (REVIEWER_TOKENS_ENV, ADMIN_TOKENS_ENV):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "audit.db"  # never created: the bind is refused first
    code = main(["audit", "serve", "--audit", str(path), "--host", "0.0.0.0"])  # noqa: S104 - refused
    assert code == 2
    err = capsys.readouterr().err
    assert "without tokens" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit):  # tokens are never command-line arguments
        main(["audit", "serve", "--token", ALICE])


# -- filters ----------------------------------------------------------------------------
def _rows() -> list[Row]:
    log = CapturingAuditLog()
    log.append(sample_draft(turn_id="a", time=NOW - timedelta(days=2), rule="weapons",
                            context={"caller": {"lang": "de"}, "vip": True},
                            response_text="I cannot help you build a crossbow."))  # fmt: skip
    log.append(sample_draft(turn_id="b", time=NOW, rule="drugs", mode="shadow",
                            response_text="Sorry, no."))  # fmt: skip
    log.append(sample_draft(turn_id="c", time=NOW, refused=False, response_text="Sure!"))
    return [Row.of(r) for r in log.records]


def _turns(query: ListQuery, rows: list[Row]) -> list[str]:
    where = query.record_filter()
    return [r.record.turn_id for r in rows if query.matches(r, None, where)]


@pytest.mark.parametrize(
    ("params", "turns"),
    [
        ({}, ["a", "b"]),
        ({"outcome": "all"}, ["a", "b", "c"]),
        ({"q": "CROSSBOW build"}, ["a"]),
        ({"q": "crossbow sorry"}, []),
        ({"rule": "drugs"}, ["b"]),
        ({"mode": "enforce"}, ["a"]),
        ({"since": "1d"}, ["b"]),
        ({"context": "caller.lang=de"}, ["a"]),
        ({"context": "vip=true"}, ["a"]),
        ({"context": "vip"}, ["a"]),
        ({"context": "caller.lang=fr"}, []),
        ({"score_min": "0.8", "score_max": "0.9"}, ["a", "b"]),
        ({"score_min": "0.9"}, []),
        ({"label": "unlabelled"}, ["a", "b"]),
        ({"label": "over_refusal"}, []),
        ({"since": "last tuesday"}, []),  # unreadable: matches nothing, says why
    ],
)
def test_list_filters(params: dict[str, str], turns: list[str]) -> None:
    assert _turns(ListQuery.parse(params), _rows()) == turns


def test_filters_report_what_they_cannot_read_and_round_trip() -> None:
    query = ListQuery.parse({"since": "soon", "score_min": "high", "mode": "x", "label": "y",
                             "context": "'unclosed", "page": "-3"})  # fmt: skip
    assert len(query.errors) == 5
    assert query.page == 1
    good = ListQuery.parse({"q": "a b", "rule": "weapons", "page": "2", "outcome": "refused"})
    assert good.params() == "q=a+b&rule=weapons&page=2"
    assert ListQuery.parse(dict(item.split("=") for item in ["rule=weapons"])).rule == "weapons"
    assert good.describe() == "q=a b, rule=weapons"
    assert ListQuery.parse({}).describe() == "(no filters)"


# -- charts -----------------------------------------------------------------------------
def test_axis_ticks_are_round_and_cover_the_data() -> None:
    assert nice_ticks(0) == [0, 1]
    assert nice_ticks(5) == [0, 1, 2, 3, 4, 5]
    assert nice_ticks(37)[-1] >= 37
    assert all(t % 10 == 0 for t in nice_ticks(37))


def test_charts_escape_names_and_label_every_bar() -> None:
    hostile = '<script>alert("x")</script>'
    day = NOW.date()
    svg = str(stacked_days([day], [(hostile, [3]), ("p@1 (shadow)", [1])], title="t"))
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg
    assert f"{day.isoformat()} · p@1 (shadow): 1" in svg
    bars = str(hbars([(hostile, 2), ("drugs", 5)], title="r", unit="refused turns", color="#000"))
    assert "<script>" not in bars
    assert "drugs: 5 refused turns" in bars
    assert "No refused turns" in str(hbars([], title="r", unit="u", color="#000"))


def test_labels_are_the_four_the_issue_names() -> None:
    assert list(LABELS) == ["correct_refusal", "over_refusal", "missed_harm", "unsure"]


def test_console_modules_import_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, sarsteer_guard.console.app; "
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)  # fmt: skip
    assert out.stdout.strip() == "[]"
