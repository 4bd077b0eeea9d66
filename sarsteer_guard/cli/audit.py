"""``sarsteer-guard audit``: list, show, export, verify, report and prune the audit log.

Written for compliance staff: readable tables by default, ``--json`` for machines
(records as JSON lines in ``list``/``show``; one JSON object in ``verify``/``prune``),
dates as ISO dates/times or relative ages (``7d``, ``24h``, ``30m``, ``2w``). No torch.

The log is named by ``--audit URL`` as in ``respond``/``serve`` (``--store`` still works
but is deprecated: elsewhere it names the vector store). These commands only read
(``prune`` deletes expired records): a store that does not exist is an error (exit 2),
never created. ``verify`` and ``report`` exit 1 when the log cannot be vouched for.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sarsteer_guard.cli._common import (
    AUDIT_DEFAULT,
    AUDIT_HELP,
    DefaultsHelpFormatter,
    DeprecatedAlias,
)
from sarsteer_guard.errors import AuditError, GuardError

if TYPE_CHECKING:  # the audit stack (redis, sqlite) loads only when an audit command runs
    from sarsteer_guard.audit import AuditLog, AuditRecord, RecordFilter, VerifyReport
    from sarsteer_guard.audit.export import OutcomeCounts


def open_audit_log(url: str | None) -> AuditLog:
    """Open the existing audit log named by ``--audit`` for reading (imported on first use).

    Raises:
        AuditStoreMissingError: there is no audit log there (nothing is created).
    """
    from sarsteer_guard.audit import open_audit_log as _open

    log = _open(url, create=False)
    log.open()
    return log


def export_jsonl(records: Any, out: TextIO) -> Any:
    """JSON lines export (imported on first use)."""
    from sarsteer_guard.audit.export import export_jsonl as _export

    return _export(records, out)


def export_csv(records: Any, out: TextIO) -> Any:
    """CSV export (imported on first use)."""
    from sarsteer_guard.audit.export import export_csv as _export

    return _export(records, out)


def export_sor(records: Any, out: TextIO) -> Any:
    """Statements-of-reasons export (imported on first use)."""
    from sarsteer_guard.audit.export import export_sor as _export

    return _export(records, out)


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """Parse ``7d``/``24h`` (that long before now), an ISO date (midnight UTC) or datetime.

    Naive times are taken as UTC, because audit times are stored in UTC.

    Raises:
        GuardError: the text is none of those forms.
    """
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text)
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return now - timedelta(**{_UNITS[unit]: amount})
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise GuardError(
            f"cannot read time {text!r}; use an ISO date/time (2026-05-01, "
            "2026-05-01T12:00) or an age like 7d, 24h, 30m"
        ) from error
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _when(text: str) -> datetime:
    try:
        return parse_when(text)
    except GuardError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _first_words(text: str, words: int = 8, width: int = 48) -> str:
    short = " ".join(text.split()[:words])
    if len(short) > width:
        short = short[: width - 1] + "…"
    elif len(text.split()) > words:
        short += " …"
    return short


def _where(args: argparse.Namespace) -> RecordFilter:
    from sarsteer_guard.audit import RecordFilter

    return RecordFilter(
        since=args.since,
        until=args.until,
        policy=args.policy,
        session=args.session,
        rule=args.rule,
    )


def _iter(log: AuditLog, args: argparse.Namespace) -> Iterator[AuditRecord]:
    return log.iter(_where(args))


def _counts() -> OutcomeCounts:
    from sarsteer_guard.audit.export import OutcomeCounts

    return OutcomeCounts()


def _table(records: list[AuditRecord], out: TextIO) -> None:
    header = ("TIME (UTC)", "SESSION", "POLICY", "RULE", "ALPHA", "REFUSED", "RESPONSE", "ID")
    rows = [
        (
            r.time.strftime("%Y-%m-%d %H:%M:%S"),
            r.session_id if len(r.session_id) <= 20 else r.session_id[:19] + "…",
            r.policy_ref,
            r.rule or "-",
            f"{r.alpha:g}",
            ("yes" if r.enforce_refused else "no") + (" (shadow)" if r.mode == "shadow" else ""),
            _first_words(r.response_text),
            r.id,
        )
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _quiet_pipe(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Exit quietly when stdout is a pipe closed early (``audit list | head``)."""

    @functools.wraps(func)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is silent
            return 0

    return wrapper


