"""Readers for the released audio safety sets the SARSteer paper used, into manifest items.

Each reader takes the set's own metadata file as released and returns
:class:`~sarsteer_guard.manifest.ManifestItem` values with absolute audio paths, the
request text as ``transcript`` and a ``category``, ready for ``write_manifest`` or for
``sarsteer-guard eval``. Nothing is downloaded and no data ships with the package: users
point a reader at their own copy.

- ``figstep-audio``: ``train_100.json`` / ``test_250.json`` (an array of ``scenario``,
  ``audio_file``, ``question``), clips in ``question/``, category = ``scenario``; or the
  ``audio_files.txt`` listing (``<file> <question-with-dashes>``), category = the file
  name without its ``_N`` suffix.
- ``advbench-audio``: ``advbench_audio.json`` (an array of ``question_id``,
  ``audio_name``, ``question``), clips in ``<json stem>/``, category = the file's stem.
- ``sorry-bench``: question JSONL (``question_id``, ``category``, ``turns[0]``), clips
  ``<jsonl stem>_audio/<question_id>.wav``, category = ``category``.
- ``ajailbench``: ``combined_output.jsonl`` (``index``, ``category``, ``prompt``,
  ``speech_path``; the path as written, else its file name in the audio folder), or a
  folder of ``.wav`` clips (the reference's subset), category = the file name without
  ``_N``.
- ``airbench-chat``: ``Chat_meta.json`` (an array of ``path``, ``task_name``,
  ``dataset_name``, ``question``, ``uniq_id``), clips ``<task>_<dataset>/<path>``,
  category = ``task_name``.

Audio folders are looked up next to the metadata file unless ``audio_dir`` is given.
AIR-Bench questions are text asked about the clip, so they become the item's ``text``
prompt; in every other set the question is what the clip says (``transcript``).
Problems are one line naming ``file:line`` and what to fix. Extra fields in the released
files are ignored (the sets carry more than the evaluation needs).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarsteer_guard.errors import ManifestError
from sarsteer_guard.manifest import ManifestItem, load_manifest

#: Audio file extensions tried when a set names a clip without one.
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")

_NUMBERED = re.compile(r"^(.*?)_\d+$")


@dataclass(frozen=True)
class _Entry:
    """One record of a released file and where it starts (for error messages)."""

    where: str  # "file:line"
    value: Any


@dataclass(frozen=True)
class _Context:
    source: Path
    audio_dir: Path | None
    skip_missing: bool
    skipped: list[str]


Reader = Callable[[_Context], Iterator[ManifestItem]]


def read_dataset(
    fmt: str,
    source: str | Path,
    *,
    audio_dir: str | Path | None = None,
    skip_missing_audio: bool = False,
) -> tuple[list[ManifestItem], list[str]]:
    """Read a released set; returns its items and the ``file:line`` of skipped entries.

    Args:
        fmt: one of :data:`FORMATS` (``manifest`` reads the project's own JSONL).
        source: the set's metadata file (or, for ``ajailbench``, a folder of clips).
        audio_dir: where the clips are, when not in the set's usual place.
        skip_missing_audio: skip entries whose clip is missing instead of failing
            (the skipped entries are returned so callers can say how many).

    Raises:
        ManifestError: unknown format, unreadable file, or a bad entry (``file:line``).
    """
    reader = FORMATS.get(fmt)
    if reader is None:
        raise ManifestError(
            f"unknown dataset format {fmt!r}; use one of {', '.join(sorted(FORMATS))}"
        )
    path = Path(source)
    if not path.exists():
        raise ManifestError(f"{path}: not found; check the path to the {fmt} file")
    ctx = _Context(path, None if audio_dir is None else Path(audio_dir), skip_missing_audio, [])
    items = list(reader(ctx))
    _check_unique(items)
    if not items:
        raise ManifestError(f"{path}: no usable items in this {fmt} file")
    return items, ctx.skipped


def read_spec(spec: str, **kw: Any) -> tuple[list[ManifestItem], list[str]]:
    """Read ``FORMAT:PATH`` (a released set) or a plain path (a project manifest)."""
    fmt, sep, rest = spec.partition(":")
    if sep and fmt in FORMATS and rest:
        return read_dataset(fmt, rest, **kw)
    return read_dataset("manifest", spec, **kw)


# -- helpers -------------------------------------------------------------------------------


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text; save it as UTF-8") from error
    except OSError as error:
        raise ManifestError(f"{path}: cannot read ({error.strerror}); check the path") from error


def _json_array(path: Path) -> Iterator[_Entry]:
    """Elements of a JSON array with the line each starts on (json.load loses lines)."""
    text = _text(path)
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if i >= len(text) or text[i] != "[":
        raise ManifestError(f"{path}:1: expected a JSON array ([...]) of records")
    i = _skip_ws(text, i + 1)
    if i < len(text) and text[i] == "]":
        return
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as error:
            raise ManifestError(
                f"{path}:{error.lineno}: invalid JSON ({error.msg}); fix the file"
            ) from error
        yield _Entry(f"{path}:{line}", value)
        i = _skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if i < len(text) and text[i] == "]":
            return
        raise ManifestError(
            f"{path}:{text.count(chr(10), 0, i) + 1}: expected ',' or ']' between records"
        )


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _jsonl(path: Path) -> Iterator[_Entry]:
    for number, raw in enumerate(_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ManifestError(
                f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno}); "
                "write one JSON object per line"
            ) from error
        yield _Entry(f"{path}:{number}", value)


def _field(entry: _Entry, key: str, kinds: tuple[type, ...] = (str,)) -> Any:
    obj = entry.value
    if not isinstance(obj, dict):
        raise ManifestError(f"{entry.where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise ManifestError(f"{entry.where}: missing {key!r}; every record needs it")
    value = obj[key]
    if not isinstance(value, kinds) or isinstance(value, bool) or value == "":
        names = {str: "text", int: "a number", list: "a list"}
        wanted = " or ".join(names.get(k, k.__name__) for k in kinds)
        raise ManifestError(f"{entry.where}: {key!r} must be {wanted}, got {value!r}")
    return value


def _folder(ctx: _Context, default: Path) -> Path:
    return ctx.audio_dir if ctx.audio_dir is not None else default


def _clip(ctx: _Context, entry: _Entry, candidates: list[Path]) -> Path | None:
    """The first existing candidate; None (and noted) when skipping, else an error."""
    for path in candidates:
        if path.is_file():
            return path.resolve()
        if not path.suffix:
            for ext in AUDIO_EXTENSIONS:
                if path.with_suffix(ext).is_file():
                    return path.with_suffix(ext).resolve()
    if ctx.skip_missing:
        ctx.skipped.append(entry.where)
        return None
    raise ManifestError(
        f"{entry.where}: audio not found (looked for {candidates[0]}); point --audio-dir at "
        "the folder with the clips, or pass --skip-missing-audio"
    )


def _item(
    entry: _Entry,
    ctx: _Context,
    *,
    id: str,
    audio: Path,
    category: str,
    transcript: str | None = None,
    text: str | None = None,
) -> ManifestItem:
    return ManifestItem(
        id=id,
        audio=audio,
        text=text,
        transcript=transcript,
        category=category,
        line=int(entry.where.rsplit(":", 1)[1]),
        manifest=ctx.source.resolve(),
    )


def _check_unique(items: list[ManifestItem]) -> None:
    seen: dict[str, ManifestItem] = {}
    for item in items:
        first = seen.get(item.id)
        if first is not None:
            raise ManifestError(
                f"{item.source}: duplicate id {item.id!r} (first on line {first.line}); "
                "every record needs its own id"
            )
        seen[item.id] = item


def _stem_category(stem: str) -> str:
    match = _NUMBERED.match(stem)
    return match.group(1) if match else stem


# -- readers -------------------------------------------------------------------------------


def _figstep(ctx: _Context) -> Iterator[ManifestItem]:
    folder = _folder(ctx, ctx.source.parent / "question")
    if ctx.source.suffix == ".txt":
        yield from _figstep_txt(ctx, folder)
        return
    for entry in _json_array(ctx.source):
        name = _field(entry, "audio_file")
        category, question = _field(entry, "scenario"), _field(entry, "question")
        audio = _clip(ctx, entry, [folder / name])
        if audio is not None:
            yield _item(
                entry,
                ctx,
                id=Path(name).stem,
                audio=audio,
                category=category,
                transcript=question,
            )


def _figstep_txt(ctx: _Context, folder: Path) -> Iterator[ManifestItem]:
    for number, raw in enumerate(_text(ctx.source).splitlines(), start=1):
        if not raw.strip():
            continue
        entry = _Entry(f"{ctx.source}:{number}", raw)
        name, sep, question = raw.strip().partition(" ")
        if not sep or not question.strip():
            raise ManifestError(
                f"{entry.where}: expected '<audio file> <question>' separated by a space"
            )
        audio = _clip(ctx, entry, [folder / name])
        if audio is not None:
            stem = Path(name).stem
            yield _item(
                entry,
                ctx,
                id=stem,
                audio=audio,
                category=_stem_category(stem),
                transcript=question.replace("-", " ").strip(),
            )


def _advbench(ctx: _Context) -> Iterator[ManifestItem]:
    folder = _folder(ctx, ctx.source.parent / ctx.source.stem)
    for entry in _json_array(ctx.source):
        name = _field(entry, "audio_name")
        question_id = _field(entry, "question_id", (int, str))
        question = _field(entry, "question")
        audio = _clip(ctx, entry, [folder / name])
        if audio is not None:
            yield _item(
                entry,
                ctx,
                id=f"{ctx.source.stem}-{question_id}",
                audio=audio,
                category=ctx.source.stem,
                transcript=question,
            )


def _sorry_bench(ctx: _Context) -> Iterator[ManifestItem]:
    default = ctx.source.parent / f"{ctx.source.stem}_audio"
    folder = _folder(ctx, default if default.is_dir() else ctx.source.parent)
    for entry in _jsonl(ctx.source):
        question_id = _field(entry, "question_id", (int, str))
        turns = _field(entry, "turns", (list,))
        if not turns or not isinstance(turns[0], str) or not turns[0].strip():
            raise ManifestError(f"{entry.where}: 'turns' must hold the request text first")
        category = str(_field(entry, "category", (str, int)))
        audio = _clip(ctx, entry, [folder / str(question_id)])
        if audio is not None:
            yield _item(
                entry,
                ctx,
                id=f"sorry-{question_id}",
                audio=audio,
                category=category,
                transcript=turns[0],
            )


def _ajailbench(ctx: _Context) -> Iterator[ManifestItem]:
    if ctx.source.is_dir():
        for number, path in enumerate(sorted(ctx.source.glob("*.wav")), start=1):
            entry = _Entry(f"{path}:{number}", None)
            yield _item(
                entry,
                ctx,
                id=path.stem,
                audio=path.resolve(),
                category=_stem_category(path.stem),
            )
        return
    folder = _folder(ctx, ctx.source.parent)
    for entry in _jsonl(ctx.source):
        speech = Path(_field(entry, "speech_path"))
        index = _field(entry, "index", (int, str))
        category, prompt = _field(entry, "category"), _field(entry, "prompt")
        candidates = [speech if speech.is_absolute() else ctx.source.parent / speech]
        candidates.append(folder / speech.name)
        audio = _clip(ctx, entry, candidates)
        if audio is not None:
            yield _item(
                entry,
                ctx,
                id=f"ajail-{index}",
                audio=audio,
                category=category,
                transcript=prompt,
            )


def _airbench_chat(ctx: _Context) -> Iterator[ManifestItem]:
    folder = _folder(ctx, ctx.source.parent)
    for entry in _json_array(ctx.source):
        task = _field(entry, "task_name")
        dataset = _field(entry, "dataset_name")
        uniq, question = _field(entry, "uniq_id", (int, str)), _field(entry, "question")
        audio = _clip(ctx, entry, [folder / f"{task}_{dataset}" / _field(entry, "path")])
        if audio is not None:
            yield _item(entry, ctx, id=str(uniq), audio=audio, category=task, text=question)


def _manifest(ctx: _Context) -> Iterator[ManifestItem]:
    if ctx.audio_dir is not None or ctx.skip_missing:
        raise ManifestError(
            f"{ctx.source}: audio folders and skipping apply to released sets only; a "
            "manifest's audio paths are relative to the manifest"
        )
    yield from load_manifest(ctx.source).items


#: Format name -> reader.
FORMATS: dict[str, Reader] = {
    "manifest": _manifest,
    "figstep-audio": _figstep,
    "advbench-audio": _advbench,
    "sorry-bench": _sorry_bench,
    "ajailbench": _ajailbench,
    "airbench-chat": _airbench_chat,
}
