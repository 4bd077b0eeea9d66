"""Admin pages: retention (records and kept audio, dry run first) and the access log.

Pruning is shown before it happens: the page lists what would go, and the form
carries the last seq of that set; if the set changed meanwhile (new expiries), the
admin sees the new set instead of deleting something unseen. Records go through the
store's own :meth:`~sarsteer_guard.audit.base.AuditLog.prune`, which removes the
expired prefix and writes the (MACed, with ``SARSTEER_AUDIT_KEY``) checkpoint; kept
audio goes separately, at its own retention, and the chain stays intact.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from sarsteer_guard.audit.keys import KEY_ENV, AuditKeys
from sarsteer_guard.console.web import Console, Ctx, page

#: Access events shown (newest first).
ACCESS_SHOWN = 300
#: Audio clips past retention listed by id on the retention page.
AUDIO_SHOWN = 50


def _retention(console: Console) -> dict[str, Any]:
    preview = console.log.prune_preview()
    audio = console.log.audio_due()
    return {
        "preview": preview,
        "audio_due": audio[:AUDIO_SHOWN],
        "audio_count": len(audio),
        "keyed": AuditKeys.from_env() is not None,
        "key_env": KEY_ENV,
        "done": None,
        "ok": False,
    }


@page("admin")
async def retention_page(request: Request, ctx: Ctx) -> Response:
    """What pruning would remove now (records and kept audio), with confirm forms."""
    data = await ctx.run(_retention, ctx.console)
    await ctx.record_access("retention", due=data["preview"].count, audio_due=data["audio_count"])
    return ctx.render("retention.html", **data)


def _prune_records(console: Console, expected: str) -> dict[str, Any]:
    data = _retention(console)
    preview = data["preview"]
    if not preview.count or str(preview.last_seq) != expected:
        data["done"] = (
            "The records past retention changed since the page was shown; nothing was "
            "removed. Review the set below and confirm again."
        )
        return data
    keys = AuditKeys.from_env()  # before deleting: a bad key is an error, not a bare checkpoint
    removed = console.log.prune()
    console.chain.status(force=True)
    data = _retention(console)
    mac = f"MACed with key id {keys.current.key_id}" if keys else f"not MACed ({KEY_ENV} unset)"
    data["done"] = f"Removed {removed} records; the new checkpoint is {mac}."
    data["removed"] = removed
    data["ok"] = True
    return data


@page("admin")
async def prune_records_action(request: Request, ctx: Ctx) -> Response:
    """Prune the expired prefix the admin saw (the checkbox confirms it)."""
    if ctx.form.get("confirm") != "yes":
        data = await ctx.run(_retention, ctx.console)
        data["done"] = "Tick the box to confirm before pruning."
        return ctx.render("retention.html", status=400, **data)
    expected = ctx.form.get("last_seq", "")
    await ctx.record_access("prune_requested", upto_seq=expected)
    data = await ctx.run(_prune_records, ctx.console, expected)
    await ctx.record_access("prune", removed=data.get("removed", 0), upto_seq=expected)
    return ctx.render("retention.html", **data)


@page("admin")
async def prune_audio_action(request: Request, ctx: Ctx) -> Response:
    """Delete kept audio past its own retention (records and the chain stay)."""
    if ctx.form.get("confirm") != "yes":
        data = await ctx.run(_retention, ctx.console)
        data["done"] = "Tick the box to confirm before deleting audio."
        return ctx.render("retention.html", status=400, **data)
    removed = await ctx.run(ctx.console.log.prune_audio)
    await ctx.record_access("prune_audio", removed=removed)
    data = await ctx.run(_retention, ctx.console)
    data["done"] = f"Deleted {removed} kept audio clips; the records and the chain are unchanged."
    data["ok"] = True
    return ctx.render("retention.html", **data)


def _access(console: Console) -> dict[str, Any]:
    head = console.review.access_stream.head()
    total = 0 if head is None else head.seq
    events = list(console.review.access(max(0, total - ACCESS_SHOWN)))
    return {"events": events[::-1], "total": total, "chain": console.chain.status()}


@page("admin")
async def access_page(request: Request, ctx: Ctx) -> Response:
    """Who looked at what, when (newest first), and whether the access log verifies."""
    await ctx.record_access("access_log")
    data = await ctx.run(_access, ctx.console)
    return ctx.render("access.html", **data)
