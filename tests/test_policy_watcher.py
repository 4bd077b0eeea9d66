"""Hot reload with real files: valid edits swap in, invalid edits keep the last good policy."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sarsteer_guard.errors import PolicyError
from sarsteer_guard.policy import Policy, PolicyWatcher
from sarsteer_guard.policy.watcher import POLICY_RELOADS


def policy_text(alpha: float, version: str = "1") -> str:
    return (
        f'name: live\nversion: "{version}"\nmodel: m\ncalibration: {{}}\n'
        f"defaults:\n  alpha: {alpha}\n"
    )


def write(path: Path, text: str) -> None:
    """Replace the file the way editors do: write a temporary file, then rename it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def counter(result: str) -> float:
    return POLICY_RELOADS.labels(result=result)._value.get()  # type: ignore[no-any-return]  # prometheus internals


def test_check_now_swaps_valid_edits_and_refuses_invalid_ones(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(policy_text(0.1))
    seen: list[Policy] = []
    watcher = PolicyWatcher(path, on_change=seen.append, debounce_s=0)
    first = watcher.current  # loads on first read, before start()
    assert first.evaluate({}).alpha == 0.1
    assert watcher.reload_count == 0
    swapped_before, rejected_before = counter("swapped"), counter("rejected")

    write(path, policy_text(0.2, "2"))
    assert watcher.check_now() is True
    assert watcher.current.evaluate({}).alpha == 0.2
    assert watcher.current.version == "2"
    assert seen == [watcher.current]
    assert watcher.reload_count == 1

    write(path, policy_text(0.2, "2") + "defaults:\n  alpha: 99\n")  # duplicate key: invalid
    assert watcher.check_now() is False
    assert watcher.current.version == "2"  # the last good policy stays
    assert watcher.reject_count == 1
    assert watcher.last_error is not None
    assert watcher.last_error.startswith(f"{path}:7:1: ")
    assert watcher.check_now() is False
    assert watcher.reject_count == 1

    path.write_text(policy_text(0.2, "2"))  # the bad edit undone: same bytes, no reload
    assert watcher.check_now() is False
    assert watcher.reload_count == 1
    assert watcher.last_error is None
    assert counter("swapped") - swapped_before == 1
    assert counter("rejected") - rejected_before == 1


def test_polling_thread_reloads_and_keeps_last_good(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(policy_text(0.1))
    with PolicyWatcher(path, debounce_s=0.01, poll_interval_s=0.02, backend="poll") as watcher:
        assert watcher.running
        assert watcher.backend_in_use in (None, "poll")
        write(path, policy_text(0.3, "2"))
        assert wait_for(lambda: watcher.reload_count == 1)
        assert watcher.current.evaluate({}).alpha == 0.3
        write(path, "name: [broken\n")
        assert wait_for(lambda: watcher.reject_count == 1)
        assert watcher.current.version == "2"
        path.unlink()  # a vanished file keeps the last good policy too
        time.sleep(0.1)
        assert watcher.current.version == "2"
        write(path, policy_text(0.05, "3"))
        assert wait_for(lambda: watcher.reload_count == 2)
        assert watcher.current.version == "3"
    assert not watcher.running
    watcher.stop()  # idempotent


def test_watchfiles_events_reload(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(policy_text(0.1))
    # A long poll interval: only a watchfiles event can trigger the reload in time.
    watcher = PolicyWatcher(path, debounce_s=0.05, poll_interval_s=30, backend="watchfiles")
    watcher.start()
    try:
        assert wait_for(lambda: watcher.backend_in_use == "watchfiles")
        time.sleep(0.3)  # let the OS watch be registered
        write(path, policy_text(0.25, "2"))
        assert wait_for(lambda: watcher.reload_count == 1)
        assert watcher.current.evaluate({}).alpha == 0.25
    finally:
        watcher.stop()
    assert not watcher.running


def test_start_fails_on_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\n")
    with pytest.raises(PolicyError, match=r"bad\.yaml:1:1: "):
        PolicyWatcher(path).start()


async def test_usable_from_asyncio(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(policy_text(0.1))
    async with PolicyWatcher(path, poll_interval_s=0.02, debounce_s=0, backend="poll") as watcher:
        write(path, policy_text(0.4, "2"))
        for _ in range(500):
            if watcher.reload_count:
                break
            await asyncio.sleep(0.02)
        assert watcher.current.evaluate({}).alpha == 0.4
