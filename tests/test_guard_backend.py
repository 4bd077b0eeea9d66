"""The generation-backend seam: a scripted backend drives the Guard's whole turn pipeline.

The fake engine below knows nothing of transformers: it reports model facts, answers
captures with constructed states (so the Guard calibrates through the seam) and streams
scripted replies. Everything the Guard does on top (policy, vectors, gate, shadow rows,
decisions, audit, history) must work against it unchanged.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

from sarsteer_guard.audio.pcm import float_to_pcm16
from sarsteer_guard.backends import backend_names, open_backend, register_backend
from sarsteer_guard.defaults import DEFAULT_HARMFUL, DEFAULT_PROMPT, DEFAULT_REFUSAL_INSTRUCTION
from sarsteer_guard.errors import GuardError, OverloadedError
from sarsteer_guard.guard.backend import (
    GenerationBackend,
    RowDelta,
    RowDone,
    RowFailed,
    RowRequest,
    RowStream,
)
from sarsteer_guard.guard.core import Guard
from sarsteer_guard.guard.events import TextDelta, Turn, TurnDecision, TurnError
from sarsteer_guard.manifest import load_manifest
from sarsteer_guard.models.base import Message, ModelFacts
from sarsteer_guard.testing.audit import CapturingAuditLog

T = TypeVar("T")
ANSWER = "Sure, here are the steps you asked for."
REFUSAL = "I cannot assist with that request."
LAYERS, HIDDEN = 4, 8


class FakeBackend:
    """A scripted engine: steered rows refuse, others answer; captures are constructed."""

    name = "fake"

    def __init__(self, model: object = None, **options: Any) -> None:
        self.model_spec = model
        self.options = options
        self.loaded = False
        self._running = False
        self.rows: list[RowRequest] = []
        self.streams: list[RowStream] = []
        self.captured: list[Sequence[Message]] = []
        self.fail_rows = False
        self.overloaded = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def facts(self) -> ModelFacts:
        if not self.loaded:
            raise GuardError("not loaded")
        return ModelFacts(
            model_id="fake-lm",
            fingerprint="fa" * 32,
            num_layers=LAYERS,
            hidden_size=HIDDEN,
            sampling_rate=16000,
        )

    @property
    def running(self) -> bool:
        return self._running

    @property
    def queue_depth(self) -> int:
        return 0

    def load(self) -> None:
        self.loaded = True

    def start(self) -> None:
        self.load()
        self._running = True

    def stop(self) -> None:
        self._running = False

    def run_exclusive(self, fn: Callable[[], T]) -> T:
        return fn()

    def capture(self, conversations: Sequence[Sequence[Message]]) -> torch.Tensor:
        self.captured.extend(conversations)
        direction = torch.zeros(LAYERS, HIDDEN)
        direction[:, 0] = 1.0
        states = []
        for conversation in conversations:
            text = conversation[-1].text
            base = torch.randn(LAYERS, HIDDEN, generator=torch.Generator().manual_seed(len(text)))
            refusal = text.endswith(DEFAULT_REFUSAL_INSTRUCTION)
            states.append(0.1 * base + (2.0 * direction if refusal else 0.0))
        return torch.stack(states).float()

    def submit(self, request: RowRequest) -> RowStream:
        if not self._running:
            raise GuardError("the fake engine is not running")
        if self.overloaded:
            raise OverloadedError("the fake engine is full; retry shortly")
        row = RowStream(request, asyncio.get_running_loop())
        self.rows.append(request)
        self.streams.append(row)
        task = asyncio.get_running_loop().create_task(self._play(row))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return row

    async def _play(self, row: RowStream) -> None:
        request = row.request
        if self.fail_rows:
            row.put(RowFailed(RuntimeError("the fake model\nfell over")))
            return
        steered = request.steering.vectors is not None and request.alpha > 0
        reply = REFUSAL if steered else ANSWER
        sent = ""
        for piece in re.findall(r"\S+\s*", reply):
            await asyncio.sleep(0)
            if row.cancelled.is_set():
                break
            sent += piece
            row.put(RowDelta(piece))
        row.put(
            RowDone(
                text=sent,
                tokens=len(sent.split()),
                cancelled=row.cancelled.is_set(),
                queue_ms=0.0,
                prefill_ms=1.0,
                first_token_ms=1.0,
                total_ms=2.0,
                batch_size=0,
                readout=None if request.steering.vectors is None else 10 * request.alpha,
                tag=request.tag,
            )
        )


POLICY = """
name: fake-test
version: "1"
model: "*"
calibration: {{harmful: h.jsonl, benign: b.jsonl, k: 1, lambda: 1.0}}
defaults: {{alpha: 0.5}}
refusal: {{message: {message}}}
audit: {{record: all, keep_audio: false, retention_days: 200}}
rules:
  - name: watch
    when: {{level: shadow}}
    mode: shadow
  - name: off
    when: {{level: "off"}}
    alpha: 0
