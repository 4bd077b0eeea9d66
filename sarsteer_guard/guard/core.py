"""The Guard: the one core that the CLI, the server and every integration wrap.

A turn goes: policy decision -> audio front end -> vector set -> steered generation on the
backend (streamed through the refusal gate) -> refusal decision -> audit -> history. Anything
wrong with one turn (bad audio, vectors unavailable, a model error, overload) becomes an event
for that turn only; the session and the guard go on. The model itself lives behind the
generation-backend seam (:mod:`sarsteer_guard.guard.backend`): the Guard sees model facts,
rows and row events, never a framework object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from sarsteer_guard.errors import MODEL_REQUIRED, GuardError, one_line
from sarsteer_guard.guard import metrics
from sarsteer_guard.guard.auditing import warn_unsalted_fields
from sarsteer_guard.guard.backend import GenerationBackend, RowDelta, RowDone, RowFailed, RowHandle
from sarsteer_guard.guard.conversation import ConversationStore, turn_conversation
from sarsteer_guard.guard.events import (
    GuardEvent,
    HistoryItem,
    TextDelta,
    Turn,
    TurnDecision,
    TurnError,
)
from sarsteer_guard.guard.gate import GateVerdict, RefusalGate
from sarsteer_guard.guard.history import forget_session, open_history, remember, session_history
from sarsteer_guard.guard.intake import attach_vectors, prepare_turn
from sarsteer_guard.guard.policy_fit import check_policy_fits, prewarm_policy
from sarsteer_guard.guard.turn import (
    PreparedTurn,
    build_decision,
    row_error,
    shadow_outcome,
    turn_rows,
)
from sarsteer_guard.log import get_logger
from sarsteer_guard.refusal import RefusalDetector

if TYPE_CHECKING:
    from sarsteer_guard.audit.base import AuditLog
    from sarsteer_guard.guard.resources import Resources
    from sarsteer_guard.models.base import AudioLanguageModel, ModelFacts
    from sarsteer_guard.policy import Policy, PolicyWatcher
    from sarsteer_guard.steering import SteeringVectors
    from sarsteer_guard.store import VectorStore

log = get_logger(__name__)


class Guard:
    """Speech turns in, guarded streamed responses out.

    Construction does no I/O; ``load()`` (blocking, for prewarm) or ``await start()``
    loads the model, the policy, the stores and the vectors the policy needs.

    Args:
        model: hub id, local directory, or an already loaded adapter (ignored when ``engine``
            is a backend object, which brings its own model). Required: there is no default,
            so a bot that forgets it cannot end up guarding with a random test model; the
            built-in test models (``"tiny"``, ``"tiny-planted"``) must be named explicitly.
        policy: a policy YAML path (hot reloaded) or a loaded policy; None = the
            shipped ``policies/default.yaml``.
        store: vector store URL (``redis://...`` or a directory); None = embedded default.
        audit: audit log URL (``redis://...``, ``sqlite:///...``) or an audit log object.
        engine: the generation backend: a registered name (``"transformers"``, the default;
            see :func:`sarsteer_guard.backends.open_backend`) or a backend object.
        engine_options: extra keyword arguments for a named engine (e.g. ``dtype``).
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
        history_session_bytes / history_total_bytes: memory the kept history (user audio
            and replies) may take per session and across all sessions; least recently
            used sessions are dropped first, so clients that open a fresh session per
            turn cannot grow the server's memory.
        history: where session history lives: None = in this process; a ``redis://`` URL
            shares it between replicas (:mod:`~sarsteer_guard.guard.history_redis`, with
            the budgets above); or a store object. Closed by :meth:`close`.
        vectors: a vector file path or ``SteeringVectors`` used for every turn instead of
            the store (experiments, the CLI's ``--vectors``); checked against the model.
        alpha: overrides the policy's alpha for every turn (experiments, ``--alpha``).
        progress: show progress bars when vectors have to be calibrated.
    """

    def __init__(
        self,
        model: str | AudioLanguageModel | None = None,
        policy: str | Path | Policy | None = None,
        store: str | Path | VectorStore | None = None,
        audit: str | Path | AuditLog | None = None,
        *,
        engine: str | GenerationBackend = "transformers",
        engine_options: Mapping[str, object] | None = None,
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
        history_session_bytes: int = 8 * 1024 * 1024,
        history_total_bytes: int = 256 * 1024 * 1024,
        history: str | ConversationStore | None = None,
        watch_policy: bool = True,
        calibration_batch_size: int = 8,
        vectors: str | Path | SteeringVectors | None = None,
        alpha: float | None = None,
        progress: bool = False,
    ) -> None:
        if model is None and isinstance(engine, str):
            raise GuardError(MODEL_REQUIRED)
        # What load() opens (construction does no I/O).
        self._model_spec, self._engine_spec = model, engine
        self._policy_spec, self._store_spec, self._audit_spec = policy, store, audit
        self._vectors_spec = vectors
        self._engine_options = dict(engine_options or {})
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
        self.alpha_override = alpha
        self.progress = progress
        self.conversations = open_history(
            history, history_turns, history_tokens, history_session_bytes, history_total_bytes
        )
        #: The generation backend (the named one exists from ``load()`` on).
        self.engine: GenerationBackend | None = None if isinstance(engine, str) else engine
        self._policy: Policy | None = None
        self._watcher: PolicyWatcher | None = None
        self._res: Resources | None = None  # stores, audit, vectors: from load() on
        self._detectors: dict[tuple[str, ...], RefusalDetector] = {}
        self._loaded = self._started = False
        self._load_lock = asyncio.Lock()
        self._vector_pool: ThreadPoolExecutor | None = None  # from start() on

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Load everything (blocking, idempotent): call it to prewarm a worker process."""
        if self._loaded:
            return
        from sarsteer_guard.guard.resources import open_resources

        started = time.perf_counter()
        engine = self._open_engine()
        engine.load()
        facts = engine.facts
        if facts.is_test_model:
            log.warning(
                "guard.test_model",
                model=facts.model_id,
                hint="built-in test model (random, constructed or tiny trained weights, not a real "
                "audio LM); pass model=<hub id or path> (e.g. Qwen/Qwen2-Audio-7B-Instruct) to "
                "guard real traffic",
            )
        self._load_policy()
        check_policy_fits(self.policy, facts)  # before any store is opened: a config error
        warn_unsalted_fields(self.policy)
        res = self._res = open_resources(
            engine,
            store=self._store_spec,
            audit=self._audit_spec,
            vectors=self._vectors_spec,
            calibration_batch_size=self.calibration_batch_size,
            progress=self.progress,
        )
        prewarm_policy(self.policy, res.facts, res.vectors)
        self._loaded = True
        log.info(
            "guard.loaded",
            model=facts.model_id,
            engine=engine.name,
            policy=self.policy.name,
            seconds=round(time.perf_counter() - started, 2),
        )

    def _open_engine(self) -> GenerationBackend:
        if self.engine is None:
            from sarsteer_guard.backends import open_backend

            self.engine = open_backend(
                str(self._engine_spec),
                self._model_spec,
                max_batch_size=self.max_batch_size,
                batch_window_s=self.batch_window_s,
                max_queue=self.max_queue,
                **self._engine_options,
            )
        return self.engine

    async def start(self) -> None:
        """Load (in a thread, so the event loop keeps serving) and start the engine."""
        async with self._load_lock:
            if self._started:
                return
            await asyncio.to_thread(self.load)
            # Its own small pool: a long calibration must not starve the default executor
            # that integrations also use (audit writes have theirs, in the AuditWriter).
            self._vector_pool = ThreadPoolExecutor(1, thread_name_prefix="sarsteer-vectors")
            self._resources().auditor.start()
            await asyncio.to_thread(self._open_engine().start)
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
            if self._vector_pool is not None:
                await asyncio.to_thread(self._vector_pool.shutdown, True)
                self._vector_pool = None
            if self._res is not None:
                await asyncio.to_thread(self._res.close)  # audits in flight finish first
            await asyncio.to_thread(self.conversations.close)
            self._started = self._loaded = False

    async def __aenter__(self) -> Guard:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def policy(self) -> Policy:
        """The policy in force (the hot-reloaded one when a watcher runs)."""
        if self._watcher is not None:
            return self._watcher.current
        if self._policy is None:
            raise GuardError("the guard has no policy yet: call load() or await start()")
        return self._policy

    @property
    def policy_watcher(self) -> PolicyWatcher | None:
        """The hot-reload watcher (None: a policy object, or ``watch_policy=False``).

        Its ``last_error`` says why the last edit was refused (invalid, for another model,
        or impossible on the loaded one); ``check_now()`` checks the file at once.
        """
        return self._watcher

    @property
    def model_facts(self) -> ModelFacts:
        """The served model's facts (from ``load()`` on; read once, they never change)."""
        return self._resources().facts

    @property
    def audit_log(self) -> AuditLog | None:
        """The audit log (None before ``load()``)."""
        return None if self._res is None else self._res.audit_log

    @property
    def ready(self) -> bool:
        """Model loaded and the engine serving."""
        return self._started and self.engine is not None and self.engine.running

    @property
    def queue_depth(self) -> int | None:
        """Turns waiting for a generation batch (None before the engine exists)."""
        return None if self.engine is None else int(self.engine.queue_depth)

    def forget_session(self, session_id: str) -> None:
        """Drop a session's conversation history (the call ended, or the user asked).

        Called synchronously by servers from their event loop: a network store's forget
        is handed to a worker thread there (its TTL ends the history if it fails).
        """
        forget_session(self.conversations, session_id)

    def _load_policy(self) -> None:
        from sarsteer_guard.policy import PolicyWatcher, default_policy_path, load_policy

        spec = self._policy_spec if self._policy_spec is not None else default_policy_path()
        if not isinstance(spec, str | Path):
            self._policy = spec
        elif self.watch_policy:
            self._watcher = PolicyWatcher(
                Path(spec), on_change=self._on_policy_change, accept=self._accept_policy
            )
            self._policy = self._watcher.current
        else:
            self._policy = load_policy(Path(spec))

    def _accept_policy(self, candidate: Policy) -> None:
        """Runs on the watcher's thread before a reload is swapped in: raise to reject it.

        The candidate must fit the loaded model (``model:``, layers) and its vector sets
        must be ready, so the swap never puts a policy in force that would fail its turns;
        a rejected edit leaves the last good policy in force and is logged with the reason.
        """
        res = self._res
        if res is None:  # not loaded yet: load() checks the policy it starts with
            return
        prewarm_policy(candidate, res.facts, res.vectors, strict=True)

    def _on_policy_change(self, policy: Policy) -> None:
        """Runs on the watcher's thread after a reload (already checked and prewarmed)."""
        warn_unsalted_fields(policy)
        log.info("guard.policy_prewarmed", policy=policy.name, version=policy.version)

    def _resources(self) -> Resources:
        if self._res is None:
            raise GuardError("the guard is not loaded: call load() or await start()")
        return self._res

    def _running_engine(self) -> GenerationBackend:
        if self.engine is None:
            raise GuardError("the guard is not running: await guard.start() first")
        return self.engine

    # -- turns -------------------------------------------------------------------------------
    async def respond(self, turn: Turn) -> AsyncIterator[GuardEvent]:
        """Stream one turn's events: text deltas, then a decision (or an error)."""
        if not self._started:
            yield TurnError(turn.turn_id, "not_started", "the guard is not started: await start()")
            return
        prepared = prepare_turn(
            turn,
            self.policy,
            rate=self.model_facts.sampling_rate,
            max_s=self.max_turn_s,
            alpha=self.alpha_override,
        )
        if isinstance(prepared, TurnError):
            yield prepared
            return
        if prepared.decision.alpha > 0:
            prepared = await attach_vectors(prepared, self._resources().vectors, self._vector_pool)
        if "fail_closed" in prepared.flags:
            async for event in self._serve_fixed_refusal(prepared):
                yield event
            return
        async for event in self._generate(prepared):
            yield event

    def _detector(self, keywords: tuple[str, ...]) -> RefusalDetector:
        detector = self._detectors.get(keywords)
        if detector is None:
            detector = self._detectors[keywords] = RefusalDetector(keywords)
        return detector

    def _submit(
        self, prepared: PreparedTurn, history: list[HistoryItem]
    ) -> tuple[RowHandle, RowHandle | None, float]:
        """Submit the turn's rows; returns them and the served row's alpha."""
        turn, decision = prepared.turn, prepared.decision
        facts = self.model_facts
        conversation = turn_conversation(
            system_prompt=decision.system_prompt,
            history=history,
            prompt=self.turn_prompt if self.turn_prompt is not None else decision.turn_prompt,
            audio=prepared.audio,
            rate=facts.sampling_rate,
        )
        budget = min(turn.max_new_tokens or self.max_new_tokens, self.max_new_tokens_cap)
        served_row, shadow_row = turn_rows(
            prepared, conversation, num_layers=facts.num_layers, budget=budget
        )
        engine = self._running_engine()
        served = engine.submit(served_row)
        try:
            shadow = None if shadow_row is None else engine.submit(shadow_row)
        except GuardError:
            served.cancel()
            raise
        metrics.QUEUE_DEPTH.set(engine.queue_depth)
        return served, shadow, served_row.alpha

    async def _generate(self, prepared: PreparedTurn) -> AsyncIterator[GuardEvent]:
        history = await session_history(self.conversations, prepared.turn)
        try:
            served, shadow, served_alpha = self._submit(prepared, history)
        except GuardError as error:
            metrics.FAILURES.labels(kind=error.kind).inc()
            yield TurnError(prepared.turn_id, error.kind, one_line(error))
            return
        decision = prepared.decision
        detector = self._detector(tuple(decision.detector_keywords))
        gate = RefusalGate(
            detector,
            decision.refusal_message,
            window=self.refusal_gate_chars,
            shadow=decision.shadow,
        )
        finished = False
        try:
            done: RowDone | None = None
            async for event in served.events():
                if isinstance(event, RowDelta):
                    text = gate.feed(event.text)
                    if gate.replaced:
                        served.cancel()
                    if text:
                        yield TextDelta(prepared.turn_id, text)
                elif isinstance(event, RowFailed):
                    metrics.FAILURES.labels(kind=event.kind).inc()
                    yield row_error(prepared.turn_id, event)
                    return
                else:
                    done = event
            if done is None:  # pragma: no cover - a backend always ends a row
                return
            verdict = gate.close(done.text)
            if verdict.tail:
                yield TextDelta(prepared.turn_id, verdict.tail)
            outcome = (
                await shadow_outcome(shadow, decision.alpha, detector) if decision.shadow else None
            )
            finished = True
            decided = build_decision(
                prepared,
                verdict=verdict,
                model_text=done.text,
                steered=served_alpha > 0,
                row=done,
                shadow=outcome,
            )
            yield await self._finish(prepared, decided, done.batch_size)
        finally:
            if not finished:
                served.cancel()
                if shadow is not None:
                    shadow.cancel()

    async def _serve_fixed_refusal(self, prepared: PreparedTurn) -> AsyncIterator[GuardEvent]:
        message = prepared.decision.spoken_refusal
        yield TextDelta(prepared.turn_id, message)
        verdict = GateVerdict(
            tail=message, served=message, refused=True, keyword=None, replaced=False
        )
        event = build_decision(prepared, verdict=verdict, model_text="", steered=False)
        yield await self._finish(prepared, event, 0)

    async def _finish(
        self, prepared: PreparedTurn, event: TurnDecision, batch_size: int
    ) -> TurnDecision:
        """Metrics, audit, then history for a decided turn; returns the event to yield.

        The audit record is submitted first: the turn is already served, and a history
        store that fails must not cost its record. History is appended before the event
        is yielded so the session's next turn sees this one.
        """
        metrics.record_turn(event, batch_size)
        turn = prepared.turn
        audit_id = self._resources().auditor.submit(turn, prepared.decision, prepared.audio, event)
        await remember(self.conversations, prepared, self.model_facts.sampling_rate, event.text)
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
        return event if audit_id is None else dataclasses.replace(event, audit_id=audit_id)
