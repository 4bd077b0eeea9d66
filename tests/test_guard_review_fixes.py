"""Review of recent merges: audit retry, one degraded builder, one "no model" message,
resources closed on a failed start, a RemoteGuard without a URL (items 6, 8, 9, 12)."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from sarsteer_guard.errors import MODEL_REQUIRED, GuardError, GuardOptionsError
from sarsteer_guard.guard.events import Turn, TurnDecision
from sarsteer_guard.models import load_model
from sarsteer_guard.testing.audit import CapturingAuditLog

POLICY = b"""
name: review
version: "1"
model: "*"
calibration: {k: 10, lambda: 1.0}
defaults: {alpha: 0.0, layers: all}
mode: enforce
refusal: {message: null}
audit: {record: all, keep_audio: false, retention_days: 30}
"""


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_model("tiny")


def decision_event(**changes: Any) -> TurnDecision:
    fields: dict[str, Any] = {
        "turn_id": "t",
        "session_id": "s",
        "refused": False,
        "text": "Sure.",
        "model_text": "Sure.",
        "policy": "p",
        "policy_version": "1",
        "policy_hash": "0" * 64,
        "rule": None,
        "mode": "enforce",
        "alpha": 0.1,
        "steered": True,
        "vector_set_id": "vs-123",
    }
    return TurnDecision(**{**fields, **changes})


class RefusingAuditLog(CapturingAuditLog):
    """Refuses every append until ``accept`` is set; counts the attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.accept = False
        self.attempts = 0

    def append(self, draft: Any) -> Any:
        self.attempts += 1
        if not self.accept:
            raise GuardError("audit backend refused the write")
        return super().append(draft)


def test_while_the_retry_thread_runs_new_records_are_only_queued(tiny: Any) -> None:
    from sarsteer_guard.guard.auditing import AuditWriter
    from sarsteer_guard.policy import policy_from_bytes

    decision = policy_from_bytes(POLICY, source="<test>").evaluate({})
    audit = RefusingAuditLog()
    writer = AuditWriter(audit, tiny.facts, workers=1, retry_interval_s=60.0)
    writer.start()
    audio = np.zeros(1600, dtype=np.float32)
    ids = [
        writer.submit(Turn(audio=b"", turn_id=f"t{i}"), decision, audio, decision_event())
        for i in range(5)
    ]
    deadline = time.monotonic() + 10
    while writer.pending < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert writer.pending == 5
    assert audit.attempts == 1  # was 1 + 2 + 3 + 4 + 5: the backlog retried per record
    audit.accept = True
    writer.close()
    assert [r.id for r in audit.records] == ids


def test_the_degraded_record_comes_from_the_one_builder(tiny: Any) -> None:
    from sarsteer_guard.guard.auditing import build_audit_draft
    from sarsteer_guard.policy import policy_from_bytes

    decision = policy_from_bytes(POLICY, source="<test>").evaluate({})
    common: dict[str, Any] = {
        "turn": Turn(audio=b"", context={"caller": "x"}),
        "decision": decision,
        "event": decision_event(),
        "audio": np.zeros(1600, dtype=np.float32),
        "sample_rate": 16000,
        "model_id": tiny.facts.model_id,
        "model_fingerprint": tiny.facts.fingerprint,
    }
    full = build_audit_draft(**common)
    degraded = build_audit_draft(**common, degraded=True)
    assert degraded.vector_set_id == full.vector_set_id == "vs-123"  # the old copy lost it
    assert "audit_degraded" in degraded.flags
    assert degraded.context == {}
    assert full.context == {"caller": "x"}


def test_one_no_model_message_everywhere() -> None:
    from sarsteer_guard.cli._common import require_model
    from sarsteer_guard.connect import build_guard
    from sarsteer_guard.guard.core import Guard

    with pytest.raises(GuardError) as in_process:
        Guard()
    with pytest.raises(GuardOptionsError) as adapter:
        build_guard()
    with pytest.raises(GuardError) as cli:
        require_model(None, "serve")
    assert str(in_process.value) == str(adapter.value) == MODEL_REQUIRED
    assert str(cli.value).startswith("serve needs --model")
    assert MODEL_REQUIRED.split(":")[0] in str(cli.value)


