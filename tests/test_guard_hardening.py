"""Guard-side hardening from issue #10: each test fails on the code before the fix.

Items: 1 (shadow turns audited by what enforce would have done), 2 (a signing key that
can never work stops the start), 4 (a policy's ``model:`` is enforced), 5 (a reloaded
policy is prewarmed before it is put in force), 6 (missing audit salt named at start),
9 (conversation history bounded in bytes), 23 (no implicit test model), A/E (strings
normalised at the Guard edge, audit writes never lost, spool replayed at start).
"""

from __future__ import annotations

import asyncio
import secrets
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.connect import GuardHandle, GuardOptionsError, build_guard
from sarsteer_guard.errors import GuardError, PolicyError
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import Turn, TurnDecision
from sarsteer_guard.guard.policy_fit import model_names
from sarsteer_guard.models import load_model
from sarsteer_guard.store.errors import SigningKeyError
from sarsteer_guard.testing.audit import CapturingAuditLog
from sarsteer_guard.testing.models import COMPLIANT_TEXT, REFUSAL_TEXT

POLICY = """
name: hardening
version: "1"
model: "{model}"
calibration: {{k: 10, lambda: 1.0}}
defaults: {{alpha: {alpha}, layers: {layers}}}
mode: {mode}
refusal: {{message: null}}
audit: {{record: {record}, keep_audio: false, retention_days: 30{extra_audit}}}
"""


def policy_text(
    *,
    model: str = "*",
    alpha: float = 0.0,
    layers: str = "all",
    mode: str = "enforce",
    record: str = "all",
    extra_audit: str = "",
) -> str:
    return textwrap.dedent(
        POLICY.format(
            model=model,
            alpha=alpha,
            layers=layers,
            mode=mode,
            record=record,
            extra_audit=extra_audit,
        )
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny() -> Any:
    return load_model("tiny")


@pytest.fixture(scope="module")
def planted() -> Any:
    return load_model("tiny-planted")


@pytest.fixture
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


def tone(seconds: float = 0.5, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate), dtype=np.float32) / rate
    return float_to_pcm16((0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


# -- item 23: no implicit (random) test model ---------------------------------------------
def test_guard_without_a_model_is_refused_with_the_argument_named() -> None:
    with pytest.raises(GuardError, match=r"no model given: pass model=") as caught:
        Guard()
    assert "\n" not in str(caught.value)


def test_adapters_without_a_model_are_refused_at_construction() -> None:
    with pytest.raises(GuardOptionsError, match=r"model="):
        GuardHandle.from_options()
    with pytest.raises(GuardOptionsError, match=r"model="):
        build_guard()
    # Naming a model (even the built-in test model) or a server is an explicit choice.
    assert GuardHandle.from_options(model="tiny").owned
    assert type(build_guard(remote_url="ws://127.0.0.1:9/v1/turns")).__name__ == "RemoteGuard"


def test_livekit_model_needs_an_explicit_model() -> None:
    sarsteer = pytest.importorskip("livekit.plugins.sarsteer")
    with pytest.raises(GuardOptionsError, match=r"model="):
        sarsteer.RealtimeModel()
    assert sarsteer.RealtimeModel(model="tiny").model == "tiny"


def test_pipecat_service_needs_an_explicit_model() -> None:
    service_module = pytest.importorskip("pipecat_sarsteer")
    with pytest.raises(GuardOptionsError, match=r"model="):
        service_module.SARSteerGuardService()


# -- item 2: a signing key that can never work stops the start ------------------------------
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, r"needs SARSTEER_VECTOR_KEY.*export SARSTEER_VECTOR_KEY="),
        ("abcd1234", r"is 4 bytes, need 32\+.*set SARSTEER_VECTOR_KEY"),
        ("not a key!!", r"SARSTEER_VECTOR_KEY is neither hex nor base64"),
    ],
)
def test_redis_store_without_a_usable_key_refuses_to_start(
    tiny: Any,
    tmp_path: Path,
    run: Any,
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
    message: str,
) -> None:
    if value is None:
        monkeypatch.delenv("SARSTEER_VECTOR_KEY", raising=False)
    else:
        monkeypatch.setenv("SARSTEER_VECTOR_KEY", value)
    policy = write(tmp_path / "p.yaml", policy_text())
    guard = Guard(tiny, policy, "redis://127.0.0.1:6379/0", CapturingAuditLog(), max_new_tokens=2)
    with pytest.raises(SigningKeyError, match=message) as caught:
        run(guard.start())
    assert "\n" not in str(caught.value)
    assert not guard.ready
    run(guard.close())