@_quiet_pipe
def _cmd_list(args: argparse.Namespace) -> int:
    with open_audit_log(args.audit) as log:
        records = list(_iter(log, args))
    if args.limit:
        records = records[-args.limit :]
    counts = _counts()
    records = list(counts.counted(records))
    if args.json:
        export_jsonl(records, sys.stdout)
    elif records:
        _table(records, sys.stdout)
    if records:
        print(f"{counts.records} records: {counts}", file=sys.stderr)
    else:
        print("no audit records match", file=sys.stderr)
    return 0


def _find(log: AuditLog, record_id: str) -> AuditRecord:
    record = log.get(record_id)
    if record is not None:
        return record
    if len(record_id) >= 6:
        found = [r for r in log.iter() if r.id.startswith(record_id)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AuditError(
                f"id prefix {record_id!r} matches {len(found)} records; give more of it"
            )
    raise AuditError(
        f"no audit record with id {record_id!r}; list ids with 'sarsteer-guard audit list'"
    )


#: Field order of ``audit show``: the decision first, chain internals last.
_SHOW_ORDER = (
    "id", "session_id", "turn_id", "mode", "refused", "rule", "alpha", "response_text",
    "served_text", "latency_ms", "flags", "model_id", "model_fingerprint", "vector_set_id",
    "audio_sha256", "audio_format", "retention_until", "library_version", "record_version",
    "seq", "prior_expiry", "prev_hash", "hash",
)  # fmt: skip


def _show(record: AuditRecord, out: TextIO) -> None:
    data: dict[str, Any] = record.to_json_dict()
    audio = data.pop("audio")
    detector = data.pop("detector")
    context = data.pop("context")
    shadow = data.pop("shadow", None) or {}
    lines: list[tuple[str, str]] = [
        ("time", f"{data.pop('time')} (UTC)"),
        ("policy", f"{record.policy_ref} (hash {data.pop('policy_hash')})"),
    ]
    data.pop("policy_name")
    data.pop("policy_version")
    order = [k for k in _SHOW_ORDER if k in data] + sorted(set(data) - set(_SHOW_ORDER))
    for key in order:
        value = data[key]
        text = (
            "-" if value is None else json.dumps(value) if isinstance(value, list) else str(value)
        )
        lines.append((key, text))
    for prefix, values in (("detector", detector), ("shadow", shadow)):
        for key, value in values.items():
            lines.append((f"{prefix}.{key}", "-" if value is None else str(value)))
    kept = record.audio_bytes()
    if audio is not None:
        audio_line = f"kept inline, {len(kept or b'')} bytes {record.audio_format}"
    elif record.audio_format:
        audio_line = f"kept beside the chain ({record.audio_format}; --audio-out FILE writes it)"
    else:
        audio_line = "not kept"
    lines.append(("audio", audio_line))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.write(f"{key.ljust(width)}  {value}\n")
    ctx = json.dumps(context, indent=2, sort_keys=True, ensure_ascii=False)
    out.write(f"{'context'.ljust(width)}  " + ctx.replace("\n", "\n" + " " * (width + 2)) + "\n")


@_quiet_pipe
def _cmd_show(args: argparse.Namespace) -> int:
    with open_audit_log(args.audit) as log:
        record = _find(log, args.id)
        if args.audio_out is not None:
            _write_audio(log, record, args.audio_out)
    if args.json:
        export_jsonl([record], sys.stdout)
    else:
        _show(record, sys.stdout)
    return 0


def _write_audio(log: AuditLog, record: AuditRecord, path: Path) -> None:
    """Write the record's kept audio to ``path``; say whether it matches the hashed digest."""
    from sarsteer_guard.audit.audio import audio_matches_record

    audio = log.get_audio(record.id)
    if audio is None:
        why = (
            "was deleted at its retention"
            if record.audio_format
            else "was not kept (the policy's audit.keep_audio is off)"
        )
        raise AuditError(f"record {record.id} has no audio: it {why}")
    try:
        path.write_bytes(audio.data)
    except OSError as error:
        raise AuditError(
            f"cannot write {path} ({error.strerror}); choose another --audio-out"
        ) from error
    match = "matches" if audio_matches_record(audio, record) else "does NOT match"
    until = "" if audio.expires is None else f", kept until {audio.expires:%Y-%m-%d %H:%M} UTC"
    print(
        f"wrote {path}: {len(audio.data)} bytes {audio.format}{until}; its samples {match} "
        "the record's hashed audio_sha256",
        file=sys.stderr,
    )


@contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None or path == "-":
        yield sys.stdout
        return
    target = Path(path)
    try:
        handle = target.open("w", encoding="utf-8", newline="")
    except OSError as error:
        raise AuditError(
            f"cannot write {target} ({error.strerror}); choose another --out"
        ) from error
    with handle:
        yield handle


def _dsa_writer(args: argparse.Namespace) -> Callable[[Any, TextIO], int]:
    from sarsteer_guard.audit.dsa import DsaSettings, export_dsa

    rules: dict[str, str] = {}
    for item in args.dsa_rule_category or ():
        rule, sep, category = item.partition("=")
        if not sep or not rule or not category:
            raise AuditError(f"--dsa-rule-category {item!r} is not RULE=CATEGORY")
        rules[rule] = category
    settings = DsaSettings(
        category=args.dsa_category,
        rule_categories=rules,
        territorial_scope=tuple(args.dsa_territory or ()),
    )
    return lambda records, out: export_dsa(records, out, settings)


@_quiet_pipe
def _cmd_export(args: argparse.Namespace) -> int:
    writer: Callable[[Any, TextIO], Any]
    if args.format == "dsa":
        writer = _dsa_writer(args)  # settings checked before the store is read
    else:
        writer = {"jsonl": export_jsonl, "csv": export_csv, "sor": export_sor}[args.format]
    counts = _counts()
    with open_audit_log(args.audit) as log, _output(args.out) as out:
        count = writer(counts.counted(_iter(log, args)), out)
    noun = "statements of reasons" if args.format in ("sor", "dsa") else "records"
    where = f" to {args.out}" if args.out else ""
    print(
        f"exported {count} {noun}{where} (of {counts.records} records: {counts})", file=sys.stderr
    )
    return 0


def _verify_json(report: VerifyReport) -> dict[str, Any]:
    brk = report.first_break
    anchor = report.anchor
    return {
        "ok": report.ok,
        "vouched": report.vouched,
        "summary": report.summary(),
        "checked": report.checked,
        "checkpoint_seq": report.checkpoint_seq,
        "last_seq": report.last_seq,
        "head": None if report.head_hash is None else f"{report.last_seq}:{report.head_hash}",
        "break": None
        if brk is None
        else {"seq": brk.seq, "record_id": brk.record_id, "kind": brk.kind, "detail": brk.detail},
        "anchor": None
        if anchor is None
        else {"anchor": f"{anchor[0]}:{anchor[1]}", "ok": report.anchor_problem is None,
              "problem": report.anchor_problem},
        "notes": list(report.notes),
    }  # fmt: skip


def _print_verify(report: VerifyReport) -> None:
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    if report.ok and report.head_hash is not None:
        # Someone who can write the store can rewrite a tail and its head together; a head
        # recorded outside the store (ticket, WORM bucket) makes that detectable later.
        print(
            f"head: {report.last_seq}:{report.head_hash}  "
            "(keep it elsewhere; check later with --anchor)"
        )
    if report.ok and report.anchor is not None:
        if report.anchor_problem is None:
            print(f"anchor ok: record {report.anchor[0]} still has the recorded hash")
        else:
            verdict = "not checked" if "was pruned" in report.anchor_problem else "broken"
            print(f"anchor {verdict}: {report.anchor_problem}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stdout if report.ok else sys.stderr)


def _spool_note(log: AuditLog) -> str | None:
    """Drafts a writer of this store left in its default spool (not chained yet)."""
    from sarsteer_guard.audit import default_spool_dir, spool_backlog

    spool_dir = default_spool_dir(log)
    backlog = spool_backlog(spool_dir)
    if not backlog or not any(backlog):
        return None
    waiting, held = backlog
    return (
        f"{waiting} records wait in the spool {spool_dir} to be chained"
        + (f", {held} unreadable drafts are held in its quarantine" if held else "")
        + " (the guard replays them when the store is writable)"
    )


def _cmd_verify(args: argparse.Namespace) -> int:
    anchor = _parse_anchor(args.anchor) if args.anchor else None
    with open_audit_log(args.audit) as log:
        report = log.verify(anchor)
        note = _spool_note(log)
    if note is not None:
        report = replace(report, notes=(*report.notes, note))
    if args.json:
        print(json.dumps(_verify_json(report), sort_keys=True))
    else:
        _print_verify(report)
    return 0 if report.vouched else 1


def _parse_anchor(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise AuditError(
            f"--anchor {text!r} is not SEQ:HASH (as printed by `audit verify`, e.g. 42:9f3c...)"
        )
    return int(seq), digest.lower()


def _cmd_prune(args: argparse.Namespace) -> int:
    from sarsteer_guard.audit import KEY_ENV, AuditKeys

    if args.dry_run:  # also with --audio: a dry run never deletes
        return _prune_dry_run(args)
    if args.audio:
        return _prune_audio(args)
    keys = AuditKeys.from_env()  # before deleting anything: a bad key is a one-line error
    with open_audit_log(args.audit) as log:
        count = log.prune(args.now)
    if args.json:
        print(json.dumps({"pruned": count, "checkpoint_mac": keys is not None and count > 0}))
        return 0
    how = ""
    if count:
        how = (
            f" (checkpoint MACed with key id {keys.current.key_id})"
            if keys is not None
            else f" (checkpoint not MACed: {KEY_ENV} is not set)"
        )
    print(f"pruned {count} expired records{how}")
    return 0


def _prune_dry_run(args: argparse.Namespace) -> int:
    with open_audit_log(args.audit) as log:
        preview = log.prune_preview(args.now)
        audio = log.audio_due(args.now)
    if args.json:
        print(
            json.dumps(
                {
                    "would_prune": preview.count,
                    "first_seq": preview.first_seq,
                    "last_seq": preview.last_seq,
                    "audio_due": len(audio),
                }
            )
        )
        return 0
    if preview.count:
        print(
            f"would prune {preview.count} records (seq {preview.first_seq}..{preview.last_seq}, "
            f"{preview.oldest:%Y-%m-%d} to {preview.newest:%Y-%m-%d} UTC)"
        )
    else:
        print("would prune no records: none is past its retention")
    print(f"{len(audio)} kept audio clips are past their own retention (prune them with --audio)")
    return 0


def _prune_audio(args: argparse.Namespace) -> int:
    with open_audit_log(args.audit) as log:
        count = log.prune_audio(args.now)
    if args.json:
        print(json.dumps({"audio_pruned": count}))
    else:
        print(f"deleted {count} kept audio clips past their retention (the chain is unchanged)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sarsteer_guard.report import require_matplotlib

    require_matplotlib()  # before reading the store, so the hint comes first
    from sarsteer_guard.report.audit_report import (
        audit_summary,
        render_audit_html,
        scope_line,
        write_page,
    )

    where = _where(args)
    unreadable: list[str] = []
    with open_audit_log(args.audit) as log:
        report = None if args.no_verify else log.verify()
        summary = audit_summary(_until_unreadable(log.iter(where), unreadable), recent=args.recent)
    page = render_audit_html(summary, title=args.title, verify=report, scope=scope_line(where))
    write_page(page, args.out)
    print(
        f"wrote {args.out}: {summary.turns} turns, {summary.refused} refused"
        + ("" if report is None else f"; {report.summary()}")
        + (f"; {summary.shadow_refused} refused in shadow" if summary.shadow_refused else ""),
        file=sys.stderr,
    )
    for problem in unreadable:
        print(f"sarsteer-guard: the report stops early: {problem}", file=sys.stderr)
    return 0 if (report is None or report.ok) and not unreadable else 1


def _until_unreadable(records: Iterator[AuditRecord], problems: list[str]) -> Iterator[AuditRecord]:
    """Yield ``records`` until one cannot be read; note why (the report still gets written)."""
    try:
        yield from records
    except AuditError as error:
        problems.append(str(error))


def _parser_kwargs(help_text: str) -> dict[str, Any]:
    return {"help": help_text, "allow_abbrev": False, "formatter_class": DefaultsHelpFormatter}


def register(subparsers: Any) -> None:
    """Add the ``audit`` command group to the CLI."""
    store = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    store.add_argument(
        "--audit",
        metavar="URL",
        default=None,
        help=AUDIT_HELP + AUDIT_DEFAULT,
    )
    store.add_argument(
        "--store",
        dest="audit",
        action=DeprecatedAlias,
        replacement="--audit",
        where=" in audit commands (elsewhere it names the vector store)",
    )
    filters = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    filters.add_argument("--since", type=_when, help="from this time (ISO, or age like 7d, 24h)")
    filters.add_argument("--until", type=_when, help="before this time (ISO, or age)")
    filters.add_argument("--policy", help="policy name or name@version")
    filters.add_argument("--session", help="session id")
    filters.add_argument("--rule", help="matched policy rule")

    audit = subparsers.add_parser(
        "audit", **_parser_kwargs("review, export and verify the refusal audit log")
    )
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    _add_readers(sub, store, filters)
    _add_checkers(sub, store, filters)
    from sarsteer_guard.cli.audit_console import add_serve

    add_serve(
        sub,
        store,
        _parser_kwargs(
            "review console: refused turns in a web page with search, audio, labels and exports"
        ),
    )


def _add_readers(
    sub: Any, store: argparse.ArgumentParser, filters: argparse.ArgumentParser
) -> None:
    """``list``, ``show`` and ``export``."""
    p = sub.add_parser(
        "list", parents=[store, filters], **_parser_kwargs("list records as a table")
    )
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.add_argument("--limit", type=int, default=0, help="only the newest N records (0: all)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[store], **_parser_kwargs("show every field of one record"))
    p.add_argument("id", help="record id (or a unique prefix of at least 6 characters)")
    p.add_argument("--json", action="store_true", help="the stored record as one JSON object")
    p.add_argument(
        "--audio-out",
        type=Path,
        metavar="FILE",
        help="also write the turn's kept audio (FLAC) to FILE, checked against its hash",
    )
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("export", parents=[store, filters], **_parser_kwargs("export records"))
    p.add_argument(
        "--format",
        choices=("jsonl", "csv", "sor", "dsa"),
        default="jsonl",
        help="jsonl (lossless), csv (flat), sor (statements of reasons with chain facts), "
        "dsa (EU DSA Transparency Database batches of <= 100, checked against its rules)",
    )
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--dsa-category",
        default="STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
        metavar="CATEGORY",
        help="dsa: statement category of refusals",
    )
    p.add_argument(
        "--dsa-rule-category",
        action="append",
        metavar="RULE=CATEGORY",
        help="dsa: category for one policy rule (repeat)",
    )
    p.add_argument(
        "--dsa-territory",
        action="append",
        metavar="CC",
        help="dsa: EU/EEA country code of the territorial scope (repeat)",
    )
    p.set_defaults(func=_cmd_export)


def _add_checkers(
    sub: Any, store: argparse.ArgumentParser, filters: argparse.ArgumentParser
) -> None:
    """``verify``, ``report`` and ``prune``."""
    p = sub.add_parser(
        "verify",
        parents=[store],
        **_parser_kwargs("check the hash chain, checkpoints and an anchor (exit 1 if broken)"),
    )
    p.add_argument(
        "--anchor",
        metavar="SEQ:HASH",
        help="also check that record SEQ still has HASH (a head printed earlier and kept "
        "outside the store)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "report",
        parents=[store, filters],
        **_parser_kwargs("write a self-contained HTML report (exit 1 if the chain is broken)"),
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="report to write")
    p.add_argument("--title", default="sarsteer-guard audit report", help="page title")
    p.add_argument("--recent", type=int, default=50, help="refused turns listed in the table")
    p.add_argument("--no-verify", action="store_true", help="skip the hash-chain check")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "prune",
        parents=[store],
        **_parser_kwargs(
            "remove records past their retention (checkpoint MACed with $SARSTEER_AUDIT_KEY)"
        ),
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument(
        "--dry-run", action="store_true", help="show what would be removed; remove nothing"
    )
    p.add_argument(
        "--audio",
        action="store_true",
        help="delete only kept audio past its own (shorter) retention; records stay",
    )
    p.add_argument("--now", type=_when, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_prune)
