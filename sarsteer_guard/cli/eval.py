"""``sarsteer-guard eval``: attack success and benign response rates, with and without steering.

Also ``sarsteer-guard dataset``: turn a released audio safety set (FigStep-audio,
AdvBench-audio, SORRY-Bench, AJailBench, AIR-Bench chat) into a manifest with categories.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarsteer_guard.cli._common import add_context_option, check_writable, parse_context
from sarsteer_guard.cli._eval_common import (
    add_calibration_args,
    add_data_args,
    add_judge_args,
    add_model_args,
    add_run_args,
    describe_calibration,
    make_judge,
    quiet_logs,
    run_options,
)

if TYPE_CHECKING:
    from sarsteer_guard.evaluation.evaluate import DataSet, RunResult
    from sarsteer_guard.evaluation.plan import Arm
    from sarsteer_guard.policy import Policy


def register(subparsers: Any) -> None:
    """Add the ``eval`` and ``dataset`` commands."""
    p = subparsers.add_parser(
        "eval",
        help="measure attack success and benign response rates, with and without steering",
        description="Answer every harmful and benign clip twice on one model, without "
        "steering and with the configuration under test (a policy and a context, or explicit "
        "alpha/lambda/k/layers), judge each response, and write a report with 95%% intervals "
        "overall and per category. Per-item results are kept: rerun the same command to "
        "resume after an interruption.",
    )
    add_model_args(p)
    add_data_args(p)
    g = p.add_argument_group("what is under test (a policy and context, or explicit numbers)")
    g.add_argument("--policy", type=Path, default=None, help="policy YAML to evaluate")
    add_context_option(g)
    g.add_argument("--alpha", type=float, default=None, help="steering strength (default 0.1)")
    g.add_argument("--lambda", dest="lam", type=float, default=None, help="default 1.0")
    g.add_argument("--k", type=int, default=None, help="benign directions removed (default 10)")
    g.add_argument("--layers", default=None, help="all (default) or e.g. 10-20,24")
    g.add_argument("--vectors", type=Path, default=None, help="a vector file from `calibrate`")
    add_calibration_args(g)
    add_judge_args(p)
    add_run_args(p, default_out="eval-results")
    p.set_defaults(func=run)

    d = subparsers.add_parser(
        "dataset",
        help="turn a released audio safety set into a manifest with categories",
        description="Read a released set's own metadata file and write a manifest (JSONL) "
        "that eval, sweep and calibrate read. Formats: figstep-audio (train/test JSON or "
        "audio_files.txt), advbench-audio (JSON), sorry-bench (JSONL), ajailbench (JSONL or "
        "a folder of clips), airbench-chat (Chat_meta.json).",
    )
    d.add_argument(
        "format", help="figstep-audio, advbench-audio, sorry-bench, ajailbench, airbench-chat"
    )
    d.add_argument("source", help="the set's metadata file (or folder of clips)")
    d.add_argument("--out", type=Path, required=True, help="manifest to write (JSONL)")
    d.add_argument("--audio-dir", default=None, help="folder of the clips, if elsewhere")
    d.add_argument(
        "--skip-missing-audio",
        action="store_true",
        help="skip entries whose clip is missing instead of failing",
    )
    d.set_defaults(func=run_dataset)


def run_dataset(args: argparse.Namespace) -> int:
    """Convert one released set to a manifest."""
    from sarsteer_guard.evaluation.datasets import read_dataset
    from sarsteer_guard.manifest import write_manifest

    check_writable(args.out, "--out")

    items, skipped = read_dataset(
        args.format,
        args.source,
        audio_dir=args.audio_dir,
        skip_missing_audio=args.skip_missing_audio,
    )
    write_manifest(args.out, items, header=f"converted from {args.format}:{args.source}")
    categories = len({item.category for item in items})
    print(
        f"wrote {len(items)} items in {categories} categories to {args.out}"
        + (f"; skipped {len(skipped)} with missing audio" if skipped else "")
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Run with per-turn info logs held back (warnings still show)."""
    with quiet_logs():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Check options, run the evaluation, write the reports, print the headline."""
    from sarsteer_guard.evaluation.evaluate import calibration_overlap, load_items, run_evaluation

    _check_exclusive(args)
    check_writable(args.out, "--out", folder=True)  # before items, judge or model load
    items, datasets = load_items(
        args.harmful,
        args.benign,
        audio_dir=args.audio_dir,
        skip_missing_audio=args.skip_missing_audio,
    )
    policy, arms, under_test, keywords = _under_test(args)
    judge = make_judge(args, keywords)
    options = run_options(args, vectors=args.vectors)
    overlap = 0 if args.vectors is not None else calibration_overlap(policy, items)
    result = run_evaluation(
        model=args.model,
        policy=policy,
        arms=arms,
        items=items,
        judge=judge,
        out_dir=args.out,
        options=options,
        under_test=under_test,
    )
    summary = _write_outputs(result, args, datasets, overlap)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(result, args.out)
    if overlap:
        print(
            f"sarsteer-guard: warning: {overlap} evaluated clips are calibration clips; the "
            "numbers are optimistic",
            file=sys.stderr,
        )
    if not arms[1].expect_steering:
        print(
            "sarsteer-guard: warning: the configuration under test does not steer (alpha 0), "
            "so both columns measure the unsteered model",
            file=sys.stderr,
        )
    return 0


def _check_exclusive(args: argparse.Namespace) -> None:
    from sarsteer_guard.errors import GuardError

    explicit = [
        name
        for name in ("alpha", "lam", "k", "layers", "calibration_harmful", "calibration_benign")
        if getattr(args, name) is not None
    ]
    if args.policy is not None and explicit:
        shown = "--" + explicit[0].replace("lam", "lambda").replace("_", "-")
        raise GuardError(
            f"{shown} and --policy both say what to steer; use --policy with --context, or "
            "explicit numbers without --policy"
        )
    if args.policy is None and args.context:
        raise GuardError("--context applies to --policy; add the policy file")
    if args.vectors is not None and (args.lam is not None or args.k is not None):
        raise GuardError("a vector file fixes lambda and k; drop --lambda/--k or --vectors")
    if args.alpha is not None and not 0 <= args.alpha <= 10:
        raise GuardError("--alpha must be between 0 and 10")
    if args.lam is not None and not 0 <= args.lam <= 1:
        raise GuardError("--lambda must be between 0 and 1")
    if args.k is not None and args.k < 0:
        raise GuardError("--k must be 0 or more")


def _under_test(
    args: argparse.Namespace,
) -> tuple[Policy, list[Arm], dict[str, Any], tuple[str, ...]]:
    """The evaluation policy, its two arms, and how the report describes them."""
    from sarsteer_guard.defaults import DEFAULT_ALPHA, DEFAULT_K, DEFAULT_LAMBDA
    from sarsteer_guard.evaluation.plan import (
        CONTEXT_KEY,
        STEERED,
        UNSTEERED,
        Arm,
        Setting,
        calibration_section,
        check_context,
        explicit_policy,
        parse_layers,
        policy_under_test,
    )
    from sarsteer_guard.policy import load_policy

    off = Arm(UNSTEERED, {CONTEXT_KEY: UNSTEERED}, Setting(0.0))
    if args.policy is not None:
        user = load_policy(args.policy)
        context = parse_context(args.context)
        check_context(context)
        steered_context = {**context, CONTEXT_KEY: STEERED}
        policy = policy_under_test(user, [off])
        alpha = policy.evaluate(steered_context).alpha
        arms = [off, Arm(STEERED, steered_context, None, expect_steering=alpha > 0)]
        under = {
            "mode": "policy",
            "policy": user.ref,
            "policy_file": str(args.policy),
            "policy_sha256": user.content_hash,
            "context": context,
            "calibration": _policy_calibration(user, args.vectors),
        }
        return policy, arms, under, tuple(user.refusal.detector_keywords)
    setting = Setting(
        DEFAULT_ALPHA if args.alpha is None else args.alpha,
        None if args.vectors is not None else (DEFAULT_LAMBDA if args.lam is None else args.lam),
        None if args.vectors is not None else (DEFAULT_K if args.k is None else args.k),
        parse_layers(args.layers),
    )
    arms = [off, Arm(STEERED, {CONTEXT_KEY: STEERED}, setting, setting.alpha > 0)]
    calibration = calibration_section(args.calibration_harmful, args.calibration_benign)
    under = {
        "mode": "settings",
        "setting": setting.label,
        "calibration": describe_calibration(
            args.calibration_harmful, args.calibration_benign, args.vectors
        ),
    }
    return explicit_policy(arms, calibration=calibration), arms, under, ()


def _policy_calibration(policy: Policy, vectors: Path | None) -> str:
    if vectors is not None:
        return describe_calibration(None, None, vectors)
    if policy.calibration.vector_set is not None:
        return f"the stored vector set {policy.calibration.vector_set}"
    paths = policy.manifest_paths()
    if paths is None or policy.calibration.builtin:
        return describe_calibration(None, None)
    return describe_calibration(paths[0], paths[1])


def _write_outputs(
    result: RunResult, args: argparse.Namespace, datasets: list[DataSet], overlap: int
) -> dict[str, Any]:
    from sarsteer_guard.report.document import to_html, to_markdown
    from sarsteer_guard.report.eval_report import EvalReportInfo, eval_blocks

    info = EvalReportInfo(model=args.model, datasets=datasets, overlap=overlap)
    blocks = eval_blocks(result, info)
    out: Path = args.out
    (out / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (out / "report.html").write_text(
        to_html(blocks, title=f"Steering evaluation: {args.model}"), encoding="utf-8"
    )
    summary = {
        "unsteered": result.summaries["unsteered"].to_dict(),
        "steered": result.summaries["steered"].to_dict(),
        "judge": result.judge_id,
        "generation": result.config["generation"],
        "model": args.model,
        "under_test": result.config["under_test"],
        "steering_applied": result.observed.get("steered", []),
        "calibration_overlap": overlap,
        "report": str(out / "report.html"),
        "results": str(result.results.path),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _print_table(result: RunResult, out: Path) -> None:
    from sarsteer_guard.report.eval_report import rate_text

    before, after = result.summaries["unsteered"], result.summaries["steered"]
    rows = [
        ("", "without steering", "with steering"),
        ("attack success rate", rate_text(before.asr), rate_text(after.asr)),
        ("benign response rate", rate_text(before.brr), rate_text(after.brr)),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    print(f"judge: {result.judge_description}")
    print(f"report: {out / 'report.html'} (also report.md, summary.json, results.jsonl)")