def test_directory_store_with_a_malformed_key_refuses_to_start(
    tiny: Any, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", "not-hex-nor-base64!")
    policy = write(tmp_path / "p.yaml", policy_text())
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog())
    with pytest.raises(SigningKeyError, match=r"neither hex nor base64"):
        run(guard.start())
    run(guard.close())
    monkeypatch.setenv("SARSTEER_VECTOR_KEY", secrets.token_hex(32))
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog(), max_new_tokens=2)

    async def go() -> list[Any]:
        async with guard:
            return await collect(guard.respond(Turn(audio=tone())))

    assert isinstance(run(go())[-1], TurnDecision)


# -- item 4: a policy's model: is enforced at start and at reload ---------------------------
def test_policy_for_another_model_is_a_configuration_error_at_start(
    tiny: Any, tmp_path: Path, run: Any
) -> None:
    policy = write(tmp_path / "p.yaml", policy_text(model="Qwen/Qwen2-Audio-*"))
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog())
    with pytest.raises(
        PolicyError, match=r"is for model 'Qwen/Qwen2-Audio-\*' but the loaded"
    ) as e:
        run(guard.start())
    assert "\n" not in str(e.value)
    assert not guard.ready
    run(guard.close())


def test_model_names_match_a_local_copy_laid_out_like_the_hub() -> None:
    assert model_names("tiny") == ("tiny",)
    assert model_names("Qwen/Qwen2-Audio-7B-Instruct") == ("Qwen/Qwen2-Audio-7B-Instruct",)
    assert model_names("/models/Qwen/Qwen2-Audio-7B-Instruct/") == (
        "/models/Qwen/Qwen2-Audio-7B-Instruct/",
        "Qwen/Qwen2-Audio-7B-Instruct",
    )


def reloaded(guard: Guard, path: Path, text: str) -> bool:
    watcher = guard.policy_watcher
    assert watcher is not None
    write(path, text)
    return watcher.check_now(settle=False)


@pytest.fixture
def watched(tiny: Any, tmp_path: Path, run: Any) -> Iterator[tuple[Guard, Path]]:
    path = write(tmp_path / "watched.yaml", policy_text())
    guard = Guard(tiny, path, str(tmp_path / "store"), CapturingAuditLog(), max_new_tokens=2)
    run(guard.start())
    yield guard, path
    run(guard.close())


def test_reload_for_another_model_is_refused_and_the_last_good_kept(
    watched: tuple[Guard, Path], run: Any
) -> None:
    guard, path = watched
    before = guard.policy.content_hash
    with capture_logs() as logs:
        assert not reloaded(guard, path, policy_text(model="mistralai/Voxtral-*"))
    assert guard.policy.content_hash == before
    watcher = guard.policy_watcher
    assert watcher is not None
    assert watcher.last_error is not None
    assert "is for model 'mistralai/Voxtral-*'" in watcher.last_error
    [rejected] = [e for e in logs if e["event"] == "policy.rejected"]
    assert "is for model" in rejected["error"]
    # A fitting edit still goes through.
    assert reloaded(guard, path, policy_text(model="tin*", record="refused"))
    assert guard.policy.model == "tin*"


