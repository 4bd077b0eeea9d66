"""``serve`` on the command line: no abbreviations, no echoed secrets, a busy port, log format.

Issue 10 items 18 (abbreviations, ``--token``), 19 (bind before loading, print the URL) and
20 (one log renderer; JSON for ``serve``, readable lines on a terminal elsewhere).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from sarsteer_guard.cli import build_parser, main
from sarsteer_guard.log import configure_logging, resolve_format
from sarsteer_guard.server.testing import free_port

SECRET = "s3cr3t-value-that-must-not-leak"  # noqa: S105 - a test value


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_no_parser_of_the_cli_accepts_abbreviations() -> None:
    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10
    assert [p.prog for p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--token", SECRET],
        ["serve", f"--token={SECRET}"],
        ["serve", "--tok", SECRET],  # a prefix of --token-file: no longer matched
        ["serve", "--token-f", SECRET],
    ],
)
def test_a_token_on_the_command_line_is_refused_and_never_echoed(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out = capsys.readouterr()
    assert SECRET not in out.err + out.out
    if argv[1].startswith("--token") and not argv[1].startswith("--token-f"):
        assert out.err.count("\n") == 1
        assert "SARSTEER_GUARD_TOKEN" in out.err
        assert "--token-file" in out.err


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SARSTEER_")}
    return subprocess.Popen(
        [sys.executable, "-m", "sarsteer_guard", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**base, **(env or {})},
    )


def _lines_until(proc: subprocess.Popen[str], needle: str, timeout_s: float = 60) -> list[str]:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: [lines.put(x) for x in stream], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.2))
        except queue.Empty:
            continue
        if needle in seen[-1]:
            return seen
    raise AssertionError(f"{needle!r} never logged; got {seen}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)


def test_a_busy_port_fails_in_one_line_with_exit_2_before_loading() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # A model that does not exist: had the server loaded first, this would fail instead.
        proc = _serve("--port", str(port), "--model", "/nonexistent/model-dir")
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [err.strip()], err
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert "--port" in err


def test_serve_logs_json_by_default_and_the_url_once_ready() -> None:
    port = free_port()
    proc = _serve("--scripted", "--port", str(port))
    try:
        lines = _lines_until(proc, "server.guard_ready")
    finally:
        _stop(proc)
    records = [json.loads(line) for line in lines]  # every line is JSON, none raw
    ready = records[-1]
    assert ready["url"] == f"ws://127.0.0.1:{port}/v1/turns"


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--log-format", "text"], {}), ([], {"SARSTEER_LOG_FORMAT": "text"})],
    ids=["flag", "env"],
)
def test_serve_logs_readable_lines_when_asked(args: list[str], env: dict[str, str]) -> None:
    proc = _serve("--scripted", "--port", str(free_port()), *args, env=env)
    try:
        lines = _lines_until(proc, "server.guard_ready")
    finally:
        _stop(proc)
    assert not any(line.lstrip().startswith("{") for line in lines)
    assert "url=ws://127.0.0.1:" in lines[-1]


def test_an_unknown_log_format_is_one_line_exit_2() -> None:
    proc = _serve("--scripted", "--port", str(free_port()), env={"SARSTEER_LOG_FORMAT": "xml"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip() == (
        "sarsteer-guard: error: SARSTEER_LOG_FORMAT='xml' is not a log format: use json or text"
    )


def test_log_format_precedence() -> None:
    assert resolve_format(environ={}, tty=True) == "text"  # a person at a terminal
    assert resolve_format(environ={}, tty=False) == "json"  # a pipe, a log collector
    assert resolve_format(default="json", environ={}, tty=True) == "json"  # serve
    assert resolve_format(default="json", environ={"SARSTEER_LOG_FORMAT": "text"}) == "text"
    assert resolve_format("json", environ={"SARSTEER_LOG_FORMAT": "text"}) == "json"
    assert resolve_format(environ={"SARSTEER_LOG_JSON": "1"}, tty=True) == "json"
    with pytest.raises(ValueError, match="use json or text"):
        resolve_format(environ={"SARSTEER_LOG_FORMAT": "yaml"})


def test_uvicorn_lines_go_through_the_same_renderer(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        configure_logging(fmt="json")
        logging.getLogger("uvicorn.error").error(
            "ASGI callable returned without completing handshake."
        )
        err = capsys.readouterr().err.strip().splitlines()
        record = json.loads(err[-1])
        assert record["event"] == "ASGI callable returned without completing handshake."
        assert record["level"] == "error"
        assert record["logger"] == "uvicorn.error"
        configure_logging(fmt="json")  # configuring twice never doubles a line
        logging.getLogger("uvicorn.error").warning("once")
        assert capsys.readouterr().err.count("once") == 1
    finally:
        configure_logging()


@pytest.mark.parametrize("command", [["serve"], ["respond", "--audio", "clip.wav"]])
def test_guarding_commands_need_an_explicit_model(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 23: no silent default to the random ``tiny``; the flag is named."""
    from sarsteer_guard.cli import main

    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{command[0]} needs --model" in err