class ClosingStore:
    def __init__(self) -> None:
        self.close_calls = 0

    def close(self) -> None:
        self.close_calls += 1


class AuditThatWillNotOpen(CapturingAuditLog):
    def __init__(self) -> None:
        super().__init__()
        self.close_calls = 0

    def open(self) -> None:
        raise GuardError("audit log unreachable and no spool")

    def close(self) -> None:
        self.close_calls += 1


def test_a_failed_start_closes_what_it_opened(tiny: Any) -> None:
    from sarsteer_guard.guard.resources import open_resources

    store, audit = ClosingStore(), AuditThatWillNotOpen()
    with pytest.raises(GuardError, match="unreachable"):
        open_resources(
            SimpleNamespace(facts=tiny.facts),
            store=store,  # type: ignore[arg-type]
            audit=audit,
            vectors=None,
            calibration_batch_size=1,
            progress=False,
        )
    assert (store.close_calls, audit.close_calls) == (1, 1)


@pytest.mark.parametrize("url", ["", " , ", []])
def test_remote_guard_without_a_url_is_a_configuration_error(url: Any) -> None:
    from sarsteer_guard.remote import RemoteGuard

    with pytest.raises(GuardOptionsError, match="needs a guard URL"):
        RemoteGuard(url)


# -- items 5 and 7: one rule for context None and one set of text rules --------------------
def _tone() -> bytes:
    from sarsteer_guard.audio.pcm import float_to_pcm16

    t = np.arange(8000, dtype=np.float32) / 16000
    return float_to_pcm16((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


@pytest.mark.parametrize(
    ("turn", "says"),
    [
        (Turn(audio=b"", context={"tier": None}), "is null: leave the key out"),  # type: ignore[dict-item]
        (Turn(audio=b"", session_id="call\n2"), "session_id holds control characters"),
        (Turn(audio=b"", session_id="s\ud800"), "session_id is not valid Unicode"),
        (Turn(audio=b"", context={"note": "a\x00b"}), "holds control characters"),
    ],
)
def test_in_process_and_remote_refuse_the_same_turns_alike(
    tiny: Any, tmp_path: Any, turn: Turn, says: str
) -> None:
    import asyncio
    import dataclasses

    from sarsteer_guard.guard.core import Guard
    from sarsteer_guard.remote import RemoteGuard

    turn = dataclasses.replace(turn, audio=_tone())
    policy = tmp_path / "p.yaml"
    policy.write_bytes(POLICY)
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog(), watch_policy=False)

    async def go() -> tuple[Any, Any]:
        async with guard:
            local = [e async for e in guard.respond(turn)]
        remote = RemoteGuard("ws://127.0.0.1:9/v1/turns", max_retries=0)  # refused before I/O
        sent = [e async for e in remote.respond(turn)]
        return local, sent

    [local], [sent] = asyncio.run(go())
    assert (local.kind, sent.kind) == ("bad_request", "bad_request")
    assert local.message == sent.message
    assert says in local.message


def test_edge_text_follows_the_protocol_rules() -> None:
    from sarsteer_guard import text_rules
    from sarsteer_guard.guard.edge import checked_turn
    from sarsteer_guard.server import validation

    assert validation.clean_text is text_rules.clean_text  # still importable from there
    fixed, changed = checked_turn(Turn(audio=b"", context={"name": "Jose\u0301", "n": 1}))
    assert changed
    assert dict(fixed.context) == {"name": validation.clean_text("Jose\u0301"), "n": 1}
    assert dict(fixed.context)["name"] == "Jos\u00e9"  # NFC, as the server stores it
    repaired, changed = checked_turn(Turn(audio=b"", context={"x": "a\ud800b"}))
    assert changed
    assert dict(repaired.context) == {"x": "a\ufffdb"}  # text is repaired, ids never
