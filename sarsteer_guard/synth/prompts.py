"""Prompt lists: one request per line, an optional tab-separated category column.

``text<TAB>category`` or just ``text``; blank lines and lines starting with ``#`` are skipped.
No torch, no audio here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sarsteer_guard.errors import ManifestError


@dataclass(frozen=True)
class Prompt:
    """One request to speak; ``line`` is where it came from (0 when built in code)."""

    text: str
    category: str | None = None
    line: int = 0


def parse_prompts(text: str, where: str = "<prompts>") -> list[Prompt]:
    """Parse a prompt list; a line with more than two tab-separated columns is an error.

    Raises:
        ManifestError: ``where:LINE: problem; fix`` for a malformed line or an empty list.
    """
    prompts: list[Prompt] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        columns = [c.strip() for c in raw.rstrip("\r\n").split("\t")]
        if len(columns) > 2:
            raise ManifestError(
                f"{where}:{line_no}: {len(columns)} tab-separated columns; write "
                f"'text' or 'text<TAB>category'"
            )
        if not columns[0]:
            raise ManifestError(f"{where}:{line_no}: empty request text; write the request first")
        category = columns[1] if len(columns) == 2 and columns[1] else None
        prompts.append(Prompt(text=columns[0], category=category, line=line_no))
    if not prompts:
        raise ManifestError(f"{where}: no prompts; write one request per line")
    return prompts


def read_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read and parse a prompt list file (UTF-8)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ManifestError(f"{p}: prompt list not found; check the path") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{p}: cannot read prompt list ({error}); save it as UTF-8") from error
    return parse_prompts(text, str(p))
