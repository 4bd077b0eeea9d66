"""Hot reload: watch a policy file and swap in valid edits, keep the last good on bad ones.

A background thread waits on ``watchfiles`` events for the file's folder (editors
replace files by rename, and Kubernetes ConfigMaps swap a ``..data`` symlink, so the
folder is watched rather than the file) and, on every event and every
``poll_interval_s`` without one, compares the file's bytes hash with the policy in
force. The periodic check is the fallback for bind mounts and network filesystems
where change events never arrive. A thread rather than an asyncio task keeps the
watcher usable from synchronous code; asyncio code uses ``async with`` and reads
``.current``, which is a plain attribute swap (atomic).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal

from prometheus_client import Counter

from sarsteer_guard.errors import PolicyError
from sarsteer_guard.log import get_logger
from sarsteer_guard.policy.loader import policy_from_bytes, read_policy_bytes
from sarsteer_guard.policy.model import Policy

Backend = Literal["auto", "watchfiles", "poll"]

POLICY_RELOADS = Counter(
    "sarsteer_policy_reloads_total",
    "Policy file reloads by result: swapped (a valid edit is in force) or rejected (invalid "
    "edit, last good policy kept).",
    ["result"],
)

# Create both label values up front so dashboards show zeros rather than no series.
POLICY_RELOADS.labels(result="swapped")
POLICY_RELOADS.labels(result="rejected")

_log = get_logger("sarsteer_guard.policy")
_Stat = tuple[int, int, int, int]


def _stat(path: str) -> _Stat | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _same_version_warning(old: Policy | None, new: Policy) -> str | None:
    """A sentence when a reload changed the content but kept ``name@version``.

    Auditors read ``name@version`` in every record; two different policies under one
    label make the log ambiguous (the content hash still tells them apart).
    """
    if old is None or old.ref != new.ref or old.content_hash == new.content_hash:
        return None
    return (
        f"the policy changed (sha256 {old.content_hash[:12]} -> {new.content_hash[:12]}) but "
        f"is still {new.ref}; raise version: so audit records can tell the two apart"
    )


class PolicyWatcher:
    """Keeps ``.current`` equal to the last valid version of a policy file.

    Args:
        path: The policy file.
        on_change: Called with the new policy after each swap, from the watcher thread
            (asyncio code should hop with ``loop.call_soon_threadsafe``).
        accept: Called with a valid candidate *before* it is swapped in (the Guard checks
            it against the loaded model and prewarms its vectors); an exception rejects
            the edit like invalid YAML: the last good policy stays in force.
        debounce_s: How long a changed file must stay unchanged before it is read,
            so a half-written save is not judged.
        poll_interval_s: Period of the hash check that catches changes without events.
        backend: ``auto`` (watchfiles events plus the periodic check, polling only if
            watchfiles cannot start), ``watchfiles`` or ``poll`` (periodic check only).

    Attributes:
        reload_count: Valid edits swapped in since ``start()``.
        reject_count: Invalid edits refused (each distinct bad content counts once).
        last_error: The message of the last refused edit, or None.
        last_warning: Set by a swap whose content changed but whose ``name@version`` did
            not (also logged as ``policy.version_unchanged``); None after a clean swap.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        on_change: Callable[[Policy], object] | None = None,
        debounce_s: float = 0.2,
        poll_interval_s: float = 1.0,
        *,
        backend: Backend = "auto",
        accept: Callable[[Policy], object] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.on_change = on_change
        self.accept = accept
        self.debounce_s = max(0.0, debounce_s)
        self.poll_interval_s = max(0.01, poll_interval_s)
        self.backend: Backend = backend
        self.reload_count = 0
        self.reject_count = 0
        self.last_error: str | None = None
        self.last_warning: str | None = None
        self._policy: Policy | None = None
        self._digest: str | None = None
        self._stat: _Stat | None = None
        self._missing = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.backend_in_use: str | None = None

    # ------------------------------------------------------------------ public

    @property
    def current(self) -> Policy:
        """The policy in force (the last valid version of the file).

        The first read loads the file if ``start()`` has not yet done so.

        Raises:
            PolicyError: The file is invalid and no policy was loaded before.
        """
        policy = self._policy
        if policy is None:
            policy = self._load_first()
        return policy

    def _load_first(self) -> Policy:
        with self._lock:
            if self._policy is None:
                stat = _stat(self.path)
                policy = policy_from_bytes(read_policy_bytes(self.path), source=self.path)
                self._policy, self._digest, self._stat = policy, policy.content_hash, stat
                _log.info(
                    "policy.loaded",
                    path=self.path,
                    policy=policy.ref,
                    hash=policy.content_hash[:12],
                )
            return self._policy

    @property
    def running(self) -> bool:
        """Whether the watcher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> PolicyWatcher:
        """Load the policy and start watching; a second call does nothing.

        Raises:
            PolicyError: The file is invalid now (there is no last good policy to keep).
        """
        if self.running:
            return self
        self._load_first()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"policy-watcher:{Path(self.path).name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching (the last policy stays readable); a second call does nothing."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def check_now(self, *, settle: bool = True) -> bool:
        """Compare the file with the policy in force and swap in a valid change.

        Args:
            settle: Wait until the file has stopped changing (``debounce_s``) first.

        Returns:
            True when a new policy was swapped in.
        """
        with self._lock:
            stat = _stat(self.path)
            if stat is None:
                if not self._missing:
                    self._missing = True
                    _log.warning(
                        "policy.missing", path=self.path, detail="keeping the last good policy"
                    )
                return False
            self._missing = False
            if settle and stat != self._stat:
                stat = self._settle(stat)
            try:
                data = read_policy_bytes(self.path)
            except PolicyError as error:
                return self._reject(str(error), None)
            self._stat = stat
            digest = hashlib.sha256(data).hexdigest()
            if digest == self._digest:
                return False
            self._digest = digest
            if self._policy is not None and digest == self._policy.content_hash:
                # A bad edit was undone: the policy in force is the file again.
                self.last_error = None
                return False
            try:
                policy = policy_from_bytes(data, source=self.path)
                if self.accept is not None:
                    self.accept(policy)
            except PolicyError as error:
                return self._reject(str(error), getattr(error, "problems", None))
            except Exception as error:  # a failed acceptance check rejects the edit too
                return self._reject(f"{type(error).__name__}: {error}", None)
            old, self._policy = self._policy, policy
            self.reload_count += 1
            self.last_error = None
            self.last_warning = warning = _same_version_warning(old, policy)
        POLICY_RELOADS.labels(result="swapped").inc()
        if warning is not None:
            _log.warning("policy.version_unchanged", path=self.path, detail=warning)
        _log.info(
            "policy.reloaded",
            path=self.path,
            policy=policy.ref,
            hash=policy.content_hash[:12],
            previous=old.ref if old is not None else None,
        )
        if self.on_change is not None:
            try:
                self.on_change(policy)
            except Exception:  # a faulty callback must not stop the watcher
                _log.exception("policy.on_change_failed", path=self.path)
        return True

    # ------------------------------------------------------------------ context managers

    def __enter__(self) -> PolicyWatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> PolicyWatcher:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------------ internals

    def _settle(self, stat: _Stat) -> _Stat:
        for _ in range(20):
            if self.debounce_s == 0 or self._stop.wait(self.debounce_s):
                break
            again = _stat(self.path)
            if again is None or again == stat:
                break
            stat = again
        return stat

    def _reject(self, message: str, problems: list[str] | None) -> bool:
        self.reject_count += 1
        self.last_error = message
        POLICY_RELOADS.labels(result="rejected").inc()
        _log.warning(
            "policy.rejected",
            path=self.path,
            error=message,
            problems=problems,
            kept=self._policy.ref if self._policy is not None else None,
        )
        return False

    def _safe_check(self, *, settle: bool) -> None:
        try:
            self.check_now(settle=settle)
        except Exception:  # keep watching whatever happens; the last good policy stays
            _log.exception("policy.check_failed", path=self.path)

    def _run(self) -> None:
        if self.backend != "poll":
            try:
                self._run_watchfiles()
                return
            except Exception as error:
                if self.backend == "watchfiles":
                    _log.exception("policy.watch_failed", path=self.path)
                    return
                _log.warning("policy.watch_unavailable", path=self.path, error=str(error))
        self._run_poll()

    def _run_poll(self) -> None:
        self.backend_in_use = "poll"
        while not self._stop.wait(self.poll_interval_s):
            self._safe_check(settle=True)

    def _run_watchfiles(self) -> None:
        import watchfiles

        folder = str(Path(self.path).resolve().parent)
        self.backend_in_use = "watchfiles"
        for changes in watchfiles.watch(
            folder,
            watch_filter=None,
            debounce=max(1, int(self.debounce_s * 1000)),
            step=50,
            stop_event=self._stop,
            rust_timeout=max(1, int(self.poll_interval_s * 1000)),
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
        ):
            if self._stop.is_set():
                break
            # Events are already debounced by watchfiles; a timeout (no changes) is the
            # periodic check for filesystems that send no events.
            self._safe_check(settle=not changes)
