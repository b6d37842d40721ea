"""`qlink inbox list|fetch`: what peers delivered to this facility, and fetching it. Delivered files are
kept at rest in cipher-image form (images) or under AES-256-GCM; fetching decrypts them, checks each
against the manifest's SHA-256, and writes them under OUT/<transfer id>/ without overwriting anything."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..daemon_http import ApiError, TargetError, unreachable
from ..data_http import DataTarget, add_data_target, data_target, error_message
from ..progress import Progress

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_SAFE_NAME = re.compile(r"[A-Za-z0-9._ -]{1,255}")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="inbox_command", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="transfers received from peers")
    add_data_target(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=run_list)
    fetch = sub.add_parser("fetch", help="write a delivered transfer's files to a directory")
    fetch.add_argument("transfer_id", metavar="TRANSFER_ID")
    fetch.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="default: .")
    add_data_target(fetch)
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(run=run_fetch)


def _target(args: argparse.Namespace, command: str) -> DataTarget | int:
    try:
        return data_target(args)
    except TargetError as exc:
        print(f"qlink inbox {command}: error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def format_inbox(body: dict[str, Any]) -> str:
    rows = body.get("inbox", [])
    if not rows:
        return f"inbox of {body.get('facility')}: empty"
    lines = [f"inbox of {body.get('facility')}:"]
    for r in rows:
        state = r["state"]
        if state == "receiving":
            state = f"receiving {r['received_bytes']:,}/{r['bytes']:,} bytes"
        fetched = ", fetched" if r.get("fetched_at") else ""
        lines.append(
            f"  {r['transfer_id']}  {r['kind']:<6} from {r['from']:<12} {r['files']:>5} file(s) "
            f"{r['bytes']:>14,} bytes  {state}  {_when(r.get('delivered_at'))}"
            f"  at rest: {r.get('at_rest') or '-'}{fetched}"
        )
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    target = _target(args, "list")
    if isinstance(target, int):
        return target
    try:
        status, body = target.json("GET", "/v1/inbox")
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE
    if status != 200:
        print(f"qlink inbox list: {error_message(status, body)}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(body) if args.json else format_inbox(body))
    return EXIT_OK


def run_fetch(args: argparse.Namespace) -> int:
    import hashlib

    target = _target(args, "fetch")
    if isinstance(target, int):
        return target
    tid = args.transfer_id
    try:
        status, entry = target.json("GET", f"/v1/inbox/{tid}")
        if status != 200:
            print(f"qlink inbox fetch: {error_message(status, entry)}", file=sys.stderr)
            return EXIT_FAILURE
        if entry["state"] != "delivered":
            print(f"qlink inbox fetch: transfer {tid} is {entry['state']}, not delivered", file=sys.stderr)
            return EXIT_FAILURE
        folder = args.out / tid
        try:
            folder.mkdir(parents=True, exist_ok=False, mode=0o700)
        except FileExistsError:
            print(f"qlink inbox fetch: {folder} exists; refusing to overwrite", file=sys.stderr)
            return EXIT_FAILURE
        progress = Progress(f"fetch {tid[:8]}", entry["bytes"], enabled=None if not args.json else False)
        written = []
        for f in entry["file_list"]:
            # The name came from the peer: keep it only if it is a plain file name.
            name = f["name"] if _SAFE_NAME.fullmatch(f["name"]) and f["name"] not in (".", "..") else None
            name = name or f"file-{f['index']:05d}"
            status, data, _ = target.request("GET", f"/v1/inbox/{tid}/files/{f['index']}", timeout=120.0)
            if status != 200:
                print(f"qlink inbox fetch: {name}: HTTP {status}", file=sys.stderr)
                return EXIT_FAILURE
            if hashlib.sha256(data).hexdigest() != f["sha256"]:
                print(f"qlink inbox fetch: {name}: SHA-256 differs from the manifest", file=sys.stderr)
                return EXIT_FAILURE
            path = folder / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            written.append({"name": name, "path": str(path), "size": len(data), "sha256": f["sha256"]})
            progress.advance(len(data))
        progress.close()
    except ApiError as exc:
        print(unreachable("qlinkd", exc), file=sys.stderr)
        return EXIT_FAILURE
    result = {"transfer_id": tid, "directory": str(folder), "files": written, "verified": "sha256"}
    if args.json:
        print(json.dumps(result))
    else:
        total = sum(w["size"] for w in written)
        print(f"fetched {len(written)} file(s), {total:,} bytes, into {folder} (each SHA-256 verified)")
    return EXIT_OK
