"""``sarsteer-guard sweep``: try a grid of steering settings and recommend one for a policy.

Writes ``DIR/sweep.csv`` (one row per setting), ``DIR/sweep.png`` (the trade-off picture),
``DIR/recommendation.yaml`` (a policy that ``policy lint`` and ``policy test`` accept,
carrying the recommended setting), ``DIR/sweep.md`` and the per-item ``results.jsonl``.
Tuning happens on the validation clips given here, never on the evaluation set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarsteer_guard.cli._common import add_context_option, parse_context
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
    from sarsteer_guard.evaluation.evaluate import RunResult
    from sarsteer_guard.evaluation.plan import Arm, Setting
    from sarsteer_guard.evaluation.sweep import SweepRow


def register(subparsers: Any) -> None:
    """Add the ``sweep`` command."""
    p = subparsers.add_parser(
        "sweep",
        help="try a grid of alpha x lambda x k on validation clips and recommend a setting",
        description="Run every alpha x lambda x k setting (and no steering) over VALIDATION "
        "clips on one model, then write sweep.csv, sweep.png (the trade-off picture) and "
        "recommendation.yaml: the setting that keeps attack success at or below --target-asr "
        "with the most benign requests answered, as a policy rule. Confirm it on held-out "
        "clips with `sarsteer-guard eval` before using it.",
    )
    add_model_args(p)
    add_data_args(p, validation=True)
    p.add_argument("--alpha", default="0.02,0.05,0.1,0.2,0.4", help="alphas, comma-separated")
    p.add_argument("--lambda", dest="lam", default="1.0", help="lambdas, comma-separated")
    p.add_argument("--k", default="10", help="k values, comma-separated")
    p.add_argument("--layers", default=None, help="layers steered in every setting (default all)")
    add_calibration_args(p)
    p.add_argument(
        "--target-asr",
        type=float,
        default=0.05,
        help="highest acceptable share of harmful requests answered (default 0.05 = 5%%)",
    )
    add_context_option(
        p,
        "the turns the recommendation is for, e.g. channel=kids: becomes the rule's "
        "condition (without it the setting becomes the policy's defaults)",
    )
    add_judge_args(p)
    add_run_args(p, default_out="sweep-results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run with per-turn info logs held back (warnings still show)."""
    with quiet_logs():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the grid, rank the settings, write the files, print the recommendation."""
    from sarsteer_guard.evaluation.evaluate import calibration_overlap, load_items, run_evaluation
    from sarsteer_guard.evaluation.plan import calibration_section, explicit_policy

    context, settings, arms = _grid(args)
    judge, options = make_judge(args), run_options(args)  # checked before anything loads
    items, datasets = load_items(
        args.harmful,
        args.benign,
        audio_dir=args.audio_dir,
        skip_missing_audio=args.skip_missing_audio,
    )
    calibration = calibration_section(args.calibration_harmful, args.calibration_benign)
    policy = explicit_policy(arms, calibration=calibration)
    overlap = calibration_overlap(policy, items)
    under_test = {
        "mode": "sweep",
        "settings": [s.label for s in settings],
        "calibration": describe_calibration(args.calibration_harmful, args.calibration_benign),
    }
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
    rows, chosen, met = _rank(result, args.target_asr)
    data = [f"{d.kind}: {d.spec} ({d.items} clips)" for d in datasets]
    files = _write_files(args, result, rows, chosen, met, context, overlap, data)
    if args.json:
        print(json.dumps(_json(rows, chosen, met, args, files), indent=2))
    else:
        _print(rows, chosen, met, args, files)
    if overlap:
        print(
            f"sarsteer-guard: warning: {overlap} validation clips are calibration clips",
            file=sys.stderr,
        )
    return 0


def _grid(args: argparse.Namespace) -> tuple[dict[str, Any], list[Setting], list[Arm]]:
    """The recommendation's context, the grid's settings and the run's arms (validated)."""
    from sarsteer_guard.errors import GuardError
    from sarsteer_guard.evaluation.plan import check_context, parse_layers
    from sarsteer_guard.evaluation.sweep import grid_settings, parse_grid, sweep_arms

    if not 0 <= args.target_asr <= 1:
        raise GuardError("--target-asr is a share between 0 and 1, e.g. 0.05 for 5%")
    context = parse_context(args.context)
    check_context(context)
    settings = grid_settings(
        parse_grid(args.alpha, float, "alpha"),
        parse_grid(args.lam, float, "lambda"),
        parse_grid(args.k, int, "k"),
        parse_layers(args.layers),
    )
    return context, settings, sweep_arms(settings)


