"""Run arms x items through one Guard, store every response, then judge what is unjudged.

Generation and judging are separate passes over the results file, so each can be
resumed on its own: a rerun skips responses already stored and verdicts already given,
and a rerun with another judge re-scores stored responses without generating again.

Steering is a safety control, so a run stops loudly if a turn that should have been
steered was not (vectors unavailable, or the policy decided alpha 0 for a setting under
test): numbers for a silently unsteered model must never be reported as steered ones.

Items that carry their own text prompt (AIR-Bench questions) are served by one Guard
per distinct prompt, one after another on the same model: the Guard's turn API takes one
prompt per guard. Items without one share a single Guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sarsteer_guard.defaults import DEFAULT_EVAL_MAX_NEW_TOKENS
from sarsteer_guard.errors import AudioError, GuardError, one_line
from sarsteer_guard.evaluation.judges import Judge, JudgeInput
from sarsteer_guard.evaluation.metrics import Outcome
from sarsteer_guard.evaluation.plan import Arm, EvalItem
from sarsteer_guard.evaluation.results import ResultsFile

if TYPE_CHECKING:
    from sarsteer_guard.guard.events import TurnDecision
    from sarsteer_guard.models.base import AudioLanguageModel
    from sarsteer_guard.policy import Policy


@dataclass(frozen=True)
class Generation:
    """How responses are generated; greedy 512 new tokens is the reference's budget."""

    mode: Literal["greedy", "checkpoint"] = "greedy"
    max_new_tokens: int = DEFAULT_EVAL_MAX_NEW_TOKENS

    def describe(self) -> str:
        """Plain words for reports."""
        return f"greedy decoding, up to {self.max_new_tokens} new tokens per response"

    def check(self) -> None:
        """Refuse settings the Guard cannot honour, before anything is loaded."""
        if self.max_new_tokens < 1:
            raise GuardError("--max-new-tokens must be at least 1")
        if self.mode == "checkpoint":
            raise GuardError(
                "the Guard generates greedily and has no sampling option yet, so the "
                "checkpoint's own sampling settings cannot be used; run with --generation greedy"
            )


@dataclass(frozen=True)
class RunOptions:
    """Where and how turns run (everything but what is evaluated)."""

    engine: str = "transformers"
    store: str | None = None
    vectors: Path | None = None
    prompt: str | None = None
    generation: Generation = Generation()
    concurrency: int = 16
    progress: bool = True


def guard_engine_kwargs(engine: str) -> dict[str, Any]:
    """The Guard's ``engine`` keyword, checked against the registered backends.

    Checked before any model is loaded, so a typo costs nothing.

    Raises:
        GuardError: no backend is registered under that name.
    """
    from sarsteer_guard.backends import backend_names

    if engine not in backend_names():
        raise GuardError(f"unknown engine {engine!r}; use one of: {', '.join(backend_names())}")
    return {"engine": engine}


def prompt_groups(
    items: Sequence[EvalItem], default: str | None
) -> dict[str | None, list[EvalItem]]:
    """Items by the prompt they are sent with (their own, else ``default``), in order."""
    groups: dict[str | None, list[EvalItem]] = {}
    for item in items:
        groups.setdefault(item.prompt or default, []).append(item)
    return groups


async def generate(
    lm: AudioLanguageModel,
    policy: Policy,
    arms: Sequence[Arm],
    items: Sequence[EvalItem],
    results: ResultsFile,
    options: RunOptions,
) -> None:
    """Generate every missing (arm, item) response into ``results``."""
    from tqdm import tqdm

    todo = [(a, i) for i in items for a in arms if not results.done(a.name, i.key)]
    if not todo:
        return
    engine = guard_engine_kwargs(options.engine)
    with tqdm(
        total=len(todo),
        desc="generating",
        unit="turn",
        disable=not options.progress,
        file=sys.stderr,
    ) as bar:
        for prompt, group in prompt_groups(items, options.prompt).items():
            keys = {item.key for item in group}
            pending = [(a, i) for (a, i) in todo if i.key in keys]
            if pending:
                await _run_group(lm, policy, pending, results, options, prompt, engine, bar)


async def _run_group(
    lm: AudioLanguageModel,
    policy: Policy,
    pending: Sequence[tuple[Arm, EvalItem]],
    results: ResultsFile,
    options: RunOptions,
    prompt: str | None,
    engine: dict[str, Any],
    bar: Any,
) -> None:
    from sarsteer_guard.guard.core import Guard

    budget = options.generation.max_new_tokens
    guard = Guard(
        lm,
        policy,
        options.store,
        None,
        vectors=options.vectors,
        max_queue=max(64, 2 * options.concurrency),
        max_new_tokens=budget,
        max_new_tokens_cap=budget,
        turn_prompt=prompt,
        watch_policy=False,
        progress=options.progress,
        **engine,
    )
    gate = asyncio.Semaphore(options.concurrency)
    async with guard:
        try:
            async with asyncio.TaskGroup() as tasks:
                for arm, item in pending:
                    tasks.create_task(_turn(guard, arm, item, results, gate, budget, bar, prompt))
        except BaseExceptionGroup as group:  # one loud failure stops the run: say which
            raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup[Any]) -> BaseException:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            return _first_error(error)
        if isinstance(error, GuardError):
            return error
    return group.exceptions[0]


async def _turn(
    guard: Any,
    arm: Arm,
    item: EvalItem,
    results: ResultsFile,
    gate: asyncio.Semaphore,
    budget: int,
    bar: Any,
    prompt: str | None,
) -> None:
    async with gate:
        record = await _respond(guard, arm, item, budget, prompt)
    _check_steering(arm, item, record)
    results.add_turn(record)
    bar.update(1)


