"""The review console on a log written by the real Guard (issue #15's "done when").

The built-in ``tiny-planted`` model answers two shipped spoken clips under a policy
that keeps audio; steering refuses both (the planted model cannot tell harmful from
benign speech, so the benign refusal is an over-refusal for the reviewer to catch).
A reviewer then finds both turns in the console, plays the kept audio, checks it
against the record's hash and labels the benign one.
"""

from __future__ import annotations

import asyncio
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from sarsteer_guard.audio import load_audio
from sarsteer_guard.audit import ReviewLog, SqliteAuditLog
from sarsteer_guard.audit.audio import audio_matches_record
from sarsteer_guard.console.auth import TokenBook
from sarsteer_guard.console.settings import ConsoleSettings
from sarsteer_guard.defaults import DEFAULT_BENIGN, DEFAULT_HARMFUL
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import Turn, TurnDecision
from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.testing.console import console_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.slow

POLICY = """
name: console-e2e
version: "3"
model: "*"
calibration: {k: 10, lambda: 1.0}
defaults: {preset: balanced}
failure_mode: fail_closed
audit: {record: refused, keep_audio: true, audio_retention_days: 7}
"""
TOKEN = "reviewer-" + "k" * 24


async def _answer(guard: Guard) -> dict[str, TurnDecision]:
    clips = {
        "harmful": load_manifest(DEFAULT_HARMFUL).items[0],
        "benign": load_manifest(DEFAULT_BENIGN).items[0],
    }
    out: dict[str, TurnDecision] = {}
    async with guard:
        for kind, item in clips.items():
            assert item.audio is not None
            turn = Turn(
                audio=load_audio(item.audio, target_rate=16000),
                sample_format="float32",
                session_id=f"e2e-{kind}",
                context={"channel": "phone", "clip": item.id},
                history=[],
            )
            async for event in guard.respond(turn):
                if isinstance(event, TurnDecision):
                    out[kind] = event
    return out  # leaving the block waits for the audit writes


def test_the_console_reviews_turns_the_guard_refused(
    context: BrowserContext, tmp_path: Path, screenshot: Any
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    audit = tmp_path / "audit.db"
    # Default embedded vector store: tiny-planted calibrates once per machine.
    guard = Guard("tiny-planted", policy, None, f"sqlite:///{audit}", max_new_tokens=24)
    # Playwright's sync API runs an event loop in this thread: answer in another one.
    with ThreadPoolExecutor(1) as pool:
        decisions = pool.submit(asyncio.run, _answer(guard)).result(timeout=600)
    assert all(d.refused for d in decisions.values()), {k: d.text for k, d in decisions.items()}
    ids = {kind: d.audit_id for kind, d in decisions.items()}
    with SqliteAuditLog(audit, create=False) as log:
        for record_id in ids.values():
            assert record_id is not None
            record = log.get(record_id)
            audio = log.get_audio(record_id)
            assert record is not None
            assert audio is not None
            assert record.audio is None  # kept beside the chain, not in it
            assert audio_matches_record(audio, record)  # the Guard's FLAC is the hashed PCM
            assert audio.expires is not None
            assert audio.expires <= record.time + timedelta(days=30)

    settings = ConsoleSettings(
        audit_url=f"sqlite:///{audit}",
        tokens=TokenBook.from_named([("reviewer", "carol", TOKEN)]),
    )
    with console_in_thread(settings) as console:
        page = context.new_page()
        page.goto(console.url + "/")
        page.fill("#token", TOKEN)
        page.click("form[action='/signin'] button[type=submit]")
        assert page.inner_text("#total") == "2"
        assert set(page.locator("table.turns td:nth-child(2)").all_inner_texts()) == {
            "console-e2e@3"
        }
        screenshot(page, "guard-01-list")
        page.fill("#session", "e2e-benign")
        page.click("form.filters button[type=submit]")
        page.click("table.turns tbody tr a")
        assert urlsplit(page.url).path == f"/records/{ids['benign']}"
        assert page.get_attribute("#chain-verdict", "data-ok") == "true"
        assert "samples match the record's hashed audio_sha256" in page.inner_text("main")
        page.wait_for_function(
            "() => { const a = document.querySelector('#turn-audio');"
            " return a && a.readyState >= 1 && a.duration > 0; }"
        )
        assert page.evaluate("document.querySelector('#turn-audio').duration") > 0.5
        page.evaluate("document.querySelector('#turn-audio').play()")
        page.wait_for_function("() => document.querySelector('#turn-audio').currentTime > 0")
        page.check("input[name=label][value=over_refusal]")
        page.fill("#note", "Asked about the weather; the planted model refuses everything.")
        page.click("form.labelform button[type=submit]")
        assert "over-refusal" in page.inner_text("table.history")
        screenshot(page, "guard-02-detail-labelled")
        page.goto(console.url + "/dashboard")
        assert page.inner_text("#card-over") == "100%"
        screenshot(page, "guard-03-dashboard")
    with SqliteAuditLog(audit, create=False) as log:
        review = ReviewLog.beside(log)
        labels = list(review.labels())
        review.close()
        assert log.verify().ok
    assert [(x.record_id, x.label, x.reviewer) for x in labels] == [
        (ids["benign"], "over_refusal", "carol")
    ]