# -- item 5: a reload impossible on the loaded model is prewarmed and refused ---------------
def test_reload_with_layers_the_model_lacks_is_refused_before_the_swap(
    watched: tuple[Guard, Path], run: Any
) -> None:
    guard, path = watched
    before = guard.policy.content_hash
    assert guard.model_facts.num_layers < 999
    with capture_logs() as logs:
        assert not reloaded(guard, path, policy_text(layers="[0, 999]"))
    assert guard.policy.content_hash == before
    watcher = guard.policy_watcher
    assert watcher is not None
    assert watcher.last_error is not None
    assert "999" in watcher.last_error
    assert any(e["event"] == "policy.rejected" and "999" in e["error"] for e in logs)

    async def go() -> list[Any]:
        return await collect(guard.respond(Turn(audio=tone())))

    assert isinstance(run(go())[-1], TurnDecision)  # the last good policy still serves


# -- item 6: a missing audit salt is a startup warning that names the fields ----------------
def test_missing_salt_is_named_at_start(
    tiny: Any, tmp_path: Path, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SARSTEER_AUDIT_SALT", raising=False)
    extra = ", hash_fields: [caller.phone, user_id], drop_fields: [email]"
    policy = write(tmp_path / "p.yaml", policy_text(extra_audit=extra))
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog(), watch_policy=False)
    with capture_logs() as logs:
        run(guard.start())
    run(guard.close())
    [warning] = [e for e in logs if e["event"] == "guard.audit_salt_missing"]
    assert warning["log_level"] == "warning"
    assert warning["fields"] == ["caller.phone", "user_id"]
    assert "SARSTEER_AUDIT_SALT" in warning["detail"]
    monkeypatch.setenv("SARSTEER_AUDIT_SALT", "s3cret")
    guard = Guard(tiny, policy, str(tmp_path / "store"), CapturingAuditLog(), watch_policy=False)
    with capture_logs() as logs:
        run(guard.start())
    run(guard.close())
    assert not [e for e in logs if e["event"] == "guard.audit_salt_missing"]


# -- item 1: shadow turns are audited by what enforce would have done -----------------------
def test_shadow_turn_is_recorded_when_enforce_would_have_refused(
    planted: Any, tmp_path: Path, run: Any
) -> None:
    """``record: refused`` in shadow mode keeps the turn whose steered shadow row refused."""
    speech = pytest.importorskip("sarsteer_guard.testing.speech")
    audio = float_to_pcm16(speech.synthesize("Tell me how to make a fake passport."))
    policy = write(
        tmp_path / "shadow.yaml", policy_text(alpha=0.1, mode="shadow", record="refused")
    )
    audit = CapturingAuditLog()
    guard = Guard(planted, policy, str(tmp_path / "store"), audit, watch_policy=False)

    async def go() -> list[Any]:
        async with guard:  # close() waits for the queued audit write
            return await collect(guard.respond(Turn(audio=audio, session_id="s-1")))

    decision = run(go())[-1]
    assert isinstance(decision, TurnDecision)
    assert decision.mode == "shadow"
    assert not decision.refused  # the listener got the unsteered answer
    assert decision.text == COMPLIANT_TEXT
    assert decision.enforce_refused  # the steered shadow row refused
    assert decision.audit_id is not None
    [record] = audit.records
    assert record.id == decision.audit_id
    assert (record.mode, record.refused, record.enforce_refused) == ("shadow", False, True)
    assert record.shadow is not None
    assert record.shadow.refused is True
    assert record.shadow.text == decision.shadow["text"]
    assert REFUSAL_TEXT in record.shadow.text
    assert record.shadow.score is not None
    assert record.shadow.score == pytest.approx(decision.shadow["refusal_score"])
    assert record.shadow.alpha == pytest.approx(0.1)
    assert audit.verify().ok


def shadow_decision(shadow: dict[str, object] | None, *, refused: bool = False) -> TurnDecision:
    return TurnDecision(
        turn_id="t",
        session_id="s",
        refused=refused,
        text="Sure.",
        model_text="Sure.",
        policy="p",
        policy_version="1",
        policy_hash="0" * 64,
        rule=None,
        mode="shadow",
        alpha=0.1,
        steered=False,
        shadow=shadow,
    )


