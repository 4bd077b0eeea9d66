"""The Guard: the one core that the CLI, the server and every integration wrap.

A turn goes: policy decision -> audio front end -> vector set -> batched steered
generation (streamed) -> refusal decision -> audit -> history. Anything wrong with one
turn (bad audio, vectors unavailable, a model error, overload) becomes an event for
that turn only; the session and the guard go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from sarsteer_guard.errors import (
    AudioError,
    GuardError,
    OverloadedError,
    one_line,
)
from sarsteer_guard.guard import metrics
from sarsteer_guard.guard.conversation import ConversationStore
from sarsteer_guard.guard.events import (
    GuardEvent,
    HistoryItem,
    TextDelta,
    Timings,
    Turn,
    TurnDecision,
    TurnError,
)
from sarsteer_guard.log import get_logger
from sarsteer_guard.refusal import RefusalDetector

log = get_logger(__name__)


class Guard:
    """Speech turns in, guarded streamed responses out.

    Construction does no I/O; ``load()`` (blocking, for prewarm) or ``await start()``
    loads the model, the policy, the stores and the vectors the policy needs.

    Args:
        model: hub id, local directory, ``"tiny"``, or an already loaded adapter.
        policy: a policy YAML path (hot reloaded) or a loaded policy; None = the
            shipped ``policies/default.yaml``.
        store: vector store URL (``redis://...`` or a directory); None = embedded default.
        audit: audit log URL (``redis://...``, ``sqlite:///...``) or an audit log object.
        max_batch_size: rows per generation batch (many sessions on one GPU).
        batch_window_ms: how long the first turn of a batch waits for company.
        max_queue: turns allowed to wait; beyond it a turn gets an "overloaded" error.
        max_new_tokens: default reply length budget per turn.
        max_new_tokens_cap: the most a turn may ask for (a batch runs as long as its
            longest row, so one huge request would hold every other session back).
        max_turn_s: longest user turn accepted (the audio encoder hears 30 s).
        refusal_gate_chars: with a fixed refusal message, text is held back until this
            many characters are known so a refusal can be replaced before it is spoken.
        turn_prompt: text sent with each user turn; None = the calibration prompt.
        history_turns / history_tokens: per-session conversation budget.
        vectors: a vector file path or ``SteeringVectors`` used for every turn instead of
            the store (experiments, the CLI's ``--vectors``); checked against the model.
        alpha: overrides the policy's alpha for every turn (experiments, ``--alpha``).
        progress: show progress bars when vectors have to be calibrated.
    """

    def __init__(
        self,
        model: Any = "tiny",
        policy: Any = None,
        store: Any = None,
        audit: Any = None,
        *,
        max_batch_size: int = 16,
        batch_window_ms: float = 10.0,
        max_queue: int = 64,
        max_new_tokens: int = 64,
        max_new_tokens_cap: int = 512,
        max_turn_s: float = 30.0,
        refusal_gate_chars: int = 32,
        turn_prompt: str | None = None,
        history_turns: int = 8,
        history_tokens: int = 2048,
        watch_policy: bool = True,
        calibration_batch_size: int = 8,
        vectors: Any = None,
        alpha: float | None = None,
        progress: bool = False,
    ) -> None:
        self._model_spec = model
        self._policy_spec = policy
        self._store_spec = store
        self._audit_spec = audit
        self.max_batch_size = max_batch_size
        self.batch_window_s = batch_window_ms / 1000
        self.max_queue = max_queue
        self.max_new_tokens = max_new_tokens
        self.max_new_tokens_cap = max(1, max_new_tokens_cap)
        self.max_turn_s = max_turn_s
        self.refusal_gate_chars = refusal_gate_chars
        self.turn_prompt = turn_prompt
        self.watch_policy = watch_policy
        self.calibration_batch_size = calibration_batch_size
        self._vectors_spec = vectors
        self.alpha_override = alpha
        self.progress = progress
        self.conversations = ConversationStore(
            max_exchanges=history_turns, max_tokens=history_tokens
        )
        self.lm: Any = None
        self.engine: Any = None
        self.audit_log: Any = None
        self._policy: Any = None
        self._watcher: Any = None
        self._store: Any = None
        self._vectors: Any = None
        # vectors digest -> (tensor, readout layer = the layer where v_l is longest)
        self._vector_tensors: dict[str, tuple[Any, int]] = {}
        self._detectors: dict[tuple[str, ...], RefusalDetector] = {}
        self._loaded = False
        self._started = False
        self._load_lock = asyncio.Lock()
        # Separate small pools: a long calibration or a slow audit backend must not starve
        # each other or the default executor that integrations also use.
        self._vector_pool: ThreadPoolExecutor | None = None
        self._audit_pool: ThreadPoolExecutor | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load everything (blocking, idempotent): call it to prewarm a worker process."""
        if self._loaded:
            return
        from sarsteer_guard.audit import open_audit_log
        from sarsteer_guard.guard.engine import GenerationEngine
        from sarsteer_guard.guard.vectors import VectorProvider
        from sarsteer_guard.models import load_model
        from sarsteer_guard.store import open_store

        started = time.perf_counter()
        self.lm = self._model_spec if not isinstance(self._model_spec, str) else None
        if self.lm is None:
            self.lm = load_model(self._model_spec)
        if self.lm.model_id in ("tiny", "tiny-planted"):
            log.warning(
                "guard.test_model",
                model=self.lm.model_id,
                hint="built-in test model with random/constructed weights; pass model=<hub id "
                "or path> (e.g. Qwen/Qwen2-Audio-7B-Instruct) to guard real traffic",
            )
        self._load_policy()
        self._store = (
            open_store(None if self._store_spec is None else str(self._store_spec))
            if self._store_spec is None or isinstance(self._store_spec, str | Path)
            else self._store_spec
        )
        self.audit_log = (
            open_audit_log(None if self._audit_spec is None else str(self._audit_spec))
            if self._audit_spec is None or isinstance(self._audit_spec, str | Path)
            else self._audit_spec
        )
        self.engine = GenerationEngine(
            self.lm,
            max_batch_size=self.max_batch_size,
            batch_window_s=self.batch_window_s,
            max_queue=self.max_queue,
        )
        self._vectors = VectorProvider(
            self.lm,
            self._store,
            batch_size=self.calibration_batch_size,
            progress=self.progress,
            fixed=self._fixed_vectors(),
            exclusive=self.engine.run_exclusive,
        )
        self._prewarm_vectors()
        self._loaded = True
        log.info(
            "guard.loaded",
            model=self.lm.model_id,
            policy=self.policy.name,
            seconds=round(time.perf_counter() - started, 2),
        )

    def _fixed_vectors(self) -> Any:
        if self._vectors_spec is None:
            return None
        from sarsteer_guard.steering import SteeringVectors

        spec = self._vectors_spec
        vectors = spec if isinstance(spec, SteeringVectors) else SteeringVectors.load(spec)
        vectors.check_compatible(
            num_layers=self.lm.num_layers,
            hidden_size=self.lm.hidden_size,
            fingerprint=self.lm.fingerprint,
        )
        return vectors

    async def start(self) -> None:
        """Load (in a thread, so the event loop keeps serving) and start the engine."""
        async with self._load_lock:
            if self._started:
                return
            await asyncio.to_thread(self.load)
            self._vector_pool = ThreadPoolExecutor(1, thread_name_prefix="sarsteer-vectors")
            self._audit_pool = ThreadPoolExecutor(2, thread_name_prefix="sarsteer-audit")
            self.engine.start()
            if self._watcher is not None:
                self._watcher.start()
            self._started = True

    async def close(self) -> None:
        """Stop the watcher, the engine (queued turns get an error), the pools and the stores.

        Idempotent; waits for a ``start()`` in progress so nothing is opened after closing.
        """
        async with self._load_lock:
            if self._watcher is not None:
                await asyncio.to_thread(self._watcher.stop)
            if self.engine is not None:
                await asyncio.to_thread(self.engine.stop)
            for pool in (self._vector_pool, self._audit_pool):
                if pool is not None:
                    await asyncio.to_thread(pool.shutdown, True)  # audits in flight finish
            self._vector_pool = self._audit_pool = None
            for resource in (self.audit_log, self._store):
                closer = getattr(resource, "close", None)
                if closer is not None:
                    with contextlib.suppress(Exception):
                        closer()
            self._started = False
            self._loaded = False

    async def __aenter__(self) -> Guard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def policy(self) -> Any:
        """The policy in force (the hot-reloaded one when a watcher runs)."""
        if self._watcher is not None:
            return self._watcher.current
        return self._policy

    @property
    def ready(self) -> bool:
        """Model loaded and the engine's worker alive."""
        return self._started and self.engine is not None and self.engine.running

    @property
    def queue_depth(self) -> int | None:
        """Turns waiting for a generation batch (None before the engine exists)."""
        return None if self.engine is None else int(self.engine.queue_depth)

    def forget_session(self, session_id: str) -> None:
        """Drop a session's conversation history (the call ended, or the user asked)."""
        self.conversations.forget(session_id)

    def _load_policy(self) -> None:
        from sarsteer_guard.policy import PolicyWatcher, default_policy_path, load_policy

        spec = self._policy_spec
        if spec is None:
            spec = default_policy_path()
        if isinstance(spec, str | Path):
            if self.watch_policy:
                self._watcher = PolicyWatcher(Path(spec), on_change=self._on_policy_change)
                self._policy = self._watcher.current
            else:
                self._policy = load_policy(Path(spec))
        else:
            self._policy = spec

    def _prewarm_vectors(self, policy: Any = None) -> None:
        """Check layers and fetch or calibrate every vector set a policy can ask for.

        A rule naming a layer the model does not have raises :class:`PolicyError` here, at
        start or reload, rather than failing every turn it matches.
        """
        policy = policy or self.policy
        for decision in policy.possible_decisions():
            decision.resolve_layers(self.lm.num_layers)
            decision.resolve_beta(self.lm.num_layers)
        for request in self._vector_requests_for_policy(policy):
            try:
                self._vectors.get(request)
            except Exception as error:  # the failure mode applies per turn; start goes on
                log.warning("guard.vectors_unavailable_at_start", error=one_line(error))

    def _on_policy_change(self, policy: Any) -> None:
        """Runs on the watcher's thread after a reload: vectors are ready before traffic."""
        try:
            self._prewarm_vectors(policy)
            log.info("guard.policy_prewarmed", policy=policy.name, version=policy.version)
        except Exception as error:  # the reload already happened; turns report per-turn errors
            log.error("guard.policy_prewarm_failed", error=one_line(error))

    # -- turns -------------------------------------------------------------------------------
    async def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        """Stream one turn's events: text deltas, then a decision (or an error)."""
        if not self._started:
            yield TurnError(turn.turn_id, "not_started", "the guard is not started: await start()")
            return
        submitted = time.perf_counter()
        policy = self.policy
        try:
            decision = policy.evaluate(dict(turn.context))
            if self.alpha_override is not None:
                decision = dataclasses.replace(decision, alpha=self.alpha_override)
            audio = self._turn_audio(turn)
        except GuardError as error:
            metrics.FAILURES.labels(kind=error.kind).inc()
            yield TurnError(turn.turn_id, error.kind, one_line(error))
            return
        except Exception as error:  # e.g. a context value of an unexpected type
            metrics.FAILURES.labels(kind="bad_request").inc()
            log.warning("guard.turn_rejected", turn_id=turn.turn_id, error=one_line(error))
            yield TurnError(
                turn.turn_id,
                "bad_request",
                f"the turn could not be prepared ({type(error).__name__}: {one_line(error)}); "
                "check its audio format and context values",
            )
            return
        flags: list[str] = []
        loaded = None
        wants_vectors = decision.alpha > 0
        if wants_vectors:
            try:
                loaded = await self._get_vectors(decision)
            except Exception as error:  # whatever the cause, the policy's failure mode decides
                kind = error.kind if isinstance(error, GuardError) else "vectors"
                metrics.FAILURES.labels(kind=kind).inc()
                log.warning(
                    "guard.vectors_unavailable", turn_id=turn.turn_id, error=one_line(error)
                )
                flags.append("vectors_unavailable")
                if decision.failure_mode == "fail_closed":
                    flags.append("fail_closed")
                    async for event in self._serve_fixed_refusal(
                        turn, decision, audio, submitted, flags
                    ):
                        yield event
                    return
                flags.append("fail_open")
        async for event in self._generate(turn, decision, audio, loaded, submitted, flags):
            yield event

    def _turn_audio(self, turn: Turn) -> np.ndarray:
        from sarsteer_guard.audio import pcm_to_float

        rate = self.lm.sampling_rate
        audio = pcm_to_float(
            turn.audio,
            sample_rate=turn.sample_rate,
            channels=turn.channels,
            target_rate=rate,
            dtype=turn.sample_format,
        )
        if audio.size == 0:
            raise AudioError("the turn has no audio samples: send at least 0.1 s of speech")
        seconds = audio.shape[0] / rate
        if seconds > self.max_turn_s:
            raise AudioError(
                f"the turn is {seconds:.1f} s long but at most {self.max_turn_s:.0f} s is "
                "accepted: segment the stream into shorter turns"
            )
        return audio

    async def _get_vectors(self, decision: Any) -> Any:
        request = self._vector_request(decision)
        cached = self._vectors.cached(request)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._vector_pool, self._vectors.get, request)

    def _vector_request(self, decision: Any) -> Any:
        from sarsteer_guard.guard.vectors import VectorRequest

        spec = decision.vector_spec
        return VectorRequest(**spec)

    def _vector_requests_for_policy(self, policy: Any) -> list[Any]:
        requests = []
        for decision in policy.possible_decisions():
            if decision.alpha > 0:
                requests.append(self._vector_request(decision))
        return list(dict.fromkeys(requests))

    def _detector(self, keywords: tuple[str, ...]) -> RefusalDetector:
        detector = self._detectors.get(keywords)
        if detector is None:
            detector = self._detectors[keywords] = RefusalDetector(keywords)
        return detector

    def _conversation(self, turn: Turn, decision: Any, audio: np.ndarray) -> list[Any]:
        from sarsteer_guard.models.base import Message

        rate = self.lm.sampling_rate
        messages: list[Message] = []
        if decision.system_prompt:
            messages.append(Message(role="system", text=decision.system_prompt))
        history = (
            list(turn.history)
            if turn.history is not None
            else self.conversations.history(turn.session_id)
        )
        for item in history:
            messages.append(_history_message(item, rate))
        prompt = self.turn_prompt if self.turn_prompt is not None else decision.turn_prompt
        messages.append(Message(role="user", text=prompt, audio=audio))
        return messages

    def _steering_spec(self, decision: Any, loaded: Any) -> Any:
        from sarsteer_guard.guard.engine import SteeringSpec

        if loaded is None:
            return SteeringSpec()
        layers = decision.resolve_layers(self.lm.num_layers)
        beta = decision.resolve_beta(self.lm.num_layers)
        cached = self._vector_tensors.get(loaded.vectors.digest)
        if cached is None:  # SteeringVectors hands out a fresh copy on every access: keep one
            tensor = loaded.vectors.vectors
            cached = (tensor, int(tensor.norm(dim=-1).argmax()))
            self._vector_tensors[loaded.vectors.digest] = cached
        tensor, readout = cached
        return SteeringSpec(
            vector_set_id=loaded.id,
            vectors=tensor,
            vectors_digest=loaded.vectors.digest,
            layer_ids=None if layers is None else tuple(layers),
            beta=None if beta is None else tuple(beta),
            prompt_only=decision.steer_positions == "prompt_only",
            readout_layer=readout,
        )

    async def _generate(
        self,
        turn: Turn,
        decision: Any,
        audio: np.ndarray,
        loaded: Any,
        submitted: float,
        flags: list[str],
    ) -> AsyncIterator[GuardEvent]:
        from sarsteer_guard.guard.engine import GenerationRequest

        loop = asyncio.get_running_loop()
        try:
            conversation = self._conversation(turn, decision, audio)
            spec = self._steering_spec(decision, loaded)
        except GuardError as error:
            metrics.FAILURES.labels(kind=error.kind).inc()
            yield TurnError(turn.turn_id, error.kind, one_line(error))
            return
        shadow = decision.mode == "shadow"
        alpha = decision.alpha if loaded is not None else 0.0
        max_new = min(turn.max_new_tokens or self.max_new_tokens, self.max_new_tokens_cap)
        served = GenerationRequest(
            conversation=conversation,
            alpha=0.0 if shadow else alpha,
            steering=spec,
            max_new_tokens=max_new,
            loop=loop,
            tag=turn.turn_id,
        )
        shadow_row = (
            GenerationRequest(
                conversation=conversation,
                alpha=alpha,
                steering=spec,
                max_new_tokens=max_new,
                loop=loop,
                tag=f"{turn.turn_id}:shadow",
            )
            if shadow and loaded is not None and alpha > 0
            else None
        )
        try:
            self.engine.submit(served)
            if shadow_row is not None:
                self.engine.submit(shadow_row)
        except OverloadedError as error:
            served.cancel()
            metrics.FAILURES.labels(kind=error.kind).inc()
            yield TurnError(turn.turn_id, error.kind, str(error))
            return
        except GuardError as error:
            yield TurnError(turn.turn_id, error.kind, str(error))
            return
        metrics.QUEUE_DEPTH.set(self.engine.queue_depth)

        message = decision.refusal_message
        detector = self._detector(tuple(decision.detector_keywords))
        gate = message is not None and not shadow
        held: list[str] = []
        streamed: list[str] = []
        replaced = False
        result = None
        finished = False
        try:
            async for kind, payload in served.stream():
                if kind == "delta":
                    if replaced:
                        continue
                    if gate:
                        held.append(payload)
                        text = "".join(held)
                        if len(text) < self.refusal_gate_chars:
                            continue
                        gate = False
                        if detector(text).refused:
                            replaced = True
                            served.cancel()
                            streamed.append(message)
                            yield TextDelta(turn.turn_id, message)
                            continue
                        held.clear()
                        streamed.append(text)
                        yield TextDelta(turn.turn_id, text)
                        continue
                    streamed.append(payload)
                    yield TextDelta(turn.turn_id, payload)
                elif kind == "done":
                    result = payload
                else:
                    failure = payload
                    kind_name = getattr(failure, "kind", "model")
                    metrics.FAILURES.labels(kind=kind_name).inc()
                    yield TurnError(
                        turn.turn_id,
                        kind_name,
                        f"the model failed on this turn ({type(failure).__name__}: "
                        f"{one_line(failure)}); "
                        "the session can continue",
                    )
                    return
            if result is None:  # pragma: no cover - the engine always ends a stream
                return
            model_text = result.text
            verdict = detector(model_text)
            if held and not replaced:  # the reply ended inside the gate window
                if verdict.refused and message is not None:
                    replaced = True
                    streamed.append(message)
                    yield TextDelta(turn.turn_id, message)
                else:
                    text = "".join(held)
                    streamed.append(text)
                    yield TextDelta(turn.turn_id, text)
                held.clear()
            served_text = "".join(streamed)
            refused = verdict.refused or replaced
            if replaced:
                flags.append("refusal_message_served")
            shadow_info = None
            if shadow_row is not None:
                shadow_info = await _shadow_outcome(shadow_row, detector)
            elif shadow:
                shadow_info = {"steered": False, "reason": "alpha is 0 or vectors unavailable"}
            finished = True
            decision_event = TurnDecision(
                turn_id=turn.turn_id,
                session_id=turn.session_id,
                refused=refused,
                text=served_text,
                model_text=model_text,
                policy=decision.policy_name,
                policy_version=decision.policy_version,
                policy_hash=decision.policy_hash,
                rule=decision.rule,
                mode=decision.mode,
                alpha=decision.alpha,
                steered=served.alpha > 0,
                refusal_keyword=verdict.keyword,
                refusal_score=result.readout,
                vector_set_id=None if loaded is None else loaded.id,
                tokens=result.tokens,
                flags=tuple(flags),
                shadow=shadow_info,
                timings=Timings(
                    queue_ms=round(result.queue_ms, 2),
                    prefill_ms=round(result.prefill_ms, 2),
                    first_token_ms=round(result.first_token_ms, 2),
                    total_ms=round((time.perf_counter() - submitted) * 1000, 2),
                ),
            )
            yield await self._finish(turn, decision, audio, decision_event, result.batch_size)
        finally:
            if not finished:
                served.cancel()
                if shadow_row is not None:
                    shadow_row.cancel()

    async def _serve_fixed_refusal(
        self, turn: Turn, decision: Any, audio: np.ndarray, submitted: float, flags: list[str]
    ) -> AsyncIterator[GuardEvent]:
        message = decision.spoken_refusal
        yield TextDelta(turn.turn_id, message)
        event = TurnDecision(
            turn_id=turn.turn_id,
            session_id=turn.session_id,
            refused=True,
            text=message,
            model_text="",
            policy=decision.policy_name,
            policy_version=decision.policy_version,
            policy_hash=decision.policy_hash,
            rule=decision.rule,
            mode=decision.mode,
            alpha=decision.alpha,
            steered=False,
            flags=tuple(flags),
            timings=Timings(total_ms=round((time.perf_counter() - submitted) * 1000, 2)),
        )
        yield await self._finish(turn, decision, audio, event, 0)

    async def _finish(
        self, turn: Turn, decision: Any, audio: np.ndarray, event: TurnDecision, batch_size: int
    ) -> TurnDecision:
        """Metrics, history and audit for a decided turn; returns the event to yield."""
        outcome = "refused" if event.refused else "answered"
        metrics.TURNS.labels(policy=event.policy, outcome=outcome).inc()
        if event.refused:
            metrics.REFUSALS.labels(policy=event.policy, rule=event.rule or "defaults").inc()
        metrics.TURN_SECONDS.observe(event.timings.total_ms / 1000)
        if event.tokens:
            metrics.FIRST_TOKEN_SECONDS.observe(event.timings.first_token_ms / 1000)
        if batch_size:
            metrics.BATCH_SIZE.observe(batch_size)
        if turn.history is None:
            self.conversations.append(turn.session_id, audio, self.lm.sampling_rate, event.text)
        audit_id = await self._audit(turn, decision, audio, event)
        log.info(
            "guard.turn",
            turn_id=turn.turn_id,
            session_id=turn.session_id,
            policy=event.policy,
            rule=event.rule,
            refused=event.refused,
            alpha=event.alpha,
            steered=event.steered,
            tokens=event.tokens,
            total_ms=event.timings.total_ms,
            flags=list(event.flags),
        )
        if audit_id is None:
            return event
        from dataclasses import replace

        return replace(event, audit_id=audit_id)

    async def _audit(
        self, turn: Turn, decision: Any, audio: np.ndarray, event: TurnDecision
    ) -> str | None:
        """Queue the turn's audit record and return its id at once.

        The write runs on the audit pool and is not awaited: a slow or unreachable audit
        backend (the spool absorbs outages, but a hung socket still takes its timeout)
        must not delay the end of a voice turn. ``close()`` waits for queued writes.
        """
        record = decision.audit_record
        if record == "none" or (record == "refused" and not event.refused):
            return None
        from sarsteer_guard.audit.record import new_record_id
        from sarsteer_guard.guard.auditing import build_audit_draft

        record_id = new_record_id()

        def write() -> None:
            try:
                draft = build_audit_draft(
                    turn=turn,
                    decision=decision,
                    event=event,
                    audio=audio,
                    sample_rate=self.lm.sampling_rate,
                    model_id=self.lm.model_id,
                    model_fingerprint=self.lm.fingerprint,
                    record_id=record_id,
                )
                self.audit_log.append(draft)
            except Exception as error:  # auditing must never take a voice turn down
                metrics.AUDIT_FAILURES.inc()
                log.error("guard.audit_failed", turn_id=turn.turn_id, error=one_line(error))

        pool = self._audit_pool
        if pool is None:
            return None
        pool.submit(write)
        return record_id


async def _shadow_outcome(row: Any, detector: RefusalDetector) -> dict[str, object]:
    result = None
    async for kind, payload in row.stream():
        if kind == "done":
            result = payload
        elif kind == "error":
            return {"steered": True, "error": str(payload)}
    if result is None:  # pragma: no cover - the engine always ends a stream
        return {"steered": True, "error": "no result"}
    verdict = detector(result.text)
    return {
        "steered": True,
        "alpha": row.alpha,
        "refused": verdict.refused,
        "refusal_keyword": verdict.keyword,
        "refusal_score": result.readout,
        "text": result.text,
    }


def _history_message(item: HistoryItem, rate: int) -> Any:
    from sarsteer_guard.audio import resample
    from sarsteer_guard.models.base import Message

    audio = item.audio
    if audio is not None and item.sample_rate != rate:
        audio = resample(audio, item.sample_rate, rate)
    return Message(role=item.role, text=item.text, audio=audio)
