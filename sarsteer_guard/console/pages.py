"""Reviewer pages: the list of refused turns, one turn in full, its audio, labelling.

Lists come from the in-memory index (:mod:`sarsteer_guard.console.index`); a turn's
page, its audio and its chain check read the store itself, so what a reviewer sees of
one turn is never stale and an edit made after the index was filled still shows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from sarsteer_guard.audit.audio import KeptAudio, audio_matches_record
from sarsteer_guard.audit.dsa import CATEGORIES, DEFAULT_CATEGORY
from sarsteer_guard.audit.record import AuditRecord
from sarsteer_guard.audit.review import LABELS, MAX_NOTE_CHARS, LabelValue
from sarsteer_guard.audit.verify import CHECKPOINT_KINDS, VerifyReport
from sarsteer_guard.console.index import ChainStatus, Row, local_problems
from sarsteer_guard.console.query import ListQuery
from sarsteer_guard.console.web import Console, Ctx, error_page, local_next, page
from sarsteer_guard.errors import GuardError, one_line

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")


def matching(console: Console, query: ListQuery) -> list[Row]:
    """Rows passing ``query``, newest first."""
    where = query.record_filter()
    latest = console.labels.latest
    return [row for row in console.records.rows if query.matches(row, latest(row.record.id), where)]


@page()
async def list_page(request: Request, ctx: Ctx) -> Response:
    """Refused turns, filtered, searched and paged."""
    console = ctx.console
    query = ListQuery.parse(request.query_params)
    rows = await ctx.run(matching, console, query)
    size = console.settings.page_size
    pages = max(1, math.ceil(len(rows) / size))
    number = min(query.page, pages)
    shown = rows[(number - 1) * size : number * size]
    await ctx.record_access("list", filters=query.describe(), matches=len(rows), page=number)
    return ctx.render(
        "list.html",
        query=query,
        rows=[(row, console.labels.latest(row.record.id)) for row in shown],
        total=len(rows),
        number=number,
        pages=pages,
        policies=console.records.policies(),
        rules=console.records.rules(),
        problem=console.records.problem,
        truncated=console.records.truncated,
        categories=CATEGORIES,
        default_category=DEFAULT_CATEGORY,
        export_limit=None if ctx.user.is_admin else console.settings.reviewer_export_limit,
    )


@dataclass(frozen=True)
class ChainPlace:
    """Whether the chain verifies up to one record, in words."""

    ok: bool | None
    """True: verified up to it; False: broken at or before it; None: not known."""
    text: str


def chain_place(record: AuditRecord, status: ChainStatus, problems: list[str]) -> ChainPlace:
    """Combine the fresh checks of ``record`` with the last whole-chain verification."""
    if problems:
        return ChainPlace(False, "Broken at this record: " + "; ".join(problems) + ".")
    report: VerifyReport | None = status.records
    when = status.checked_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if report is None:
        return ChainPlace(None, f"The chain could not be verified ({status.error}).")
    start = f"checkpoint seq {report.checkpoint_seq}" if report.checkpoint_seq else "the start"
    if report.ok:
        return ChainPlace(
            True,
            f"The chain verifies from {start} through seq {report.last_seq}, this record "
            f"included (checked {when}).",
        )
    brk = report.first_break
    if brk is not None and brk.kind not in CHECKPOINT_KINDS and record.seq < brk.seq:
        return ChainPlace(
            True,
            f"The chain verifies from {start} up to this record; it breaks later, at seq "
            f"{brk.seq} (checked {when}).",
        )
    return ChainPlace(
        False,
        f"The chain is broken at or before this record: {report.summary()} (checked {when}).",
    )


def _detail(console: Console, record_id: str) -> dict[str, Any] | None:
    """Everything the turn's page shows, read fresh from the store (None: no such record)."""
    status = console.chain.status()
    try:
        record = console.log.get(record_id)
    except GuardError as error:
        text = f"This record cannot be read: {one_line(error)}"
        return {"record": None, "unreadable": text, "chain": status}
    if record is None:
        return None
    audio: KeptAudio | None = None
    audio_problem = None
    try:
        audio = console.log.get_audio(record_id)
    except GuardError as error:
        audio_problem = one_line(error)
    problems = local_problems(console.log, record, console.records)
    by_seq = console.records.by_seq
    return {
        "record": record,
        "unreadable": None,
        "chain": status,
        "place": chain_place(record, status, problems),
        "audio": audio,
        "audio_ok": None if audio is None else audio_matches_record(audio, record),
        "audio_problem": audio_problem,
        "history": console.labels.history(record_id),
        "previous": by_seq.get(record.seq - 1),
        "following": by_seq.get(record.seq + 1),
    }


@page()
async def detail_page(request: Request, ctx: Ctx) -> Response:
    """One turn in full: the decision, its text, audio, chain position and reviews."""
    record_id = request.path_params["record_id"]
    data = await ctx.run(_detail, ctx.console, record_id)
    if data is None:
        return error_page(request, 404, "no audit record with this id")
    await ctx.record_access("view", target=record_id)
    return ctx.render("detail.html", record_id=record_id, labels=LABELS, **data)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single ``bytes=`` range; None for the whole body."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(size - 1, int(last)) if last else size - 1
    return (start, end) if start <= end < size else None


@page()
async def audio_route(request: Request, ctx: Ctx) -> Response:
    """The turn's kept audio, with its own content type (single byte ranges served)."""
    record_id = request.path_params["record_id"]
    audio = await ctx.run(ctx.console.log.get_audio, record_id)
    if audio is None:
        return error_page(request, 404, "no audio is kept for this record")
    span = _byte_range(request.headers.get("range"), len(audio.data))
    if span is None or span[0] == 0:  # log a play once, not every range the player asks
        await ctx.record_access("audio", target=record_id)
    name = _SAFE_NAME.sub("_", record_id)
    headers = {
        "Content-Disposition": f'inline; filename="{name}.{_SAFE_NAME.sub("_", audio.format)}"',
        "Accept-Ranges": "bytes",
    }
    if span is None:
        return Response(audio.data, media_type=audio.content_type, headers=headers)
    start, end = span
    headers["Content-Range"] = f"bytes {start}-{end}/{len(audio.data)}"
    return Response(
        audio.data[start : end + 1], status_code=206, media_type=audio.content_type, headers=headers
    )


@page()
async def label_action(request: Request, ctx: Ctx) -> Response:
    """Add a review label to a turn (append-only: it supersedes, never erases)."""
    record_id = request.path_params["record_id"]
    label = ctx.form.get("label", "")
    note = ctx.form.get("note", "")
    if label not in LABELS:
        return error_page(request, 400, "choose one of the review labels")
    if len(note) > MAX_NOTE_CHARS:
        return error_page(request, 400, f"notes hold at most {MAX_NOTE_CHARS} characters")
    record = await ctx.run(ctx.console.log.get, record_id)
    if record is None:
        return error_page(request, 404, "no audit record with this id")
    value: LabelValue = label
    await ctx.run(
        ctx.console.review.add_label,
        record_id=record_id,
        label=value,
        reviewer=ctx.user.name,
        note=note,
    )
    await ctx.record_access("label", target=record_id, label=label)
    return RedirectResponse(f"/records/{record_id}#review", status_code=303)


@page()
async def verify_action(request: Request, ctx: Ctx) -> Response:
    """Verify the chain and the review streams now."""
    status = await ctx.run(ctx.console.chain.status, force=True)
    await ctx.record_access("verify", ok=status.ok)
    return RedirectResponse(local_next(ctx.form.get("next")), status_code=303)
