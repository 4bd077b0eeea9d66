"""One name per thing across every command (issue 10, item 21).

The tests walk the real parser tree, so a command added later is held to the same rules:
no ``--output`` (it is ``--out``), every default shown in help, ``--model`` naming the
``tiny-planted`` built-in, ``--context`` with ``-c``, ``--store`` meaning the vector store
and ``--audit`` the audit log, and every ``--json`` saying its shape.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sarsteer_guard.cli import build_parser, main
from sarsteer_guard.cli._common import DeprecatedAlias, has_default, subcommand_parsers


def _walk(
    parser: argparse.ArgumentParser, path: str = "sarsteer-guard"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _walk(child, f"{path} {name}")


PARSERS = list(_walk(build_parser()))
OPTIONS = [
    (path, parser, action)
    for path, parser in PARSERS
    for action in parser._actions
    if action.option_strings and action.help != argparse.SUPPRESS
]


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help line argparse prints for ``action``, %-expanded, on one line."""
    if not action.help:
        return ""  # argparse prints no help line at all
    return " ".join(parser._get_formatter()._expand_help(action).split())


def _named(flag: str) -> list[tuple[str, argparse.ArgumentParser, argparse.Action]]:
    return [o for o in OPTIONS if flag in o[2].option_strings]


def test_the_walk_sees_every_command() -> None:
    paths = {path for path, _ in PARSERS}
    for command in ("calibrate", "respond", "serve", "eval", "sweep", "demo", "segment"):
        assert f"sarsteer-guard {command}" in paths
    for nested in ("audit list", "audit serve", "vectors pull", "policy schema"):
        assert f"sarsteer-guard {nested}" in paths
    assert len(subcommand_parsers(build_parser())) >= 10


def test_no_command_offers_output_only_out() -> None:
    for path, parser in PARSERS:
        for action in parser._actions:
            if "--output" in action.option_strings:
                assert action.help == argparse.SUPPRESS, f"{path}: --output is shown"
                assert isinstance(action, DeprecatedAlias), f"{path}: --output is no alias"
                assert action.replacement == "--out"
    assert _named("--out")


def test_every_default_is_shown_in_help() -> None:
    missing = [
        f"{path} {action.option_strings[0]}: {_help(parser, action)!r}"
        for path, parser, action in OPTIONS
        if has_default(action) and "default" not in _help(parser, action).lower()
    ]
    assert missing == []


def test_formatter_shows_the_default_value_itself() -> None:
    parser = dict(PARSERS)["sarsteer-guard calibrate"]
    (batch,) = [a for a in parser._actions if "--batch-size" in a.option_strings]
    assert "(default: 8)" in _help(parser, batch)
    assert "(default: 8)" in " ".join(parser.format_help().split())


def test_model_help_names_tiny_planted() -> None:
    models = _named("--model")
    assert {path.split()[1] for path, _, _ in models} >= {
        "calibrate",
        "respond",
        "serve",
        "eval",
        "sweep",
        "demo",
    }
    for path, parser, action in models:
        assert "tiny-planted" in _help(parser, action), path


def test_context_is_context_or_c_everywhere() -> None:
    contexts = _named("--context")
    assert {path.split()[1] for path, _, _ in contexts} >= {"respond", "eval", "sweep", "policy"}
    for path, _, action in contexts:
        assert "-c" in action.option_strings, path


def test_store_means_vectors_and_audit_means_the_audit_log() -> None:
    for path, parser, action in _named("--store"):
        assert "vector" in _help(parser, action).lower(), path
        assert not path.startswith("sarsteer-guard audit"), f"{path}: --store is shown"
    audits = _named("--audit")
    assert {path.split()[1] for path, _, _ in audits} >= {"respond", "serve", "audit"}
    for path, parser, action in audits:
        assert "audit log" in _help(parser, action), path


def test_every_json_switch_says_its_shape() -> None:
    switches = _named("--json")
    assert len(switches) >= 8
    for path, parser, action in switches:
        text = _help(parser, action)
        assert "one JSON object" in text or "per line" in text, f"{path}: {text!r}"


def test_output_alias_still_works_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "schema.json"
    assert main(["policy", "schema", "--output", str(target)]) == 0
    assert json.loads(target.read_text(encoding="utf-8"))["title"]
    err = capsys.readouterr().err.splitlines()
    assert err == ["sarsteer-guard: note: --output is deprecated; use --out"]
    assert main(["policy", "schema", "--out", str(tmp_path / "b.json")]) == 0
    assert capsys.readouterr().err == ""
