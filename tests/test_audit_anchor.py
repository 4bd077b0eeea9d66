"""An externally kept head hash catches a rewritten tail that the chain alone cannot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sarsteer_guard.audit import open_audit_log
from sarsteer_guard.cli import main
from sarsteer_guard.testing.audit import sample_draft


def test_verify_prints_the_head_and_checks_an_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_audit_log(url) as log:
        for i in range(3):
            log.append(sample_draft(turn_id=f"t{i}"))
    assert main(["audit", "verify", "--store", url]) == 0
    out = capsys.readouterr().out
    match = re.search(r"head: (\d+:[0-9a-f]{64})", out)
    assert match is not None
    anchor = match.group(1)
    assert main(["audit", "verify", "--store", url, "--anchor", anchor]) == 0
    assert "anchor ok" in capsys.readouterr().out

    # Rewrite the whole log from scratch: a valid chain, but not the one that was anchored.
    db = tmp_path / "audit.db"
    db.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with open_audit_log(url) as log:
        for i in range(3):
            log.append(sample_draft(turn_id=f"forged{i}"))
    assert main(["audit", "verify", "--store", url, "--anchor", anchor]) == 1
    assert "anchor broken" in capsys.readouterr().err


def test_a_malformed_anchor_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    with open_audit_log(url) as log:
        log.append(sample_draft())
    assert main(["audit", "verify", "--store", url, "--anchor", "nope"]) == 2
    assert "SEQ:HASH" in capsys.readouterr().err
