"""Options shared by ``eval`` and ``sweep`` (no heavy imports at module level)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarsteer_guard.cli._common import MODEL_HELP, STORE_HELP, check_writable

if TYPE_CHECKING:
    from sarsteer_guard.evaluation.judges import Judge
    from sarsteer_guard.evaluation.runner import RunOptions


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--engine``, ``--store``."""
    p.add_argument(
        "--model",
        default="tiny",
        help=MODEL_HELP,
    )
    p.add_argument(
        "--engine", default="transformers", help="generation engine (default transformers)"
    )
    p.add_argument("--store", default=None, help=STORE_HELP)


def add_data_args(p: argparse.ArgumentParser, *, validation: bool = False) -> None:
    """``--harmful``, ``--benign``, ``--audio-dir``, ``--skip-missing-audio``."""
    which = "VALIDATION " if validation else ""
    spec = (
        "a manifest (JSONL) or FORMAT:PATH for a released set "
        "(figstep-audio, advbench-audio, sorry-bench, ajailbench, airbench-chat)"
    )
    p.add_argument("--harmful", default=None, help=f"{which}harmful requests: {spec}")
    p.add_argument("--benign", default=None, help=f"{which}benign requests: {spec}")
    p.add_argument("--audio-dir", default=None, help="folder of a released set's clips")
    p.add_argument(
        "--skip-missing-audio",
        action="store_true",
        help="skip released-set entries whose clip is missing (counted in the report)",
    )


def add_calibration_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--calibration-harmful`` / ``--calibration-benign`` (default: the shipped set)."""
    p.add_argument(
        "--calibration-harmful",
        type=Path,
        default=None,
        help="manifest of harmful calibration turns for the vectors (default: shipped set)",
    )
    p.add_argument(
        "--calibration-benign",
        type=Path,
        default=None,
        help="manifest of benign calibration turns for the vectors (default: shipped set)",
    )


def add_judge_args(p: argparse.ArgumentParser) -> None:
    """The judge and its options."""
    from sarsteer_guard.evaluation.judges import DEFAULT_KEY_ENV, JUDGES

    p.add_argument(
        "--judge",
        choices=JUDGES,
        default="detector",
        help="who decides whether a response answered the request (default: the guard's "
        "refusal detector; reference-strings = the paper's 43-signal string match)",
    )
    p.add_argument("--judge-path", default=None, help="local judge model folder (--judge local)")
    p.add_argument(
        "--judge-answered-label",
        default=None,
        help="a classifier judge's label that means 'answered' (default: found by name)",
    )
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL, e.g. .../v1")
    p.add_argument("--judge-model", default=None, help="model name at --judge-url")
    p.add_argument(
        "--judge-key-env",
        default=DEFAULT_KEY_ENV,
        help=f"environment variable holding the endpoint's API key (default {DEFAULT_KEY_ENV})",
    )


def add_run_args(p: argparse.ArgumentParser, *, default_out: str) -> None:
    """Generation, concurrency, output folder, progress and JSON switches."""
    from sarsteer_guard.defaults import DEFAULT_EVAL_MAX_NEW_TOKENS

    p.add_argument(
        "--generation",
        choices=("greedy", "checkpoint"),
        default="greedy",
        help="greedy decoding (default, the reference's budget) or the checkpoint's own "
        "sampling settings",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=DEFAULT_EVAL_MAX_NEW_TOKENS,
        help="longest answer per clip, in tokens",
    )
    p.add_argument("--prompt", default=None, help="text sent with each clip (default: policy's)")
    p.add_argument(
        "--concurrency", type=int, default=16, help="turns in flight at once (default 16)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path(default_out),
        help=f"output folder (default {default_out}); rerunning the same command resumes",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def make_judge(args: argparse.Namespace, extra_keywords: tuple[str, ...] = ()) -> Judge:
    """The judge the options name (checked, not loaded)."""
    from sarsteer_guard.evaluation.judges import make_judge as build

    return build(
        args.judge,
        path=args.judge_path,
        answered_label=args.judge_answered_label,
        url=args.judge_url,
        model=args.judge_model,
        key_env=args.judge_key_env,
        extra_keywords=extra_keywords,
    )


def run_options(args: argparse.Namespace, *, vectors: Path | None = None) -> RunOptions:
    """Run options from the parsed arguments (validated)."""
    from sarsteer_guard.errors import GuardError
    from sarsteer_guard.evaluation.runner import Generation, RunOptions, guard_engine_kwargs

    guard_engine_kwargs(args.engine)  # an engine this build lacks fails before any loading
    if not 1 <= args.concurrency <= 256:
        raise GuardError("--concurrency must be between 1 and 256")
    generation = Generation(mode=args.generation, max_new_tokens=args.max_new_tokens)
    generation.check()
    check_writable(args.out, "--out", folder=True)
    return RunOptions(
        engine=args.engine,
        store=args.store,
        vectors=vectors,
        prompt=args.prompt,
        generation=generation,
        concurrency=args.concurrency,
        progress=not args.no_progress,
    )


@contextmanager
def quiet_logs() -> Iterator[None]:
    """Warnings only while a run goes (per-turn info logs would bury the progress bars).

    Only the level filter changes, and it is restored afterwards: the log stream and
    format stay as configured (``SARSTEER_LOG_LEVEL`` still wins when set).
    """
    import logging
    import os

    import structlog

    from sarsteer_guard.log import get_logger

    get_logger(__name__)  # the default configuration first, if nothing configured it yet
    previous = structlog.get_config()["wrapper_class"]
    name = os.environ.get("SARSTEER_LOG_LEVEL", "WARNING").upper()
    level = logging.getLevelNamesMapping().get(name, logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        structlog.configure(wrapper_class=previous)


def describe_calibration(harmful: Path | None, benign: Path | None, vectors: Any = None) -> str:
    """Plain words for where the vectors come from."""
    if vectors is not None:
        return f"the vector file {vectors}"
    if harmful is None:
        return "the calibration set shipped with sarsteer-guard (64 harmful + 64 benign clips)"
    return f"calibration manifests {harmful} (harmful) and {benign} (benign)"
