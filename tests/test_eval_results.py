"""The per-item results file: resume, repair after a kill mid-write, refuse another run's file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sarsteer_guard.errors import GuardError
from sarsteer_guard.evaluation.results import ResultsFile

CONFIG = {"model": "tiny-planted", "arms": ["unsteered", "steered"], "items": "abc"}


def test_records_are_read_back_by_a_new_run(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path, CONFIG) as first:
        first.add_turn({"arm": "steered", "item": "harmful:a", "text": "No.", "error": None})
        first.add_turn({"arm": "steered", "item": "harmful:b", "error": {"kind": "audio"}})
        first.add_verdict(
            {"judge": "detector", "arm": "steered", "item": "harmful:a", "answered": False}
        )
    with ResultsFile(path, dict(CONFIG)) as again:
        assert again.done("steered", "harmful:a")
        assert not again.done("steered", "harmful:b")  # a failed turn is retried
        assert not again.done("unsteered", "harmful:a")
        verdict = again.verdict("detector", "steered", "harmful:a")
        assert verdict is not None
        assert verdict["answered"] is False
        assert again.verdict("reference-strings", "steered", "harmful:a") is None
        again.add_turn({"arm": "steered", "item": "harmful:b", "text": "Sure", "error": None})
        assert again.done("steered", "harmful:b")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "run"
    assert len(lines) == 5


def test_a_half_written_last_line_is_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path, CONFIG) as first:
        first.add_turn({"arm": "a", "item": "x", "text": "ok", "error": None})
    with path.open("a") as handle:
        handle.write('{"type": "turn", "arm": "a", "item": "y", "te')  # killed mid-write
    with ResultsFile(path, CONFIG) as again:
        assert again.done("a", "x")
        assert not again.done("a", "y")
        again.add_turn({"arm": "a", "item": "y", "text": "ok", "error": None})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r.get("item") for r in records] == [None, "x", "y"]


def test_another_runs_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path, CONFIG):
        pass
    changed = {**CONFIG, "model": "tiny"}
    with pytest.raises(GuardError, match="another run's results \\(model differ"):
        ResultsFile(path, changed).open()


def test_a_damaged_line_in_the_middle_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path, CONFIG) as first:
        first.add_turn({"arm": "a", "item": "x", "error": None})
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], "garbage{", text[1]]) + "\n")
    with pytest.raises(GuardError, match=r"results.jsonl:2: not a results record"):
        ResultsFile(path, CONFIG).open()
