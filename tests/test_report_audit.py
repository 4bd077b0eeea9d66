"""Audit report: counts, escaping, embedded charts, chain status and the CLI subcommand."""

from __future__ import annotations

import base64
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sarsteer_guard.audit import open_audit_log
from sarsteer_guard.audit.record import AuditRecord
from sarsteer_guard.cli import main
from sarsteer_guard.report.audit_report import (
    audit_summary,
    render_audit_html,
    render_audit_report,
)
from sarsteer_guard.testing.audit import CapturingAuditLog, sample_draft

T0 = datetime(2026, 5, 1, 9, 0, tzinfo=UTC)
HOSTILE = "<script>alert('pwned')</script> & \"quotes\""

#: (policy, version, rule, mode, refused, day offset, alpha, flags)
ROWS: list[tuple[str, str, str | None, str, bool, int, float, tuple[str, ...]]] = [
    ("default", "1", "weapons", "enforce", True, 0, 0.1, ()),
    ("default", "1", "weapons", "enforce", True, 0, 0.1, ("fail_open",)),
    ("default", "1", "drugs", "enforce", True, 2, 0.1, ()),
    ("default", "1", None, "enforce", False, 2, 0.1, ()),
    ("kids", "3", "strict-all", "enforce", True, 1, 0.2, ()),
    ("kids", "3", "strict-all", "enforce", True, 2, 0.2, ("fail_closed",)),
    ("bank", "2", "fraud", "shadow", True, 3, 0.05, ()),
    ("bank", "2", "fraud", "shadow", False, 3, 0.05, ()),
]


def drafts() -> list[Any]:
    out = []
    for i, (name, version, rule, mode, refused, day, alpha, flags) in enumerate(ROWS):
        out.append(
            sample_draft(
                turn_id=f"turn-{i}",
                session_id=f"call-{i}",
                policy_name=name,
                policy_version=version,
                rule=rule,
                mode=mode,
                refused=refused,
                time=T0 + timedelta(days=day, minutes=i),
                alpha=alpha,
                flags=flags,
                served_text=HOSTILE if i == 5 else f"I cannot assist with that ({i}).",
            )
        )
    return out


@pytest.fixture
def records() -> list[AuditRecord]:
    log = CapturingAuditLog()
    for draft in drafts():
        log.append(draft)
    return log.records


def card(page: str, label: str) -> int:
    match = re.search(r"<b>(\d+)</b>" + re.escape(label) + "<", page)
    assert match, label
    return int(match.group(1))


def png_images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_summary_counts(records: list[AuditRecord]) -> None:
    s = audit_summary(records, recent=3)
    assert (s.turns, s.refused, s.shadow_refused) == (8, 5, 1)
    assert {k: (c.turns, c.refused, c.shadow_refused) for k, c in s.by_policy.items()} == {
        "default@1": (4, 3, 0),
        "kids@3": (2, 2, 0),
        "bank@2": (2, 0, 1),
    }
    assert dict(s.by_rule) == {"weapons": 2, "drugs": 1, "strict-all": 2, "fraud": 1}
    assert {k: (c.turns, c.refused, c.shadow_refused) for k, c in s.by_mode.items()} == {
        "enforce": (6, 5, 0),
        "shadow": (2, 0, 1),
    }
    assert (s.flags["fail_open"], s.flags["fail_closed"]) == (1, 1)
    day = T0.date()
    assert s.per_day[day] == {"default@1": 2}
    assert s.per_day[day + timedelta(days=2)] == {"default@1": 1, "kids@3": 1}
    assert s.per_day[day + timedelta(days=3)] == {"bank@2 (shadow)": 1}
    assert sorted(s.alphas) == sorted((r[6], r[4]) for r in ROWS)
    # newest refused first, by time: shadow bank (day 3), then kids and default (day 2)
    assert [r.turn_id for r in s.recent] == ["turn-6", "turn-5", "turn-2"]


