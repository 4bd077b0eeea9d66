"""One evaluation run end to end: load items and model, generate, judge, summarise.

Used by ``sarsteer-guard eval`` (arms: no steering and the configuration under test) and
``sarsteer-guard sweep`` (arms: no steering and every grid setting). The returned
:class:`RunResult` carries everything the Markdown/HTML reports and ``--json`` print.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarsteer_guard.errors import GuardError
from sarsteer_guard.evaluation.datasets import read_spec
from sarsteer_guard.evaluation.judges import Judge
from sarsteer_guard.evaluation.metrics import ArmSummary, Kind, summarize
from sarsteer_guard.evaluation.plan import Arm, EvalItem
from sarsteer_guard.evaluation.results import ResultsFile
from sarsteer_guard.evaluation.runner import (
    RunOptions,
    generate,
    items_digest,
    judge_pending,
    outcomes,
)

if TYPE_CHECKING:
    from sarsteer_guard.policy import Policy


@dataclass(frozen=True)
class DataSet:
    """One evaluated set as the report describes it."""

    kind: Kind
    spec: str
    items: int
    skipped: int = 0


@dataclass
class RunResult:
    """What a finished run measured, and under which configuration."""

    config: dict[str, Any]
    summaries: dict[str, ArmSummary]
    arms: list[Arm]
    items: list[EvalItem]
    results: ResultsFile
    judge_id: str
    judge_description: str
    observed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    test_model: bool = False


def load_items(
    harmful: str | None,
    benign: str | None,
    *,
    audio_dir: str | None = None,
    skip_missing_audio: bool = False,
) -> tuple[list[EvalItem], list[DataSet]]:
    """Harmful then benign items from manifests or ``FORMAT:PATH`` released sets.

    Raises:
        GuardError: neither set given, a set without audio, or a bad file (``file:line``).
    """
    if harmful is None and benign is None:
        raise GuardError("give --harmful and/or --benign: the requests to evaluate")
    items: list[EvalItem] = []
    sets: list[DataSet] = []
    kinds: tuple[tuple[Kind, str | None], ...] = (("harmful", harmful), ("benign", benign))
    for kind, spec in kinds:
        if spec is None:
            continue
        read, skipped = read_spec(spec, audio_dir=audio_dir, skip_missing_audio=skip_missing_audio)
        for entry in read:
            if entry.audio is None:
                raise GuardError(
                    f"{entry.source}: item {entry.id!r} has no audio; evaluation plays clips"
                )
            items.append(EvalItem(kind, entry))
        sets.append(DataSet(kind, spec, len(read), len(skipped)))
    return items, sets


def calibration_overlap(policy: Policy, items: Sequence[EvalItem]) -> int:
    """How many evaluated clips are byte-identical to the policy's calibration clips."""
    from sarsteer_guard.manifest import load_manifest

    paths = policy.manifest_paths()
    if paths is None:
        return 0
    calibration: set[str] = set()
    for manifest in paths:
        for entry in load_manifest(manifest):
            if entry.audio is not None:
                calibration.add(_sha256(entry.audio))
    return sum(
        1
        for item in items
        if item.item.audio is not None and _sha256(item.item.audio) in calibration
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_evaluation(
    *,
    model: str,
    policy: Policy,
    arms: Sequence[Arm],
    items: Sequence[EvalItem],
    judge: Judge,
    out_dir: Path,
    options: RunOptions,
    under_test: dict[str, Any],
) -> RunResult:
    """Load the model, generate what is missing, judge what is unjudged, summarise.

    ``under_test`` is what the report says was evaluated (settings, policy, context). It
    is part of the run's identity with the model, policy, items and generation, so a
    changed configuration never resumes into an old results file (the judge is not:
    another judge re-scores stored responses).
    """
    from sarsteer_guard.models import BUILTIN_MODELS, load_model

    options.generation.check()
    _check_requests(judge, items)
    lm = load_model(model)
    config = {
        "model": model,
        "model_fingerprint": lm.fingerprint,
        "engine": options.engine,
        "policy_hash": policy.content_hash,
        "under_test": under_test,
        "arms": [{"name": a.name, "context": dict(a.context), "label": a.label} for a in arms],
        "items": items_digest(items),
        "prompt": options.prompt,
        "vectors": None if options.vectors is None else _sha256(options.vectors),
        "generation": options.generation.describe(),
    }
    results = ResultsFile(out_dir / "results.jsonl", config)
    with results:
        asyncio.run(generate(lm, policy, arms, items, results, options))
        judge_pending(results, arms, items, judge, progress=options.progress)
    summaries = {arm.name: summarize(outcomes(results, arm, items, judge.id)) for arm in arms}
    return RunResult(
        config=config,
        summaries=summaries,
        arms=list(arms),
        items=list(items),
        results=results,
        judge_id=judge.id,
        judge_description=judge.description,
        observed={arm.name: _observed(results, arm, items) for arm in arms},
        test_model=bool(getattr(lm, "is_test_model", lm.model_id in BUILTIN_MODELS)),
    )


def _check_requests(judge: Judge, items: Sequence[EvalItem]) -> None:
    if not judge.needs_request:
        return
    for item in items:
        if not item.request:
            raise GuardError(
                f"{item.item.source}: the {judge.id.split(':')[0]} judge needs each request's "
                "text; give the item a 'transcript' (what the clip says)"
            )


def _observed(results: ResultsFile, arm: Arm, items: Sequence[EvalItem]) -> list[dict[str, Any]]:
    """The rules and alphas the Guard actually applied to this arm's turns, with counts."""
    counts: dict[tuple[Any, Any, Any], int] = {}
    for item in items:
        record = results.turn(arm.name, item.key)
        if record is None or record.get("error") is not None:
            continue
        key = (record.get("rule"), record.get("alpha"), record.get("steered"))
        counts[key] = counts.get(key, 0) + 1
    return [
        {"rule": rule, "alpha": alpha, "steered": steered, "turns": n}
        for (rule, alpha, steered), n in counts.items()
    ]