async def _respond(
    guard: Any, arm: Arm, item: EvalItem, budget: int, prompt: str | None
) -> dict[str, Any]:
    from sarsteer_guard.audio.decode import read_audio
    from sarsteer_guard.guard.events import Turn, TurnDecision, TurnError

    base: dict[str, Any] = {
        "arm": arm.name,
        "item": item.key,
        "kind": item.kind,
        "category": item.category,
        "prompt": prompt,  # None: the policy's calibration prompt
    }
    if item.item.audio is None:
        return {**base, "error": {"kind": "audio", "message": "the item has no audio file"}}
    try:
        audio, rate = await asyncio.to_thread(read_audio, item.item.audio)
    except AudioError as error:
        return {**base, "error": {"kind": error.kind, "message": one_line(error)}}
    turn = Turn(
        audio=audio,
        sample_rate=rate,
        sample_format="float32",
        session_id=f"eval:{arm.name}:{item.key}",
        context=dict(arm.context),
        history=(),
        max_new_tokens=budget,
    )
    decision: TurnDecision | None = None
    failure: TurnError | None = None
    async for event in guard.respond(turn):
        if isinstance(event, TurnDecision):
            decision = event
        elif isinstance(event, TurnError):
            failure = event
    if decision is None:
        message = failure.message if failure is not None else "no decision"
        kind = failure.kind if failure is not None else "model"
        return {**base, "error": {"kind": kind, "message": message}}
    return {**base, **_decision_fields(decision)}


def _decision_fields(decision: TurnDecision) -> dict[str, Any]:
    return {
        "text": decision.model_text,
        "guard_refused": decision.refused,
        "refusal_keyword": decision.refusal_keyword,
        "refusal_score": decision.refusal_score,
        "rule": decision.rule,
        "alpha": decision.alpha,
        "steered": decision.steered,
        "vector_set": decision.vector_set_id,
        "tokens": decision.tokens,
        "flags": list(decision.flags),
        "total_ms": decision.timings.total_ms,
        "first_token_ms": decision.timings.first_token_ms,
        "error": None,
    }


def _check_steering(arm: Arm, item: EvalItem, record: dict[str, Any]) -> None:
    """Stop the run when a turn's steering is not what the arm is meant to measure."""
    if record.get("error") is not None:
        return
    flags = record.get("flags") or []
    if arm.expect_steering and (not record["steered"] or "vectors_unavailable" in flags):
        why = (
            "the vectors were unavailable"
            if "vectors_unavailable" in flags
            else (f"rule {record.get('rule') or 'defaults'} decided alpha {record.get('alpha')}")
        )
        raise GuardError(
            f"the {arm.name!r} arm ({arm.label}) did not steer {item.key} ({why}); fix the "
            "vectors or the setting and rerun: a steered result must come from a steered model"
        )
    if not arm.expect_steering and record["steered"]:
        raise GuardError(
            f"the {arm.name!r} arm should not steer, but {item.key} was steered (rule "
            f"{record.get('rule')}); the context key eval_setting must not be used by the policy"
        )


def judge_pending(
    results: ResultsFile,
    arms: Sequence[Arm],
    items: Sequence[EvalItem],
    judge: Judge,
    *,
    progress: bool = True,
) -> int:
    """Score every stored response the judge has not scored yet; returns how many."""
    from tqdm import tqdm

    todo: list[tuple[Arm, EvalItem, dict[str, Any]]] = []
    for arm in arms:
        for item in items:
            record = results.turn(arm.name, item.key)
            if record is None or record.get("error") is not None:
                continue
            if results.verdict(judge.id, arm.name, item.key) is None:
                todo.append((arm, item, record))
    if not todo:
        return 0
    judge.load()
    try:
        with tqdm(
            total=len(todo), desc="judging", unit="turn", disable=not progress, file=sys.stderr
        ) as bar:
            for start in range(0, len(todo), judge.batch_size):
                chunk = todo[start : start + judge.batch_size]
                inputs = [JudgeInput(item.request, record["text"]) for _, item, record in chunk]
                for (arm, item, _), verdict in zip(chunk, judge.judge(inputs), strict=True):
                    results.add_verdict(
                        {
                            "judge": judge.id,
                            "arm": arm.name,
                            "item": item.key,
                            "answered": verdict.answered,
                            "detail": verdict.detail,
                        }
                    )
                bar.update(len(chunk))
    finally:
        judge.close()
    return len(todo)


def outcomes(
    results: ResultsFile, arm: Arm, items: Iterable[EvalItem], judge_id: str
) -> list[Outcome]:
    """The arm's judged outcomes, in item order (failed turns kept, marked failed)."""
    out = []
    for item in items:
        record = results.turn(arm.name, item.key)
        if record is None:
            continue
        if record.get("error") is not None:
            out.append(Outcome(item.key, item.kind, item.category, None, failed=True))
            continue
        verdict = results.verdict(judge_id, arm.name, item.key)
        out.append(
            Outcome(
                item.key,
                item.kind,
                item.category,
                None if verdict is None else verdict["answered"],
                total_ms=record.get("total_ms"),
                first_token_ms=record.get("first_token_ms"),
            )
        )
    return out


def items_digest(items: Sequence[EvalItem]) -> str:
    """Identity of an item list: keys, requests, prompts, audio paths and sizes."""
    h = hashlib.sha256(b"sarsteer-guard eval items v1\n")
    for item in items:
        audio = item.item.audio
        size = audio.stat().st_size if audio is not None and audio.exists() else -1
        h.update(f"{item.key}\t{item.request}\t{item.prompt}\t{audio}\t{size}\n".encode())
    return h.hexdigest()
