"""``sarsteer-guard policy``: lint, explain and test policy files; print their JSON Schema.

These commands are for the people who edit policies and for CI, so output is plain
lines (``file:line:column: ...`` for problems, which editors and CI annotate) and
nothing here imports torch.

``--context key=value`` values are typed as described in :mod:`sarsteer_guard.cli._common`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sarsteer_guard.cli._common import ContextValue, DeprecatedAlias, parse_context_item
from sarsteer_guard.errors import GuardError, PolicyError
from sarsteer_guard.policy import (
    Explanation,
    Policy,
    PolicyDecision,
    load_policy,
    policy_json_schema,
    run_policy_tests,
)
from sarsteer_guard.policy.conditions import show


def _context_item(text: str) -> tuple[str, ContextValue]:
    """The ``type=`` of ``--context``: argparse then reports the one-line error itself."""
    try:
        return parse_context_item(text)
    except GuardError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


# --------------------------------------------------------------------------- lint


def _summary(policy: Policy) -> str:
    return (
        f"{policy.ref}, {len(policy.rules)} rule{'s' if len(policy.rules) != 1 else ''}, "
        f"{len(policy.tests)} test{'s' if len(policy.tests) != 1 else ''}, "
        f"sha256 {policy.content_hash[:12]}"
    )


def _problems(error: PolicyError) -> list[str]:
    problems = getattr(error, "problems", None)
    return list(problems) if problems else [str(error)]


def _lint(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as error:
            failed = True
            for problem in _problems(error):
                print(f"fail  {problem}")
            continue
        for warning in policy.warnings:
            print(f"warn  {warning}")
        if args.strict and policy.warnings:
            failed = True
            print(f"fail  {path}: {len(policy.warnings)} warning(s) and --strict was given")
            continue
        print(f"ok    {path} ({_summary(policy)})")
    return 2 if failed else 0


# --------------------------------------------------------------------------- explain


def _steering_line(d: PolicyDecision) -> str:
    if not d.steered:
        alpha = "alpha 0 (steering off)"
    else:
        alpha = f"alpha {d.alpha:g}" + (f" (preset {d.preset})" if d.preset else "")
    return (
        f"{alpha}, lambda {d.lam:g}, k {d.k}, layers {d.layers}, beta {d.beta}, "
        f"positions {d.steer_positions}"
    )


def _explain_text(policy: Policy, context: dict[str, Any], exp: Explanation) -> str:
    d = exp.decision
    shown_context = ", ".join(f"{k}={show(v)}" for k, v in context.items()) or "(empty)"
    if d.rule is None:
        rule = "none: the defaults apply"
    else:
        rule = f"{d.rule} (rule {(d.rule_index or 0) + 1} of {len(policy.rules)})"
    lines = [
        f"policy    {policy.ref} (sha256 {policy.content_hash[:12]}, {policy.source})",
        f"context   {shown_context}",
        f"rule      {rule}",
        f"why       {exp.reason}",
    ]
    skipped = [c for c in exp.checks if not c.matched]
    if skipped:
        lines.append("skipped   " + skipped[0].rule + ": " + skipped[0].reason)
        lines += [f"          {c.rule}: {c.reason}" for c in skipped[1:]]
    mode = d.mode + (" (the unsteered answer is served; this is only recorded)" if d.shadow else "")
    refusal = f'message "{d.refusal_message}"' if d.refusal_message else "the model's own words"
    extra = [k for k in d.detector_keywords if k != d.refusal_message]
    if extra:
        refusal += "; extra keywords: " + ", ".join(f'"{k}"' for k in extra)
    a = d.audit
    audit = f"record {a.record}, keep_audio {show(a.keep_audio)}, retention {a.retention_days} days"
    if a.hash_fields:
        audit += ", hash " + ", ".join(a.hash_fields)
    if a.drop_fields:
        audit += ", drop " + ", ".join(a.drop_fields)
    lines += [
        f"steering  {_steering_line(d)}",
        f"mode      {mode}",
        f"refusal   {refusal}",
        f"audit     {audit}",
        f"failure   {d.failure_mode}",
        f"vectors   {d.vector_key()} (depends on calibration, k and lambda; not alpha)",
    ]
    if d.system_prompt:
        lines.append(f'system    "{d.system_prompt}"')
    return "\n".join(lines)


def _explain(args: argparse.Namespace) -> int:
    policy = load_policy(args.file)
    context = dict(args.context or [])
    explanation = policy.explain(context)
    if args.json:
        out = {"context": context, **explanation.to_dict()}
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print(_explain_text(policy, context, explanation))
    return 0


# --------------------------------------------------------------------------- test


def _test(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as error:
            for problem in _problems(error):
                print(f"fail  {problem}")
            status = 2
            continue
        results = run_policy_tests(policy)
        if not results:
            print(f"warn  {path}: no tests: add a tests: list so changes can be checked")
        for result in results:
            if result.passed:
                print(f"pass  {path}: {result.name}")
            else:
                status = max(status, 1)
                print(f"fail  {path}: {result.name}: " + "; ".join(result.failures))
        passed = sum(r.passed for r in results)
        print(f"      {path}: {passed}/{len(results)} passed")
    return status


# --------------------------------------------------------------------------- schema


def _schema(args: argparse.Namespace) -> int:
    text = json.dumps(policy_json_schema(), indent=2, ensure_ascii=False)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
        except OSError as error:
            raise PolicyError(
                f"{args.output}: cannot write the schema ({error.strerror}); check the path"
            ) from None
    else:
        sys.stdout.write(text + "\n")
    return 0


def register(subparsers: Any) -> None:
    """Add ``policy lint|explain|test|schema`` to the CLI."""
    parser = subparsers.add_parser(
        "policy",
        help="lint, explain and test policy files",
        description="Work with YAML steering policies (see docs/policies.md).",
    )
    actions = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    lint = actions.add_parser(
        "lint",
        help="validate policy files",
        description="Validate policy files. Prints 'ok' or the problems as file:line:column; "
        "exits 2 if any file is invalid.",
    )
    lint.add_argument("files", nargs="+", metavar="FILE")
    lint.add_argument("--strict", action="store_true", help="treat warnings as failures")
    lint.set_defaults(func=_lint)

    explain = actions.add_parser(
        "explain",
        help="show which rule a turn matches and the steering it gets",
        description="Show which rule matches a turn's context, why, and the resulting steering. "
        "Values: true/false are booleans, 13 an integer, 0.5 a number, anything else text; "
        'quote to keep text ("02139").',
    )
    explain.add_argument("file", metavar="FILE")
    explain.add_argument(
        "--context",
        "-c",
        action="append",
        type=_context_item,
        metavar="KEY=VALUE",
        help="a context value of the turn; repeat for several",
    )
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.set_defaults(func=_explain)

    test = actions.add_parser(
        "test",
        help="run the tests written in policy files",
        description="Run each file's tests: list. Exits 1 if a test fails, 2 if a file is invalid.",
    )
    test.add_argument("files", nargs="+", metavar="FILE")
    test.set_defaults(func=_test)

    schema = actions.add_parser(
        "schema",
        help="print the JSON Schema of policy files (for editor plugins)",
        description="Print the JSON Schema of the policy format, for YAML editor plugins.",
    )
    schema.add_argument(
        "--out", "-o", dest="output", metavar="FILE", help="write to FILE instead of stdout"
    )
    schema.add_argument("--output", dest="output", action=DeprecatedAlias, replacement="--out")
    schema.set_defaults(func=_schema)
