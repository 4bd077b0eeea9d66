"""Calibration manifests: JSONL lists of spoken requests.

One JSON object per line; blank lines and lines starting with ``#`` are ignored.
Keys (anything else is an error, so a typo such as ``"adio"`` cannot silently turn
an audio item into a text-only one):

- ``audio``: path of the clip, relative to the manifest file (absolute paths work
  too). May be omitted for text-only calibration (then ``text`` or ``transcript`` is
  required: a line with none of the three says nothing).
- ``text``: prompt override for this item (else the calibration default prompt).
- ``id``: unique item id; defaults to ``<manifest stem>:<line number>``.
- ``transcript``: what is said in the clip: for reviewers, and the request text in
  text-only calibration (when there is no ``text``).
- ``category``: a label such as ``fraud`` or ``weather``, used by evaluation reports to
  break results down; not part of the digest (relabelling does not change vectors).

:attr:`Manifest.digest` hashes each item's id, text, transcript and the audio file's
*bytes*, so steering vectors can record exactly which calibration they came from and
re-synthesised audio shows up as a different calibration. No torch here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarsteer_guard.errors import ManifestError

#: Keys a manifest line may carry.
MANIFEST_KEYS = ("audio", "id", "text", "transcript", "category")

#: Directory of the calibration set shipped with the package.
SHIPPED_CALIBRATION_DIR = Path(__file__).resolve().parent / "data" / "calibration"


@dataclass(frozen=True)
class ManifestItem:
    """One calibration item; ``audio`` is absolute once loaded (None in text-only mode).

    ``manifest`` and ``line`` say where the item came from, for error messages.
    """

    id: str
    audio: Path | None = None
    text: str | None = None
    transcript: str | None = None
    line: int = 0
    manifest: Path | None = None
    category: str | None = None

    @property
    def source(self) -> str:
        """``manifest:LINE`` when loaded from a file, else the item id."""
        return f"{self.manifest}:{self.line}" if self.manifest is not None else self.id


@dataclass(frozen=True)
class Manifest:
    """A loaded manifest: its path and items in file order."""

    path: Path
    items: tuple[ManifestItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ManifestItem]:
        return iter(self.items)

    @property
    def has_audio(self) -> bool:
        """True when every item has an audio file (False means some are text-only)."""
        return all(item.audio is not None for item in self.items)

    @functools.cached_property
    def digest(self) -> str:
        """sha256 hex over items' id, text, transcript and audio bytes, in order.

        Computed once per Manifest (audio is read then); load again after editing files.
        """
        return manifest_digest(self.items)


def manifest_digest(items: Iterable[ManifestItem]) -> str:
    """Digest of items as :attr:`Manifest.digest` defines it (audio paths must exist)."""
    outer = hashlib.sha256(b"sarsteer-guard manifest v1\n")
    for item in items:
        fields = json.dumps([item.id, item.text, item.transcript], ensure_ascii=False)
        outer.update(fields.encode("utf-8") + b"\n")
        if item.audio is None:
            outer.update(b"no-audio\n")
            continue
        audio_hash = hashlib.sha256()
        try:
            with item.audio.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    audio_hash.update(block)
        except OSError as error:
            raise ManifestError(
                f"{item.audio}: cannot read audio for item {item.id!r} ({error.strerror}); "
                f"restore the file or reload the manifest"
            ) from error
        outer.update(audio_hash.digest() + b"\n")
    return outer.hexdigest()


def _type_name(value: object) -> str:
    return {dict: "object", list: "array", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _check_clip_header(audio: Path, label: str) -> None:
    """Refuse a clip whose header claims less than 0.1 s or more than the model hears.

    A small file can claim hours of audio (a decompression bomb); calibration would
    decode at most the cap and then fail, after the model had loaded. Unreadable files
    pass here: decoding them names the problem.
    """
    from sarsteer_guard.audio import MAX_CLIP_S, MIN_CLIP_S, header_seconds
    from sarsteer_guard.audio.limits import describe_duration

    seconds = header_seconds(audio)
    if seconds is not None and seconds < MIN_CLIP_S - 0.001:
        raise ManifestError(
            f"{label} is {seconds * 1000:.0f} ms long but clips must be at least "
            f"{MIN_CLIP_S:g} s (shorter ones fail inside the model); re-record or remove it"
        )
    if seconds is not None and seconds > MAX_CLIP_S:
        raise ManifestError(
            f"{label} is {describe_duration(seconds)} long but calibration clips may be at "
            f"most {MAX_CLIP_S:g} s (what the model hears); cut it into shorter clips"
        )


def _parse_line(
    raw: str, where: str, line_no: int, manifest: Path, seen: dict[str, int]
) -> ManifestItem:
    """Validate one JSONL line; every message is ``file:LINE: problem; fix``."""
    try:
        obj: Any = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ManifestError(
            f"{where}:{line_no}: invalid JSON ({error.msg} at column {error.colno}); "
            f'write one JSON object per line, e.g. {{"audio": "clip.flac"}}'
        ) from error
    if not isinstance(obj, dict):
        raise ManifestError(
            f"{where}:{line_no}: expected a JSON object, got {_type_name(obj)}; "
            f'write e.g. {{"audio": "clip.flac"}}'
        )
    unknown = sorted(set(obj) - set(MANIFEST_KEYS))
    if unknown:
        raise ManifestError(
            f"{where}:{line_no}: unknown key {unknown[0]!r}; allowed keys are "
            f"{', '.join(MANIFEST_KEYS)} (fix the spelling or remove it)"
        )
    for key in MANIFEST_KEYS:
        if key in obj and not isinstance(obj[key], str):
            raise ManifestError(
                f"{where}:{line_no}: {key!r} must be a string, got {_type_name(obj[key])}; "
                f"quote the value"
            )
        if key in obj and not obj[key].strip():
            raise ManifestError(
                f"{where}:{line_no}: {key!r} is empty; give a value or remove the key"
            )
    if not {"audio", "text", "transcript"} & set(obj):
        raise ManifestError(
            f"{where}:{line_no}: item has no 'audio', 'text' or 'transcript'; add the clip "
            f"path (relative to the manifest) or the request text"
        )
    audio: Path | None = None
    if "audio" in obj:
        audio = (manifest.parent / obj["audio"]).resolve()
        if not audio.is_file():
            raise ManifestError(
                f"{where}:{line_no}: audio file {obj['audio']!r} not found (looked for "
                f"{audio}); fix the path, which is relative to the manifest file"
            )
        _check_clip_header(audio, f"{where}:{line_no}: audio file {obj['audio']!r}")
    item_id = obj.get("id", f"{manifest.stem}:{line_no}")
    if item_id in seen:
        raise ManifestError(
            f"{where}:{line_no}: duplicate id {item_id!r} (first used on line "
            f"{seen[item_id]}); give every item a unique id"
        )
    seen[item_id] = line_no
    return ManifestItem(
        id=item_id,
        audio=audio,
        text=obj.get("text"),
        transcript=obj.get("transcript"),
        line=line_no,
        manifest=manifest,
        category=obj.get("category"),
    )


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Load and validate a JSONL manifest; audio paths become absolute.

    Raises:
        ManifestError: unreadable file, no items, or a bad line (``file:LINE: ...``).
    """
    p = Path(path)
    where = " ".join(str(p).split())
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ManifestError(f"{where}: manifest not found; check the path") from error
    except UnicodeDecodeError as error:
        raise ManifestError(f"{where}: manifest is not UTF-8 text; save it as UTF-8") from error
    except OSError as error:
        raise ManifestError(
            f"{where}: cannot read manifest ({error.strerror}); check the path and permissions"
        ) from error
    resolved = p.resolve()
    seen: dict[str, int] = {}
    items: list[ManifestItem] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        items.append(_parse_line(stripped, where, line_no, resolved, seen))
    if not items:
        raise ManifestError(
            f"{where}: manifest has no items; add one JSON object per line, "
            f'e.g. {{"audio": "a.flac"}}'
        )
    return Manifest(path=resolved, items=tuple(items))


