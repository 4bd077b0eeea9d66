"""``sarsteer-guard vectors``: move signed steering-vector sets in and out of a store.

Works on bytes only (no torch), so operators can push, pull, list and verify sets on
hosts without the model stack.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sarsteer_guard.cli._common import STORE_HELP
from sarsteer_guard.errors import VectorIntegrityError, VectorsError

if TYPE_CHECKING:
    from sarsteer_guard.store import BaseVectorStore


def register(subparsers: Any) -> None:
    """Add the ``vectors`` command group to the CLI."""
    parser = subparsers.add_parser(
        "vectors", help="push, pull, list and verify stored steering-vector sets"
    )
    commands = parser.add_subparsers(dest="vectors_command", required=True, metavar="ACTION")

    push = commands.add_parser("push", help="sign and store a vector-set file; prints its id")
    push.add_argument("file", type=Path, help="safetensors file written by SteeringVectors.save")
    push.add_argument("--store", default=None, help=STORE_HELP)
    push.set_defaults(func=_push)

    pull = commands.add_parser("pull", help="verify a stored set and write it to a file")
    pull.add_argument("id", help="set id (see `vectors list`)")
    pull.add_argument("--store", default=None, help=STORE_HELP)
    pull.add_argument("--out", type=Path, required=True, help="file to write")
    pull.set_defaults(func=_pull)

    listing = commands.add_parser("list", help="describe stored sets")
    listing.add_argument("--store", default=None, help=STORE_HELP)
    listing.add_argument("--json", action="store_true", help="one JSON object per line, per set")
    listing.set_defaults(func=_list)

    verify = commands.add_parser("verify", help="re-verify the signature of every stored set")
    verify.add_argument("--store", default=None, help=STORE_HELP)
    verify.set_defaults(func=_verify)


def _open(args: argparse.Namespace) -> BaseVectorStore:
    # Imported here so other commands do not pay for redis and prometheus_client.
    from sarsteer_guard.store import open_store

    return open_store(args.store)


def _push(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise VectorsError(f"cannot read {path} ({error.strerror}): check the path") from None
    with _open(args) as store:
        key = store.put(blob)
    print(key.id)
    return 0


def _pull(args: argparse.Namespace) -> int:
    out: Path = args.out
    with _open(args) as store:
        blob = store.get(args.id)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(6)}.tmp")
    try:
        tmp.write_bytes(blob)
        os.replace(tmp, out)
    except OSError as error:
        raise VectorsError(f"cannot write {out} ({error.strerror}): check the path") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{args.id} -> {out} ({len(blob)} bytes, verified)")
    return 0


def _list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        infos = store.list()
    if args.json:
        for info in infos:  # JSON lines, as `audit list --json`
            print(json.dumps(info.to_dict()))
        return 0
    if not infos:
        print("no vector sets stored")
        return 0
    header = ("ID", "MODEL", "LAYERS", "HIDDEN", "K", "LAMBDA", "CREATED", "BYTES")
    rows = [
        (
            i.id,
            i.model_id,
            str(i.num_layers),
            str(i.hidden_size),
            str(i.k),
            f"{i.lam:g}",
            i.created_at,
            str(i.size),
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in (header, *rows)) for c in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _verify(args: argparse.Namespace) -> int:
    from sarsteer_guard.store import VectorSetNotFound

    failed = 0
    with _open(args) as store:
        ids = store.ids()
        for set_id in ids:
            try:
                store.get(set_id)
            except VectorSetNotFound:
                continue  # deleted while we were verifying
            except VectorIntegrityError as error:
                failed += 1
                print(f"FAIL {set_id}: {error}")
            else:
                print(f"ok   {set_id}")
    if failed:
        raise VectorIntegrityError(
            f"{failed} of {len(ids)} vector sets failed verification: re-push them from "
            "trusted files or check SARSTEER_VECTOR_KEY"
        )
    print(f"{len(ids)} vector sets verified", file=sys.stderr)
    return 0
