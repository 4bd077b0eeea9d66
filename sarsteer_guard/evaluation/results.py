"""The per-item results file: JSON lines, appended and synced one record at a time.

A run can be killed at any moment and rerun with the same command: finished turns and
verdicts are read back and skipped, a half-written last line (the kill landed mid-write)
is cut off, and only what is missing is done. The first line records the run's
configuration (model, steering settings, data, generation); a rerun with a different
configuration into the same file is refused rather than mixing two runs' numbers.

Records (``type``):

- ``run``: the header: ``config`` and its ``config_digest``.
- ``turn``: one generated response (or its error) for one item under one arm.
- ``verdict``: one judge's verdict on one turn; several judges can score the same turns.

The latest record for a key wins, so a retried failed turn simply follows its error.
No torch here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

from sarsteer_guard.errors import GuardError

FORMAT_VERSION = 1

Key = tuple[str, str]  # (arm, item)


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a run configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResultsFile:
    """Append-only JSONL of one run; ``open()`` reads back what an earlier run finished."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.config = config
        self.digest = config_digest(config)
        self._turns: dict[Key, dict[str, Any]] = {}
        self._verdicts: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._handle: IO[str] | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def open(self) -> None:
        """Read an existing file (checking it is this run's) or start a new one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            self._read_back()
        self._handle = self.path.open("a", encoding="utf-8")
        if fresh:
            self._write(
                {
                    "type": "run",
                    "format": FORMAT_VERSION,
                    "config_digest": self.digest,
                    "config": self.config,
                }
            )

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultsFile:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------
    def turn(self, arm: str, item: str) -> dict[str, Any] | None:
        """The latest turn record for ``(arm, item)``, if any."""
        return self._turns.get((arm, item))

    def done(self, arm: str, item: str) -> bool:
        """Whether ``(arm, item)`` has a response (a failed turn is not done)."""
        record = self._turns.get((arm, item))
        return record is not None and record.get("error") is None

    def verdict(self, judge: str, arm: str, item: str) -> dict[str, Any] | None:
        """The latest verdict of ``judge`` on ``(arm, item)``, if any."""
        return self._verdicts.get((judge, arm, item))

    @property
    def turns(self) -> dict[Key, dict[str, Any]]:
        """Every latest turn record by ``(arm, item)``."""
        return dict(self._turns)

    # -- writing ----------------------------------------------------------------------------
    def add_turn(self, record: dict[str, Any]) -> None:
        """Append a ``turn`` record (keys ``arm`` and ``item`` required)."""
        record = {"type": "turn", **record}
        self._write(record)
        self._turns[(record["arm"], record["item"])] = record

    def add_verdict(self, record: dict[str, Any]) -> None:
        """Append a ``verdict`` record (keys ``judge``, ``arm``, ``item`` required)."""
        record = {"type": "verdict", **record}
        self._write(record)
        self._verdicts[(record["judge"], record["arm"], record["item"])] = record

    def _write(self, record: dict[str, Any]) -> None:
        if self._handle is None:
            raise GuardError("the results file is not open")  # a programming error
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _read_back(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # killed mid-write: drop the partial last line
            with self.path.open("r+b") as handle:
                handle.truncate(end)
            data = data[:end]
        for number, raw in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as error:
                raise GuardError(
                    f"{self.path}:{number}: not a results record ({error.msg}); the file is "
                    "damaged: delete it (or choose another --out) and run again"
                ) from error
            self._take(record, number)

    def _take(self, record: dict[str, Any], number: int) -> None:
        kind = record.get("type")
        if kind == "run":
            if record.get("config_digest") != self.digest:
                changed = _changed_keys(record.get("config") or {}, self.config)
                raise GuardError(
                    f"{self.path} holds another run's results ({', '.join(changed) or 'config'} "
                    "differ); use another --out folder, or delete it to start over"
                )
        elif kind == "turn":
            self._turns[(record["arm"], record["item"])] = record
        elif kind == "verdict":
            self._verdicts[(record["judge"], record["arm"], record["item"])] = record
        else:
            raise GuardError(f"{self.path}:{number}: unknown record type {kind!r}")


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [key for key in keys if old.get(key) != new.get(key)]