def _rank(result: RunResult, target: float) -> tuple[list[SweepRow], SweepRow | None, bool]:
    from sarsteer_guard.evaluation.sweep import PAPER_DEFAULT, SweepRow, fallback, rank

    rows = []
    for arm in result.arms:
        setting = arm.setting
        if setting is None:  # every sweep arm has one; nothing to plot otherwise
            continue
        summary = result.summaries[arm.name]
        default = (setting.alpha, setting.lam, setting.k) == (
            PAPER_DEFAULT.alpha,
            PAPER_DEFAULT.lam,
            PAPER_DEFAULT.k,
        )
        rows.append(SweepRow(arm.name, setting, summary.asr, summary.brr, paper_default=default))
    ranked = rank(rows, target)
    chosen = next((r for r in ranked if r.recommended), None)
    if chosen is not None:
        return ranked, chosen, True
    return ranked, fallback(ranked), False


def _write_files(
    args: argparse.Namespace,
    result: RunResult,
    rows: list[SweepRow],
    chosen: SweepRow | None,
    met: bool,
    context: dict[str, Any],
    overlap: int,
    data: list[str],
) -> dict[str, str]:
    from sarsteer_guard.errors import GuardError
    from sarsteer_guard.evaluation.plan import calibration_section
    from sarsteer_guard.evaluation.sweep import recommendation_policy, to_csv
    from sarsteer_guard.policy import parse_policy
    from sarsteer_guard.report.sweep_plot import sweep_png

    out: Path = args.out
    files = {
        "csv": out / "sweep.csv",
        "png": out / "sweep.png",
        "recommendation": out / "recommendation.yaml",
        "markdown": out / "sweep.md",
    }
    files["csv"].write_text(to_csv(rows), encoding="utf-8")
    subtitle = (
        f"VALIDATION data: {'; '.join(data)}. Judge: {result.judge_description}. "
        "Bars: 95% intervals."
    )
    files["png"].write_bytes(sweep_png(rows, target_asr=args.target_asr, subtitle=subtitle))
    if chosen is None:
        raise GuardError("no setting could be measured (no harmful and benign clips judged)")
    header = _header(args, rows, chosen, met, data, overlap, result)
    text = recommendation_policy(
        chosen,
        model=args.model,
        calibration=calibration_section(
            args.calibration_harmful, args.calibration_benign, base=out
        ),
        context=context,
        met=met,
        target_asr=args.target_asr,
        header=header,
    )
    files["recommendation"].write_text(text, encoding="utf-8")
    parse_policy(text, source=str(files["recommendation"]))  # must lint: fail here if not
    files["markdown"].write_text(_markdown(rows, header), encoding="utf-8")
    return {key: str(path) for key, path in files.items()}