"""


def write_policy(directory: Path, message: str = "null") -> Path:
    items = load_manifest(DEFAULT_HARMFUL).items[:4]
    for name, chosen in (("h.jsonl", items[:2]), ("b.jsonl", items[2:])):
        lines = [f'{{"id": "{item.id}", "audio": "{item.audio}"}}' for item in chosen]
        (directory / name).write_text("\n".join(lines) + "\n")
    path = directory / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY.format(message=message)))
    return path


def turn(**kw: Any) -> Turn:
    return Turn(audio=float_to_pcm16(np.zeros(8000, dtype=np.float32)), sample_rate=16000, **kw)


@pytest.fixture
def run() -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.close()


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [event async for event in stream]


def test_the_fake_engine_satisfies_the_protocol() -> None:
    fake = FakeBackend()
    fake.load()  # properties such as facts only answer once loaded
    assert isinstance(fake, GenerationBackend)


def test_a_turn_runs_through_the_seam_and_calibrates_through_capture(
    tmp_path: Path, run: Any
) -> None:
    fake = FakeBackend()
    audit = CapturingAuditLog()
    guard = Guard(
        engine=fake, policy=write_policy(tmp_path), store=str(tmp_path / "v"), audit=audit
    )

    async def go() -> tuple[list[Any], bool, int | None]:
        async with guard:
            events = await collect(guard.respond(turn(session_id="s")))
            return events, guard.ready, guard.queue_depth

    events, ready, depth = run(go())
    assert ready
    assert depth == 0
    # Calibration went through the seam: 2 harmful + 2 benign turns, each with and without
    # the refusal instruction, joined to the prompt with no separator (the reference's form).
    texts = [conversation[-1].text for conversation in fake.captured]
    assert len(texts) == 8
    assert texts.count(DEFAULT_PROMPT + DEFAULT_REFUSAL_INSTRUCTION) == 4
    decision = events[-1]
    assert isinstance(decision, TurnDecision)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == decision.text == REFUSAL
    assert decision.steered
    assert decision.refused
    assert decision.refusal_score == pytest.approx(5.0)  # the row's readout
    [row] = fake.rows
    assert row.alpha == pytest.approx(0.5)
    assert row.steering.vectors is not None
    assert decision.vector_set_id == row.steering.vector_set_id
    [stored] = [p.stem for p in (tmp_path / "v").glob("*.vset")]
    assert decision.vector_set_id == stored  # the store id, as the docstring promises
    assert audit.records[0].vector_set_id == stored
    assert guard.conversations.history("s")[-1].text == REFUSAL
    guard.forget_session("s")
    assert guard.conversations.history("s") == []


def test_the_gate_replaces_a_refusal_and_cancels_the_row(tmp_path: Path, run: Any) -> None:
    fake = FakeBackend()
    policy = write_policy(tmp_path, message='"Let us talk about something else."')
    guard = Guard(engine=fake, policy=policy, store=str(tmp_path / "v"), audit=CapturingAuditLog())

    async def go() -> list[Any]:
        async with guard:
            return await collect(guard.respond(turn()))

    events = run(go())
    decision = events[-1]
    assert isinstance(decision, TurnDecision)
    assert [e.text for e in events if isinstance(e, TextDelta)] == [decision.text]
    assert decision.text == "Let us talk about something else."
    assert "refusal_message_served" in decision.flags
    assert fake.streams[0].cancelled.is_set()  # the rest of the refusal was not generated


def test_shadow_mode_submits_a_steered_row_beside_the_served_one(tmp_path: Path, run: Any) -> None:
    fake = FakeBackend()
    guard = Guard(
        engine=fake,
        policy=write_policy(tmp_path),
        store=str(tmp_path / "v"),
        audit=CapturingAuditLog(),
    )

    async def go() -> list[Any]:
        async with guard:
            return await collect(guard.respond(turn(context={"level": "shadow"})))

    decision = run(go())[-1]
    assert isinstance(decision, TurnDecision)
    served, shadow = fake.rows
    assert (served.alpha, shadow.alpha) == (0.0, pytest.approx(0.5))
    assert shadow.tag == f"{served.tag}:shadow"
    assert decision.text == ANSWER
    assert not decision.steered
    assert decision.shadow is not None
    assert decision.shadow["refused"] is True
    assert decision.shadow["text"] == REFUSAL


def test_row_failures_and_overload_fail_the_turn_alone(tmp_path: Path, run: Any) -> None:
    fake = FakeBackend()
    guard = Guard(
        engine=fake,
        policy=write_policy(tmp_path),
        store=str(tmp_path / "v"),
        audit=CapturingAuditLog(),
    )

    async def go() -> tuple[list[Any], list[Any], list[Any]]:
        async with guard:
            fake.fail_rows = True
            failed = await collect(guard.respond(turn()))
            fake.fail_rows, fake.overloaded = False, True
            overloaded = await collect(guard.respond(turn()))
            fake.overloaded = False
            fine = await collect(guard.respond(turn(context={"level": "off"})))
            return failed, overloaded, fine

    failed, overloaded, fine = run(go())
    assert isinstance(failed[-1], TurnError)
    assert failed[-1].kind == "model"
    assert "\n" not in failed[-1].message
    assert isinstance(overloaded[-1], TurnError)
    assert overloaded[-1].kind == "overloaded"
    assert isinstance(fine[-1], TurnDecision)
    assert fine[-1].text == ANSWER
    assert not fine[-1].steered
    assert fine[-1].vector_set_id is None


def test_engines_are_chosen_by_name(tmp_path: Path, run: Any) -> None:
    built: list[FakeBackend] = []

    def factory(model: object, **options: Any) -> FakeBackend:
        built.append(FakeBackend(model, **options))
        return built[-1]

    register_backend("fake-test", factory)
    assert "fake-test" in backend_names()
    assert "transformers" in backend_names()
    guard = Guard(
        "some/model",
        write_policy(tmp_path),
        str(tmp_path / "v"),
        CapturingAuditLog(),
        engine="fake-test",
        max_batch_size=3,
        engine_options={"dtype": "bfloat16"},
    )

    async def go() -> Any:
        async with guard:
            return (await collect(guard.respond(turn())))[-1]

    assert isinstance(run(go()), TurnDecision)
    [engine] = built
    assert guard.engine is engine
    assert engine.model_spec == "some/model"
    assert engine.options["max_batch_size"] == 3
    assert engine.options["dtype"] == "bfloat16"
    with pytest.raises(GuardError, match="unknown engine 'nope'; use one of: fake-test"):
        open_backend("nope", "tiny")
    with pytest.raises(GuardError, match="unknown engine"):
        Guard("tiny", engine="nope").load()