def write_manifest(
    path: str | os.PathLike[str], items: Iterable[ManifestItem], *, header: str | None = None
) -> None:
    """Write items as JSONL, audio paths relative to the manifest's directory.

    ``header`` lines are written as ``#`` comments. Keys are written in a fixed order
    and without ASCII escaping, so regenerated manifests diff cleanly.
    """
    p = Path(path)
    base = p.resolve().parent
    lines: list[str] = [f"# {line}".rstrip() for line in (header or "").splitlines()]
    for item in items:
        obj: dict[str, str] = {"id": item.id}
        if item.audio is not None:
            audio = Path(item.audio)
            absolute = audio if audio.is_absolute() else (base / audio)
            obj["audio"] = Path(os.path.relpath(absolute.resolve(), base)).as_posix()
        if item.text is not None:
            obj["text"] = item.text
        if item.transcript is not None:
            obj["transcript"] = item.transcript
        if item.category is not None:
            obj["category"] = item.category
        lines.append(json.dumps(obj, ensure_ascii=False))
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")


def shipped_manifest(name: str) -> Path:
    """Path of a shipped calibration manifest: ``"harmful"`` or ``"benign"``."""
    if name not in ("harmful", "benign"):
        raise ManifestError(f"no shipped manifest {name!r}; use 'harmful' or 'benign'")
    return SHIPPED_CALIBRATION_DIR / f"{name}.jsonl"
