"""``sarsteer-guard audit``: list, show, export and verify the audit log.

Written for compliance staff: readable tables by default, ``--json`` for machines,
dates as ISO dates/times or relative ages (``7d``, ``24h``, ``30m``, ``2w``). No torch.
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
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sarsteer_guard.errors import AuditError, GuardError

if TYPE_CHECKING:  # the audit stack (redis, sqlite) loads only when an audit command runs
    from sarsteer_guard.audit import AuditLog, AuditRecord


def open_audit_log(url: str | None) -> AuditLog:
    """Open the audit log named by ``--store`` (imported on first use)."""
    from sarsteer_guard.audit import open_audit_log as _open

    return _open(url)


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


def _iter(log: AuditLog, args: argparse.Namespace) -> Iterator[AuditRecord]:
    return log.iter(
        since=args.since,
        until=args.until,
        policy=args.policy,
        session=args.session,
        rule=args.rule,
    )


def _table(records: list[AuditRecord], out: TextIO) -> None:
    header = ("TIME (UTC)", "SESSION", "POLICY", "RULE", "ALPHA", "REFUSED", "RESPONSE", "ID")
    rows = [
        (
            r.time.strftime("%Y-%m-%d %H:%M:%S"),
            r.session_id if len(r.session_id) <= 20 else r.session_id[:19] + "…",
            r.policy_ref,
            r.rule or "-",
            f"{r.alpha:g}",
            ("yes" if r.refused else "no") + (" (shadow)" if r.mode == "shadow" else ""),
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
    with open_audit_log(args.store) as log:
        records = list(_iter(log, args))
    if args.limit:
        records = records[-args.limit :]
    if args.json:
        export_jsonl(records, sys.stdout)
    elif records:
        _table(records, sys.stdout)
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
    "seq", "prev_hash", "hash",
)  # fmt: skip


def _show(record: AuditRecord, out: TextIO) -> None:
    data: dict[str, Any] = record.to_json_dict()
    audio = data.pop("audio")
    detector = data.pop("detector")
    context = data.pop("context")
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
    for key, value in detector.items():
        lines.append((f"detector.{key}", "-" if value is None else str(value)))
    kept = record.audio_bytes()
    lines.append(
        (
            "audio",
            "not kept"
            if audio is None
            else f"kept, {len(kept or b'')} bytes {record.audio_format}",
        )
    )
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.write(f"{key.ljust(width)}  {value}\n")
    ctx = json.dumps(context, indent=2, sort_keys=True, ensure_ascii=False)
    out.write(f"{'context'.ljust(width)}  " + ctx.replace("\n", "\n" + " " * (width + 2)) + "\n")


@_quiet_pipe
def _cmd_show(args: argparse.Namespace) -> int:
    with open_audit_log(args.store) as log:
        record = _find(log, args.id)
    if args.json:
        export_jsonl([record], sys.stdout)
    else:
        _show(record, sys.stdout)
    return 0


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


@_quiet_pipe
def _cmd_export(args: argparse.Namespace) -> int:
    writer = {"jsonl": export_jsonl, "csv": export_csv, "sor": export_sor}[args.format]
    with open_audit_log(args.store) as log, _output(args.out) as out:
        count = writer(_iter(log, args), out)
    noun = "statements of reasons" if args.format == "sor" else "records"
    print(f"exported {count} {noun}" + (f" to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    anchor = _parse_anchor(args.anchor) if args.anchor else None
    with open_audit_log(args.store) as log:
        report = log.verify()
        head = None
        anchored = None
        for record in log.iter():
            head = record
            if anchor is not None and record.seq == anchor[0]:
                anchored = record
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    if not report.ok:
        return 1
    if head is not None:
        # Someone who can write the store can rewrite a tail and its head together; a head
        # recorded outside the store (ticket, WORM bucket) makes that detectable later.
        print(f"head: {head.seq}:{head.hash}  (keep it elsewhere; check later with --anchor)")
    if anchor is not None:
        if anchored is None or anchored.hash != anchor[1]:
            found = "missing" if anchored is None else f"has hash {anchored.hash}"
            print(
                f"anchor broken: record {anchor[0]} {found}, expected {anchor[1]}: the log was "
                "rewritten after the anchor was taken; restore it from a backup and investigate",
                file=sys.stderr,
            )
            return 1
        print(f"anchor ok: record {anchor[0]} still has the recorded hash")
    return 0


def _parse_anchor(text: str) -> tuple[int, str]:
    seq, sep, digest = text.partition(":")
    if not sep or not seq.isdigit() or len(digest) != 64:
        raise AuditError(
            f"--anchor {text!r} is not SEQ:HASH (as printed by `audit verify`, e.g. 42:9f3c...)"
        )
    return int(seq), digest.lower()


def _cmd_prune(args: argparse.Namespace) -> int:
    with open_audit_log(args.store) as log:
        count = log.prune(args.now)
    print(f"pruned {count} expired records")
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

    filters = {
        "since": args.since,
        "until": args.until,
        "policy": args.policy,
        "session": args.session,
        "rule": args.rule,
    }
    with open_audit_log(args.store) as log:
        summary = audit_summary(_iter(log, args), recent=args.recent)
        report = None if args.no_verify else log.verify()
    page = render_audit_html(summary, title=args.title, verify=report, scope=scope_line(filters))
    write_page(page, args.out)
    print(
        f"wrote {args.out}: {summary.turns} turns, {summary.refused} refused"
        + ("" if report is None else f"; {report.summary()}"),
        file=sys.stderr,
    )
    return 0


def register(subparsers: Any) -> None:
    """Add the ``audit`` command group to the CLI."""
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="audit store: sqlite:///path, a path or redis://... "
        "(default: $SARSTEER_AUDIT_URL or ~/.local/state/sarsteer-guard/audit.db)",
    )
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--since", type=_when, help="from this time (ISO, or age like 7d, 24h)")
    filters.add_argument("--until", type=_when, help="before this time (ISO, or age)")
    filters.add_argument("--policy", help="policy name or name@version")
    filters.add_argument("--session", help="session id")
    filters.add_argument("--rule", help="matched policy rule")

    audit = subparsers.add_parser("audit", help="review, export and verify the refusal audit log")
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", parents=[store, filters], help="list records as a table")
    p.add_argument("--json", action="store_true", help="one JSON record per line")
    p.add_argument("--limit", type=int, default=0, help="only the newest N records")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[store], help="show every field of one record")
    p.add_argument("id", help="record id (or a unique prefix of at least 6 characters)")
    p.add_argument("--json", action="store_true", help="the stored JSON form")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("export", parents=[store, filters], help="export records")
    p.add_argument(
        "--format",
        choices=("jsonl", "csv", "sor"),
        default="jsonl",
        help="jsonl (lossless), csv (flat), sor (statements of reasons, DSA Art. 17)",
    )
    p.add_argument("--out", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("verify", parents=[store], help="check the hash chain")
    p.add_argument(
        "--anchor",
        metavar="SEQ:HASH",
        help="also check that record SEQ still has HASH (a head printed earlier and kept "
        "outside the store)",
    )
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser(
        "report", parents=[store, filters], help="write a self-contained HTML report with charts"
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE.html", help="report to write")
    p.add_argument("--title", default="sarsteer-guard audit report", help="page title")
    p.add_argument("--recent", type=int, default=50, help="refused turns listed in the table")
    p.add_argument("--no-verify", action="store_true", help="skip the hash-chain check")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("prune", parents=[store], help="remove records past their retention")
    p.add_argument("--now", type=_when, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_prune)