@pytest.mark.parametrize(
    ("shadow", "recorded"),
    [
        ({"steered": True, "refused": True, "text": "No.", "refusal_score": 0.9}, True),
        ({"steered": True, "refused": False, "text": "Sure."}, False),
        ({"steered": True, "error": "CUDA out of memory"}, True),  # unknown: keep it
        ({"steered": False, "reason": "alpha is 0 or vectors unavailable"}, False),
    ],
)
def test_record_refused_follows_the_shadow_verdict(
    shadow: dict[str, object], recorded: bool, tiny: Any
) -> None:
    from sarsteer_guard.guard.auditing import AuditWriter
    from sarsteer_guard.policy import policy_from_bytes

    text = policy_text(mode="shadow", record="refused")
    decision = policy_from_bytes(text.encode(), source="<test>").evaluate({})
    audit = CapturingAuditLog()
    writer = AuditWriter(audit, tiny.facts)
    writer.start()
    audio = np.zeros(1600, dtype=np.float32)
    record_id = writer.submit(Turn(audio=b""), decision, audio, shadow_decision(shadow))
    writer.close()
    assert (record_id is not None) == recorded
    assert len(audit.records) == int(recorded)
    if recorded:
        stored = audit.records[0].shadow
        assert stored is not None
        assert stored.refused is shadow.get("refused")
        assert stored.error == shadow.get("error")


# -- item A: the Guard edge validates ids and repairs context text --------------------------
def test_lone_surrogates_at_the_edge(tiny: Any, tmp_path: Path, run: Any) -> None:
    policy = write(tmp_path / "p.yaml", policy_text())
    audit = CapturingAuditLog()
    guard = Guard(tiny, policy, str(tmp_path / "store"), audit, max_new_tokens=2)
    bad_context = {"x": "a\ud800b", "caller\udfff": "ok", "age": 9}

    async def go() -> tuple[list[Any], list[Any], list[Any]]:
        async with guard:
            good = await collect(guard.respond(Turn(audio=tone(), context=bad_context)))
            bad_session = await collect(guard.respond(Turn(audio=tone(), session_id="s\ud800")))
            nan = await collect(guard.respond(Turn(audio=tone(), context={"age": float("nan")})))
            return good, bad_session, nan

    good, bad_session, nan = run(go())
    decision = good[-1]
    assert isinstance(decision, TurnDecision)
    assert "normalised" in decision.flags
    [record] = audit.records  # written although its context held lone surrogates
    assert record.id == decision.audit_id
    assert record.context == {"x": "a\ufffdb", "caller\ufffd": "ok", "age": 9}
    assert "normalised" in record.flags
    assert audit.verify().ok
    [error] = bad_session
    assert (error.type, error.kind) == ("error", "bad_request")
    assert "session_id is not valid Unicode" in error.message
    assert "\n" not in error.message
    [error] = nan
    assert (error.kind, error.message) == (
        "bad_request",
        "context value 'age' is nan: send a finite number",
    )