def test_recent_uses_record_time_not_chain_order() -> None:
    log = CapturingAuditLog()
    log.append(sample_draft(turn_id="late", time=T0 + timedelta(hours=2)))
    log.append(sample_draft(turn_id="spooled", time=T0))  # chained later, happened earlier
    assert [r.turn_id for r in audit_summary(log.records, recent=1).recent] == ["late"]


def test_html_counts_escaping_and_images(records: list[AuditRecord], tmp_path: Path) -> None:
    log = CapturingAuditLog()
    for draft in drafts():
        log.append(draft)
    out = render_audit_report(
        log.records, tmp_path / "r" / "report.html", title="Q2 <review>", verify=log.verify()
    )
    page = out.read_text(encoding="utf-8")
    assert card(page, "audited turns") == 8
    assert card(page, "refused (enforced)") == 5
    assert card(page, "refused in shadow mode (answered)") == 1
    assert card(page, "fail_open turns") == 1
    assert card(page, "fail_closed turns") == 1
    assert "chain intact: 8 records" in page
    assert "<td class=nw>kids@3</td><td class=n>2</td><td class=n>2</td>" in page
    # hostile text is escaped everywhere it appears, and scripts are forbidden anyway
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert "Q2 &lt;review&gt;" in page
    assert "default-src 'none'" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing external
    images = png_images(page)
    assert len(images) == 3  # per day, by rule, alpha
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") and len(img) > 5_000 for img in images)


def test_broken_chain_is_shown(tmp_path: Path) -> None:
    log = CapturingAuditLog()
    for draft in drafts():
        log.append(draft)
    log.stored[2] = log.stored[2].replace('"alpha": 0.1', '"alpha": 0.0')
    assert '"alpha": 0.0' in log.stored[2]
    page = render_audit_html(audit_summary(log.records), verify=log.verify())
    assert "BROKEN" in page
    assert "record edited at seq 3" in page


def test_empty_and_odd_labels(tmp_path: Path) -> None:
    page = render_audit_html(audit_summary([]))
    assert "No audit records match" in page
    assert png_images(page) == []
    assert "not checked" in page
    # '$' would start matplotlib mathtext; answered-only turns draw just the alpha chart
    log = CapturingAuditLog()
    log.append(sample_draft(policy_name="$x^$", rule="$$", refused=False))
    page = render_audit_html(audit_summary(log.records))
    assert len(png_images(page)) == 1
    assert "No refused turns in this period." in page


@pytest.fixture
def store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_audit_log(url) as log:
        for draft in drafts():
            log.append(draft)
    return url


def test_cli_audit_report(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    code = main(["audit", "report", "--store", store, "--out", str(out), "--policy", "kids"])
    assert code == 0
    assert f"wrote {out}: 2 turns, 2 refused; chain intact: 8 records" in capsys.readouterr().err
    page = out.read_text(encoding="utf-8")
    assert card(page, "audited turns") == 2
    assert "policy kids" in page
    assert len(png_images(page)) == 3

    since = (T0 + timedelta(days=2)).date().isoformat()
    until = (T0 + timedelta(days=3)).date().isoformat()
    args = ["audit", "report", "--store", store, "--out", str(out), "--since", since]
    assert main([*args, "--until", until, "--no-verify"]) == 0
    page = out.read_text(encoding="utf-8")
    assert card(page, "audited turns") == 3
    assert card(page, "refused (enforced)") == 2
    assert "not checked" in page
    assert "since 2026-05-03 00:00:00 UTC, until 2026-05-04 00:00:00 UTC" in page


def test_cli_audit_report_without_matplotlib(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    out = tmp_path / "report.html"
    assert main(["audit", "report", "--audit", store, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sarsteer-guard: error: pictures need matplotlib; run: "
                   "pip install 'sarsteer-guard[plots]'"]  # fmt: skip
    assert not out.exists()


def test_cli_audit_report_unwritable_out(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["audit", "report", "--store", store, "--out", str(blocker / "r.html")]) == 2
    assert "choose another --out" in capsys.readouterr().err