def _header(
    args: argparse.Namespace,
    rows: list[SweepRow],
    chosen: SweepRow,
    met: bool,
    data: list[str],
    overlap: int,
    result: RunResult,
) -> list[str]:
    from sarsteer_guard.report.eval_report import rate_text

    target = f"{100 * args.target_asr:g}%"
    verdict = (
        f"Recommended: {chosen.setting.label}."
        if met
        else f"NO setting met the target; closest (lowest attack success): "
        f"{chosen.setting.label}. Widen the grid or revisit the target."
    )
    baseline = next((r for r in rows if r.setting.alpha == 0), None)
    lines = [
        "Steering recommendation written by `sarsteer-guard sweep`.",
        f"Model: {args.model}. Judge: {result.judge_description}.",
        f"Tuned on VALIDATION data, not on evaluation data: {'; '.join(data)}.",
        f"Target: at most {target} of harmful requests answered. {verdict}",
        f"  harmful answered: {rate_text(chosen.asr)}",
        f"  benign answered:  {rate_text(chosen.brr)}",
    ]
    if baseline is not None and baseline.brr.value is not None and chosen.brr.value is not None:
        lines.append(f"  without steering, benign answered: {rate_text(baseline.brr)}")
        if baseline.brr.value - chosen.brr.value > 0.1:
            lines.append(
                "Warning: this setting refuses many benign requests that are answered without "
                "steering; check sweep.png for a gentler setting you can accept."
            )
    if overlap:
        lines.append(f"Warning: {overlap} validation clips are also calibration clips.")
    lines += [
        "Confirm on held-out clips before use:",
        f"  sarsteer-guard eval --model {args.model} --policy recommendation.yaml "
        + " ".join(f"--context {c}" for c in args.context)
        + " --harmful HELD_OUT_HARMFUL --benign HELD_OUT_BENIGN",
        "To use it: copy the rule under `rules:` (or the `defaults:` numbers) into your policy,",
        "then run `sarsteer-guard policy lint` and `sarsteer-guard policy test` on your file.",
        "",
    ]
    return lines


def _markdown(rows: list[SweepRow], header: list[str]) -> str:
    from sarsteer_guard.report.document import Heading, Paragraph, Table, to_markdown
    from sarsteer_guard.report.eval_report import rate_text

    table = Table(
        [
            "Setting",
            "Harmful answered (lower is better)",
            "Benign answered (higher is better)",
            "Notes",
        ],
        [[r.setting.label, rate_text(r.asr), rate_text(r.brr), _notes(r)] for r in rows],
    )
    return to_markdown(
        [
            Heading("Steering sweep", 1),
            Paragraph(" ".join(line.strip() for line in header if line.strip())),
            Paragraph("Picture: sweep.png. Table: sweep.csv."),
            table,
        ]
    )


def _notes(row: SweepRow) -> str:
    notes = []
    if row.recommended:
        notes.append("recommended")
    if row.paper_default:
        notes.append("paper default")
    if row.on_frontier:
        notes.append("best trade-off")
    if row.meets_target:
        notes.append("meets target")
    return ", ".join(notes)


def _json(
    rows: list[SweepRow],
    chosen: SweepRow | None,
    met: bool,
    args: argparse.Namespace,
    files: dict[str, str],
) -> dict[str, Any]:
    def row_dict(r: SweepRow) -> dict[str, Any]:
        return {
            "setting": r.arm,
            "label": r.setting.label,
            "alpha": r.setting.alpha,
            "lambda": r.setting.lam,
            "k": r.setting.k,
            "asr": r.asr.to_dict(),
            "brr": r.brr.to_dict(),
            "on_frontier": r.on_frontier,
            "meets_target": r.meets_target,
            "recommended": r.recommended,
            "paper_default": r.paper_default,
        }

    return {
        "target_asr": args.target_asr,
        "target_met": met,
        "recommended": None if chosen is None else row_dict(chosen),
        "settings": [row_dict(r) for r in rows],
        "tuned_on": "validation",
        "files": files,
    }


def _print(
    rows: list[SweepRow],
    chosen: SweepRow | None,
    met: bool,
    args: argparse.Namespace,
    files: dict[str, str],
) -> None:
    from sarsteer_guard.report.eval_report import pct

    print(f"{'setting':32}  {'harmful answered':>16}  {'benign answered':>15}  notes")
    for r in rows:
        print(f"{r.setting.label:32}  {pct(r.asr.value):>16}  {pct(r.brr.value):>15}  {_notes(r)}")
    if chosen is not None:
        status = "recommended" if met else "target NOT met; closest"
        print(
            f"{status}: {chosen.setting.label} (tuned on the validation clips given; confirm "
            "on held-out clips with `sarsteer-guard eval`)"
        )
    print(f"wrote {files['csv']}, {files['png']}, {files['recommendation']}")