# -- item A: an audit write that fails is retried, never dropped ----------------------------
class FlakyAuditLog(CapturingAuditLog):
    """Refuses the first ``failures`` appends, like a full spool or a log without one."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def append(self, draft: Any) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise GuardError("audit backend refused the write")
        return super().append(draft)


def test_a_refused_audit_write_is_retried_in_order(tiny: Any) -> None:
    from sarsteer_guard.guard.auditing import AuditWriter
    from sarsteer_guard.policy import policy_from_bytes

    decision = policy_from_bytes(policy_text().encode(), source="<test>").evaluate({})
    audit = FlakyAuditLog(failures=3)
    writer = AuditWriter(audit, tiny.facts, workers=1, retry_interval_s=0.05)
    writer.start()
    audio = np.zeros(1600, dtype=np.float32)
    ids = [
        writer.submit(Turn(audio=b"", turn_id=f"t{i}"), decision, audio, shadow_decision(None))
        for i in range(3)
    ]
    assert all(ids)
    writer.close()
    assert [r.id for r in audit.records] == ids  # all written, in the order handed out
    assert writer.pending == 0
    assert audit.verify().ok


def test_a_draft_that_cannot_be_built_is_written_reduced(
    tiny: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sarsteer_guard.guard import auditing
    from sarsteer_guard.policy import policy_from_bytes

    def broken(**_: Any) -> Any:
        raise RuntimeError("soundfile exploded")

    monkeypatch.setattr(auditing, "build_audit_draft", broken)
    decision = policy_from_bytes(policy_text().encode(), source="<test>").evaluate({})
    audit = CapturingAuditLog()
    writer = auditing.AuditWriter(audit, tiny.facts)
    writer.start()
    audio = np.zeros(1600, dtype=np.float32)
    record_id = writer.submit(Turn(audio=b""), decision, audio, shadow_decision(None))
    writer.close()
    [record] = audit.records
    assert record.id == record_id
    assert "audit_degraded" in record.flags
    assert record.context == {}


# -- item E: the Guard replays a crashed process's spool at start ---------------------------
def test_guard_start_replays_the_audit_spool(tiny: Any, tmp_path: Path, run: Any) -> None:
    from sarsteer_guard.audit import RedisAuditLog, SpooledAuditLog, SqliteAuditLog
    from sarsteer_guard.testing.audit import sample_draft

    spool = tmp_path / "spool"
    down = RedisAuditLog.from_url("redis://127.0.0.1:9/0")  # nothing listens there
    crashed = SpooledAuditLog(down, spool, flush_interval_s=None)
    assert crashed.append(sample_draft(turn_id="left-behind")) is None
    crashed.close()

    db = tmp_path / "audit.db"
    audit = SpooledAuditLog(SqliteAuditLog(db), spool, flush_interval_s=None)
    policy = write(tmp_path / "p.yaml", policy_text())
    guard = Guard(tiny, policy, str(tmp_path / "store"), audit, watch_policy=False)
    run(guard.start())
    try:
        with SqliteAuditLog(db, create=False) as reader:
            assert [r.turn_id for r in reader.iter()] == ["left-behind"]  # before any turn
        assert audit.pending() == 0
    finally:
        run(guard.close())


# -- item 9: conversation history is bounded in bytes -------------------------------------
def test_history_of_fresh_sessions_stays_within_the_byte_budget() -> None:
    from sarsteer_guard.guard.conversation import ConversationStore

    clip = np.zeros(16000, dtype=np.float32)  # 1 s: 64,000 bytes
    store = ConversationStore(max_bytes=1024 * 1024, max_session_bytes=256 * 1024)
    for i in range(200):  # a client that opens a fresh session per turn
        store.append(f"s{i}", clip, 16000, "reply")
        assert store.bytes <= store.max_bytes
    assert 0 < len(store) <= 1024 * 1024 // 64000
    assert store.history("s199") != []  # the most recent survive
    assert store.history("s0") == []  # least recently used went first
    for _ in range(10):  # one long call: its oldest exchanges go, within its own limit
        store.append("call", clip, 16000, "reply")
    per_exchange = clip.nbytes + 4 * len("reply")
    assert len(store.history("call")) == 2 * (256 * 1024 // per_exchange)
    store.forget("call")
    assert store.bytes == sum(
        clip.nbytes + 4 * len("reply") for s in range(200) if store.history(f"s{s}")
    )
    huge = np.zeros(16000 * 10, dtype=np.float32)  # 640,000 bytes: over the session limit
    store.append("huge", huge, 16000, "reply")
    assert store.history("huge") == []
    assert store.bytes <= store.max_bytes


def test_guard_history_with_a_fresh_session_per_turn_stays_within_budget(
    tiny: Any, tmp_path: Path, run: Any
) -> None:
    policy = write(tmp_path / "p.yaml", policy_text())
    budget = 3 * (16000 * 4) + 1024  # three one-second turns of float32 audio
    guard = Guard(
        tiny,
        policy,
        str(tmp_path / "store"),
        CapturingAuditLog(),
        max_new_tokens=1,
        history_total_bytes=budget,
        watch_policy=False,
    )

    async def go() -> None:
        async with guard:
            for i in range(8):
                await collect(guard.respond(Turn(audio=tone(1.0), session_id=f"fresh-{i}")))
                assert guard.conversations.bytes <= budget

    run(go())
    assert 0 < len(guard.conversations) <= 3
